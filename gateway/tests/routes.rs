//! The gateway's router driven in-process (no socket, no process), built from a real state
//! over a temporary directory: the error paths of its handlers and of the common layers,
//! each answered as problem+json with its status (never a 500), and its OpenAPI document
//! against its routes.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use gateway::{router, GatewayConfig, GatewayState};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const TOKEN: &str = "an-admin-token-of-enough-length";
const MAX_BODY: usize = 4096;

struct Gateway {
    app: Router,
    _dir: tempfile::TempDir,
}

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let state = GatewayState::new(config, url, metrics).await.unwrap();
    Gateway {
        app: router(state),
        _dir: dir,
    }
}

/// A gateway's configuration in `dir`.
fn config(dir: &std::path::Path) -> GatewayConfig {
    federation::keys::write_private(&dir.join("admin-token"), TOKEN.as_bytes()).unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndid = \"did:web:hospital.test\"\n\
             key_file = \"gateway.key.json\"\nsecret_file = \"gateway.secret\"\n\
             data_dir = \"data\"\npolicies = {policies:?}\nadmin_token_file = \"admin-token\"\n\
             dev_mode = true\n[limits]\nmax_body_bytes = {MAX_BODY}\n",
            policies = policies.display().to_string(),
        ),
    )
    .unwrap();
    GatewayConfig::load(&dir.join("gateway.toml")).unwrap()
}

