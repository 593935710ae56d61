//! The visibility service's router driven in-process (no socket, no process), built from a
//! real state over a temporary directory: the error paths of its handlers and of the common
//! layers, each answered as problem+json with its status (never a 500), and its OpenAPI
//! document against its routes.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use visibility::{router, VisibilityConfig, VisibilityState};

const MAX_BODY: usize = 4096;
const MEMBER: &str = "did:web:hospital.test";

struct Visibility {
    app: Router,
    _dir: tempfile::TempDir,
}

fn visibility() -> Visibility {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndid = \"did:web:visibility.test\"\n\
         key_file = \"visibility.key.json\"\ndata_dir = \"data\"\ndev_mode = true\n\
         auditors = [\"did:web:auditor.test\"]\n\
         [trust]\nClinicianPrivilegeCredential = [\"did:web:office.test\"]\n\
         [members]\n\"{MEMBER}\" = \"http://127.0.0.1:1/\"\n\
         [limits]\nmax_body_bytes = {MAX_BODY}\n"
    );
    let mut config = VisibilityConfig::from_toml(&text).unwrap();
    config.resolve_paths(dir.path());
    config.validate("visibility.toml").unwrap();
    let state = VisibilityState::open(config).unwrap();
    Visibility {
        app: router(state),
        _dir: dir,
    }
}

/// Sends one request; returns the status, the content type and the body as JSON.
async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, content_type, body)
}

fn get(path: &str, session: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(token) = session {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).unwrap()
}

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

