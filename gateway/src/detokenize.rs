//! `POST /v1/detokenize`: an organization asks the custodian to reveal a token it was
//! given, under a presentation and the detokenize policy; every answer leaves an event.

use crate::error::GatewayError;
use crate::exchange;
use crate::ledger::Ledger;
use crate::policy::{CredentialInput, PrivilegeFacts, TokenInput};
use crate::state::GatewayState;
use crate::vault::VaultError;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use service::http::StrictJson;
use service::openapi::{JsonBodyErrors, Unavailable};
use std::sync::Arc;

type AppState = State<Arc<GatewayState>>;

/// A token to reveal, the purpose, and the requester's presentation.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetokenizeRequest {
    /// A vault token this organization was given (at most 128 characters).
    token: String,
    /// HL7 v3 PurposeOfUse.
    purpose: String,
    /// A VP: a compact JWS (`vp+jwt`) or a Data Integrity JSON object.
    presentation: Value,
}

/// Re-identify one vault token (policy-gated, recorded).
#[utoipa::path(post, path = "/v1/detokenize", tag = "exchange",
    request_body = DetokenizeRequest,
    responses((status = 200, description = "The value", body = Object),
        crate::error::Denied, JsonBodyErrors, Unavailable))]
pub(crate) async fn detokenize_handler(
    State(s): AppState,
    StrictJson(req): StrictJson<DetokenizeRequest>,
) -> Response {
    let answer = detokenize(s.clone(), req).await;
    s.offering_next_challenge(answer)
}

async fn detokenize(
    s: Arc<GatewayState>,
    req: DetokenizeRequest,
) -> Result<Response, GatewayError> {
    if !exchange::PURPOSES.contains(&req.purpose.as_str()) {
        return Err(GatewayError::bad_request(
            "unknown-purpose",
            "unknown purpose code",
        ));
    }
    if req.token.len() > 128 {
        return Err(GatewayError::bad_request("invalid-token", "token too long"));
    }
    if !s.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full".into(),
        ));
    }
    let mut ledger = Ledger::new("detokenize", &req.purpose, &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    // A vault that cannot answer is a 503: the token may well exist.
    let info = s.vault.find(&req.token)?;
    let privilege = match crate::policy::holder_privilege(&vp) {
        Ok(privilege) => privilege,
        Err(e) => return Err(s.deny_unasked(&ledger, e.to_string()).await?),
    };
    let mut input = s.policy_input(&ledger, info.is_some());
    input.privilege =
        privilege.map(|p| CredentialInput::new(p.credential, PrivilegeFacts::from(&p.claims)));
    input.token = info.as_ref().map(|i| TokenInput {
        recipient: i.recipient_org.clone(),
        domain: i.domain.clone(),
        class: i.class.clone(),
    });
    let mut decision = s.decide("detokenize", input).await;
    if decision.allow && info.is_none() {
        decision = crate::policy::Decision::deny("unknown token");
    }
    let value = if decision.allow {
        match s.vault.reveal(
            &req.token,
            ledger.requester_org.as_deref().unwrap_or_default(),
        ) {
            Ok(v) => Some(v),
            Err(VaultError::WrongRecipient) => {
                decision =
                    crate::policy::Decision::deny("the token was not issued to this organization");
                None
            }
            Err(VaultError::UnknownToken) => {
                decision = crate::policy::Decision::deny("unknown token");
                None
            }
            // Storage (503) or a corrupt entry (500): nothing about the token or the caller.
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    s.record(&ledger, &decision, u64::from(value.is_some()))
        .await?;
    match value {
        Some(v) => {
            let class = info.map(|i| i.class).unwrap_or_default();
            exchange::respond(
                &ledger,
                &decision,
                json!({"value": v, "class": class, "decisionId": ledger.decision_id}),
                None,
            )
        }
        None => Err(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons.clone(),
            check: None,
            policy: Some(decision.policy_digest.clone()),
        }),
    }
}