/// An earlier fedgate's sled database in the data directory may hold access events not yet
/// shipped: the gateway refuses to start, in one line naming it, and creates nothing.
#[tokio::test]
async fn a_data_dir_holding_an_earlier_sled_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = config.data_dir.clone();
    std::fs::create_dir_all(data.join("gateway.sled")).unwrap();
    let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let Err(e) = GatewayState::new(config, url, metrics).await else {
        panic!("the gateway started beside an earlier sled database");
    };
    let e = e.to_string();
    assert!(e.contains("gateway.sled"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(!data.join("gateway.redb").exists());
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

fn post(
    path: &str,
    content_type: &str,
    body: impl Into<Body>,
    admin: Option<&str>,
) -> Request<Body> {
    let mut builder = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if let Some(token) = admin {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(body.into()).unwrap()
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

fn exchange_body() -> Value {
    json!({
        "purpose": "TREAT",
        "patient": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "000-00-0000"},
        "data_classes": ["Observation"],
        "presentation": "not.a.presentation",
    })
}

/// Each POST route with a JSON body, and a body that is otherwise well-formed for it.
fn json_routes() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/exchange/clinical", exchange_body()),
        (
            "/v1/research/queries",
            json!({"purpose": "HRESCH", "query": {}, "presentation": "x"}),
        ),
        ("/v1/consents", json!({"presentation": "x"})),
        ("/v1/consents/withdrawals", json!({"presentation": "x"})),
        (
            "/v1/patient-links",
            json!({"patient": {"system": "s", "value": "v"}, "did": "did:key:z6Mk"}),
        ),
        (
            "/v1/patient-links/removals",
            json!({"patient": {"system": "s", "value": "v"}, "did": "did:key:z6Mk"}),
        ),
        (
            "/v1/detokenize",
            json!({"token": "t", "purpose": "TREAT", "presentation": "x"}),
        ),
        ("/credentials/verify", json!({"verifiableCredential": {}})),
        (
            "/presentations/verify",
            json!({"verifiablePresentation": {}, "options": {"challenge": "c", "domain": "d"}}),
        ),
    ]
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let g = gateway().await;
    for path in [
        "/nowhere",
        "/v1",
        "/v1/exchange",
        "/v1/exchange/clinical/more",
    ] {
        let got = send(&g.app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_problem(&got, StatusCode::NOT_FOUND);
    }
    let got = send(
        &g.app,
        Request::get("/v1/exchange/clinical")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&got, StatusCode::METHOD_NOT_ALLOWED);
    let got = send(&g.app, post("/v1/keys", "application/json", "{}", None)).await;
    assert_problem(&got, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bodies_that_are_not_strict_json_are_refused_on_every_json_route() {
    let g = gateway().await;
    for (path, good) in json_routes() {
        let admin = path.starts_with("/v1/patient-links").then_some(TOKEN);
        let mut unknown = good.clone();
        unknown["unexpected"] = json!(1);
        let text = good.to_string();
        let duplicate = format!("{},{}", &text[..text.len() - 1], &text[1..]);
        let cases: [(&str, String, StatusCode); 6] = [
            (
                "text/plain",
                text.clone(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            ("", text.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (
                "application/json",
                "{\"purpose\":".into(),
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
            let request = if content_type.is_empty() {
                Request::post(path).body(Body::from(body.clone())).unwrap()
            } else {
                post(path, content_type, body.clone(), admin)
            };
            let got = send(&g.app, request).await;
            assert_eq!(got.0, status, "{path} {content_type} {body}: {}", got.2);
            assert_problem(&got, status);
        }
        let huge = json!({"presentation": "x".repeat(MAX_BODY)}).to_string();
        let got = send(&g.app, post(path, "application/json", huge, admin)).await;
        assert_problem(&got, StatusCode::PAYLOAD_TOO_LARGE);
    }
}

#[tokio::test]
async fn admin_endpoints_need_this_gateways_token() {
    let g = gateway().await;
    for path in ["/v1/patient-links", "/v1/patient-links/removals"] {
        let body = json!({"patient": {"system": "s", "value": "v"}, "did": "did:key:z6Mk"});
        for token in [None, Some("not-the-token-at-all-really"), Some("")] {
            let got = send(
                &g.app,
                post(path, "application/json", body.to_string(), token),
            )
            .await;
            assert_problem(&got, StatusCode::UNAUTHORIZED);
        }
        // With the token: a patient this custodian does not know is a 404, a non-DID a 400.
        let got = send(
            &g.app,
            post(path, "application/json", body.to_string(), Some(TOKEN)),
        )
        .await;
        assert_problem(&got, StatusCode::NOT_FOUND);
        let mut not_a_did = body.clone();
        not_a_did["did"] = json!("mailto:someone@example.org");
        let got = send(
            &g.app,
            post(path, "application/json", not_a_did.to_string(), Some(TOKEN)),
        )
        .await;
        assert_problem(&got, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn requests_that_fail_before_verification_are_client_errors() {
    let g = gateway().await;
    // A domain that is not a lowercase name is malformed; a name that is no domain unknown.
    let got = send(
        &g.app,
        post(
            "/v1/exchange/Clinical!",
            "application/json",
            exchange_body().to_string(),
            None,
        ),
    )
    .await;
    assert_problem(&got, StatusCode::BAD_REQUEST);
    let got = send(
        &g.app,
        post(
            "/v1/exchange/dental",
            "application/json",
            exchange_body().to_string(),
            None,
        ),
    )
    .await;
    assert_problem(&got, StatusCode::NOT_FOUND);
    // Research takes HRESCH only.
    let got = send(
        &g.app,
        post(
            "/v1/research/queries",
            "application/json",
            json!({"purpose": "TREAT", "query": {}, "presentation": "x"}).to_string(),
            None,
        ),
    )
    .await;
    assert!(got.0.is_client_error(), "{}", got.2);
    assert_problem(&got, got.0);
    // A presentation that is no presentation is refused (and recorded), not a 500.
    for (path, body) in json_routes() {
        if path.starts_with("/v1/patient-links") {
            continue;
        }
        let got = send(
            &g.app,
            post(path, "application/json", body.to_string(), None),
        )
        .await;
        assert!(got.0.is_client_error(), "{path}: {} {}", got.0, got.2);
        assert_problem(&got, got.0);
    }
}

#[tokio::test]
async fn public_endpoints_answer() {
    let g = gateway().await;
    let got = send(&g.app, post("/v1/challenges", "application/json", "", None)).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert_eq!(got.2["domain"], "did:web:hospital.test");
    assert!(got.2["challenge"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(got.2["expiresAt"].is_string(), "{}", got.2);
    let got = send(
        &g.app,
        Request::get("/v1/log/checkpoint")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&got, StatusCode::NOT_FOUND);
    let got = send(
        &g.app,
        Request::get("/.well-known/did.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.2["id"], "did:web:hospital.test");
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let g = gateway().await;
    let listed = service::openapi::route_operations(&gateway::routes::routes());
    assert!(listed.len() >= 16, "{listed:?}");
    let disagreements = service::openapi::disagreements(&g.app, &listed).await;
    assert!(disagreements.is_empty(), "{disagreements:#?}");

    let got = send(
        &g.app,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.1, "application/json");
    let doc = got.2;
    assert_eq!(doc["info"]["title"], "fedgate gateway");
    let exchange = &doc["paths"]["/v1/exchange/{domain}"]["post"];
    for status in ["200", "400", "403", "404", "413", "415", "422", "503"] {
        assert!(
            exchange["responses"][status].is_object(),
            "{status}: {exchange}"
        );
    }
    assert!(
        exchange["responses"]["200"]["content"]["application/jose"].is_object(),
        "{exchange}"
    );
    let request = &doc["components"]["schemas"]["ExchangeRequest"];
    assert_eq!(request["additionalProperties"], json!(false), "{request}");
    for member in ["purpose", "patient", "data_classes", "presentation"] {
        assert!(
            request["required"]
                .as_array()
                .unwrap()
                .contains(&json!(member)),
            "{member}: {request}"
        );
    }
    let link = &doc["paths"]["/v1/patient-links"]["post"];
    assert_eq!(link["security"][0]["adminToken"], json!([]), "{link}");
    assert!(doc["components"]["schemas"]["ResearchRequest"].is_object());

    // The document served is the one `openapi()` generates.
    let generated: Value =
        serde_json::from_str(&gateway::routes::openapi().to_json().unwrap()).unwrap();
    assert_eq!(doc, generated);
}

#[tokio::test]
async fn the_docs_page_and_its_script_are_served_under_their_policies() {
    let g = gateway().await;
    let response = g
        .app
        .clone()
        .oneshot(Request::get("/docs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(
        response.headers()[header::CONTENT_SECURITY_POLICY],
        service::openapi::DOCS_CSP
    );
    let response = g
        .app
        .clone()
        .oneshot(Request::get("/docs/redoc.js").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let got = send(&g.app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert_eq!(got.2["database"]["ready"], true, "{}", got.2);
    let response = g
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_SECURITY_POLICY],
        "default-src 'none'; frame-ancestors 'none'"
    );
}