fn assert_problem(got: &(StatusCode, String, Value), status: StatusCode) {
    assert_eq!(got.0, status, "{}", got.2);
    assert_eq!(got.1, "application/problem+json", "{}", got.2);
    assert_eq!(got.2["status"], status.as_u16(), "{}", got.2);
    assert!(
        got.2["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{}",
        got.2
    );
}

/// Each POST route with a JSON body, and a body that is otherwise well-formed for it.
fn json_routes() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/batches", json!({"batch": "a.b.c"})),
        (
            "/v1/receipts",
            json!({"custodian": MEMBER, "events": [{"id": "e", "leafHash": "00"}]}),
        ),
        ("/v1/audit/sessions", json!({"presentation": "x"})),
        ("/v1/patients/history", json!({"presentation": "x"})),
    ]
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let v = visibility();
    for path in ["/nowhere", "/v1", "/v1/audit", "/dashboard/other.js"] {
        assert_problem(&send(&v.app, get(path, None)).await, StatusCode::NOT_FOUND);
    }
    assert_problem(
        &send(&v.app, get("/v1/batches", None)).await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    assert_problem(
        &send(&v.app, post("/v1/checkpoint", "application/json", "{}")).await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
}

#[tokio::test]
async fn bodies_that_are_not_strict_json_are_refused_on_every_json_route() {
    let v = visibility();
    for (path, good) in json_routes() {
        let mut unknown = good.clone();
        unknown["unexpected"] = json!(1);
        let text = good.to_string();
        let duplicate = format!("{},{}", &text[..text.len() - 1], &text[1..]);
        let cases: [(&str, String, StatusCode); 5] = [
            (
                "text/plain",
                text.clone(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "application/json",
                "{\"batch\":".into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                "application/json",
                "[1, 2]".into(),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ("application/json", duplicate, StatusCode::BAD_REQUEST),
            (
                "application/json",
                unknown.to_string(),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ];
        for (content_type, body, status) in cases {
            let got = send(&v.app, post(path, content_type, body.clone())).await;
            assert_eq!(got.0, status, "{path} {content_type} {body}: {}", got.2);
            assert_problem(&got, status);
        }
        let got = send(&v.app, Request::post(path).body(Body::from(text)).unwrap()).await;
        assert_problem(&got, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let huge = json!({"batch": "x".repeat(MAX_BODY)}).to_string();
        let got = send(&v.app, post(path, "application/json", huge)).await;
        assert_problem(&got, StatusCode::PAYLOAD_TOO_LARGE);
    }
}

#[tokio::test]
async fn well_formed_requests_that_cannot_be_honoured_are_client_errors() {
    let v = visibility();
    // A batch that is no signed batch, and a presentation that is no presentation.
    for (path, body) in json_routes() {
        if path == "/v1/receipts" {
            continue;
        }
        let got = send(&v.app, post(path, "application/json", body.to_string())).await;
        assert!(got.0.is_client_error(), "{path}: {} {}", got.0, got.2);
        assert_problem(&got, got.0);
    }
    // A leaf hash that is not 64 hex digits.
    let got = send(
        &v.app,
        post(
            "/v1/receipts",
            "application/json",
            json_routes()[1].1.to_string(),
        ),
    )
    .await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY);
    // Proofs: parameters missing, malformed, unknown, or beyond the (empty) tree.
    for query in [
        "/v1/proofs/inclusion",
        "/v1/proofs/inclusion?index=x&size=1",
        "/v1/proofs/inclusion?index=0&size=1&extra=1",
        "/v1/proofs/inclusion?index=5&size=1",
        "/v1/proofs/consistency?old=1",
        "/v1/proofs/consistency?old=2&new=1",
        "/v1/proofs/consistency?old=1&new=9",
    ] {
        let got = send(&v.app, get(query, None)).await;
        assert!(got.0.is_client_error(), "{query}: {} {}", got.0, got.2);
        assert_problem(&got, got.0);
    }
}

#[tokio::test]
async fn auditor_endpoints_need_a_session() {
    let v = visibility();
    let event = "/v1/audit/reviews/urn:uuid:6f1c2d3e-0000-4000-8000-000000000000";
    for token in [None, Some("not-a-session-token"), Some("")] {
        for path in [
            "/v1/audit/events",
            "/v1/audit/export",
            "/v1/audit/reviews",
            &format!("{event}/notes"),
        ] {
            let got = send(&v.app, get(path, token)).await;
            assert_problem(&got, StatusCode::UNAUTHORIZED);
        }
        let mut request = post(
            &format!("{event}/resolve"),
            "application/json",
            json!({"note": "checked"}).to_string(),
        );
        if let Some(token) = token {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        assert_problem(&send(&v.app, request).await, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn public_endpoints_answer() {
    let v = visibility();
    let got = send(&v.app, post("/v1/challenges", "application/json", "")).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert_eq!(got.2["domain"], "did:web:visibility.test");
    let response = v
        .app
        .clone()
        .oneshot(get("/v1/checkpoint", None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let got = send(&v.app, get("/v1/keys", None)).await;
    assert!(got.2["checkpointVerifierKey"].is_string(), "{}", got.2);
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let v = visibility();
    let listed = service::openapi::route_operations(&visibility::routes());
    assert!(listed.len() >= 19, "{listed:?}");
    let disagreements = service::openapi::disagreements(&v.app, &listed).await;
    assert!(disagreements.is_empty(), "{disagreements:#?}");

    let got = send(&v.app, get("/openapi.json", None)).await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.1, "application/json");
    let doc = got.2;
    assert_eq!(doc["info"]["title"], "fedgate visibility");
    let events = &doc["paths"]["/v1/audit/events"]["get"];
    assert_eq!(
        events["security"][0]["auditorSession"],
        json!([]),
        "{events}"
    );
    let names: Vec<&str> = events["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["patient_ref", "custodian", "decision", "limit", "before"] {
        assert!(names.contains(&name), "{name}: {names:?}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["auditorSession"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn the_docs_page_has_its_own_policy_and_the_dashboard_keeps_its_own() {
    let v = visibility();
    let response = v.app.clone().oneshot(get("/docs", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(
        response.headers()[header::CONTENT_SECURITY_POLICY],
        service::openapi::DOCS_CSP
    );
    let response = v
        .app
        .clone()
        .oneshot(get("/dashboard", None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}

#[tokio::test]
async fn readiness_reports_the_database() {
    let v = visibility();
    let got = send(&v.app, get("/readyz", None)).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert_eq!(
        got.2["database"],
        json!({ "ready": true, "backend": "embedded" })
    );
}
