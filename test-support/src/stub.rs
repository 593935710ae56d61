//! A stub gateway on loopback: issues challenges as `HOSPITAL_B`, and verifies the
//! presentations posted to its consent endpoints with the test federation's verifier.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use federation::credentials::{CredentialKind, PresentationBinding};
use federation::verify::Verifier;
use serde_json::{json, Value};
use wallet::GatewayClient;

use crate::{Fed, HOSPITAL_A, HOSPITAL_B};

/// How the stub answers `POST /v1/challenges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Good,
    ShortChallenge,
    BadCharacters,
    OtherDomain,
    NotADid,
    Problem,
    Garbage,
    /// Good challenges, but the consent endpoints refuse.
    RefuseConsents,
}

/// What the stub accepted at a consent endpoint.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub holder: String,
    pub kinds: Vec<CredentialKind>,
}

pub struct StubState {
    did: String,
    mode: Mutex<Mode>,
    issued: Mutex<Vec<String>>,
    verifier: Verifier,
    pub registered: Mutex<Vec<Accepted>>,
    pub withdrawn: Mutex<Vec<Accepted>>,
}

pub struct Stub {
    pub url: reqwest::Url,
    pub state: Arc<StubState>,
}

impl Stub {
    pub fn client(&self) -> GatewayClient {
        GatewayClient::new(self.url.clone(), true).unwrap()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn challenges_issued(&self) -> usize {
        self.state.issued.lock().unwrap().len()
    }

    pub fn binding(&self) -> PresentationBinding {
        PresentationBinding {
            challenge: self.state.issued.lock().unwrap().last().unwrap().clone(),
            domain: self.state.did.clone(),
        }
    }
}

async fn challenges(State(s): State<Arc<StubState>>) -> Response {
    let mode = *s.mode.lock().unwrap();
    let challenge = match mode {
        Mode::ShortChallenge => "abc".to_string(),
        Mode::BadCharacters => "has spaces and <b>markup</b> in it".to_string(),
        _ => federation::client::random_token(),
    };
    let domain = match mode {
        Mode::OtherDomain => HOSPITAL_A.to_string(),
        Mode::NotADid => "hospital-b.test".to_string(),
        _ => s.did.clone(),
    };
    match mode {
        Mode::Problem => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/problem+json")],
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"down for maintenance"}"#,
        )
            .into_response(),
        Mode::Garbage => (StatusCode::OK, "<html>hello</html>").into_response(),
        _ => {
            s.issued.lock().unwrap().push(challenge.clone());
            Json(json!({
                "challenge": challenge,
                "domain": domain,
                "expiresAt": federation::time::rfc3339(Utc::now() + chrono::Duration::minutes(5)),
            }))
            .into_response()
        }
    }
}

/// Verifies the presentation against the last challenge issued, as a gateway would.
async fn accept(s: &StubState, body: &Value, ok: StatusCode, withdrawal: bool) -> Response {
    if *s.mode.lock().unwrap() == Mode::RefuseConsents {
        return (
            StatusCode::CONFLICT,
            [(CONTENT_TYPE, "application/problem+json")],
            r#"{"title":"Conflict","status":409,"detail":"unknown consent"}"#,
        )
            .into_response();
    }
    let binding = PresentationBinding {
        challenge: s.issued.lock().unwrap().last().cloned().unwrap_or_default(),
        domain: s.did.clone(),
    };
    match s
        .verifier
        .verify_presentation(&body["presentation"], &binding)
        .await
    {
        Ok(v) => {
            let accepted = Accepted {
                holder: v.holder.clone(),
                kinds: v.credentials.iter().map(|c| c.kind).collect(),
            };
            let list = if withdrawal {
                &s.withdrawn
            } else {
                &s.registered
            };
            list.lock().unwrap().push(accepted);
            (ok, Json(json!({"holder": v.holder}))).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            [(CONTENT_TYPE, "application/problem+json")],
            json!({"title": "Unprocessable Entity", "status": 422, "detail": e.to_string()})
                .to_string(),
        )
            .into_response(),
    }
}

async fn register(State(s): State<Arc<StubState>>, Json(body): Json<Value>) -> Response {
    accept(&s, &body, StatusCode::CREATED, false).await
}

async fn withdraw(State(s): State<Arc<StubState>>, Json(body): Json<Value>) -> Response {
    accept(&s, &body, StatusCode::OK, true).await
}

pub async fn start_stub(fed: &Fed) -> Stub {
    let state = Arc::new(StubState {
        did: HOSPITAL_B.to_string(),
        mode: Mutex::new(Mode::Good),
        issued: Mutex::new(Vec::new()),
        verifier: Verifier::new(
            fed.verifier.resolver.clone(),
            fed.trust.clone(),
            fed.verifier.status.clone(),
        ),
        registered: Mutex::new(Vec::new()),
        withdrawn: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v1/challenges", post(challenges))
        .route("/v1/consents", post(register))
        .route("/v1/consents/withdrawals", post(withdraw))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Stub {
        url: reqwest::Url::parse(&format!("http://{addr}/")).unwrap(),
        state,
    }
}
