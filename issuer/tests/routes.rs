//! The issuer's router driven in-process (no socket, no process): the error paths of its
//! handlers and of the common layers, each answered as problem+json.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use issuer::{router, IssuerConfig, IssuerState};
use serde_json::{json, Value};
use tower::ServiceExt as _;

const TOKEN: &str = "an-admin-token-of-enough-length";

struct Issuer {
    app: Router,
    _dir: tempfile::TempDir,
}

fn issuer() -> Issuer {
    let dir = tempfile::tempdir().unwrap();
    let app = issuer_in(dir.path()).unwrap();
    Issuer { app, _dir: dir }
}

/// The issuer configured in `dir` (its data in `dir/data`), or why it did not start.
fn issuer_in(dir: &std::path::Path) -> Result<Router, String> {
    let token = dir.join("admin-token");
    if !token.exists() {
        federation::keys::write_private(&token, TOKEN.as_bytes()).unwrap();
    }
    std::fs::write(
        dir.join("issuer.toml"),
        "listen = \"127.0.0.1:0\"\ndid = \"did:web:office.test\"\nkey_file = \"issuer.key.json\"\n\
         data_dir = \"data\"\nadmin_token_file = \"admin-token\"\ndev_mode = true\n\
         [limits]\nmax_body_bytes = 4096\n",
    )
    .unwrap();
    let config = IssuerConfig::load(&dir.join("issuer.toml")).unwrap();
    let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
    let state = IssuerState::new(config, url).map_err(|e| e.to_string())?;
    Ok(router(state))
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

fn post(path: &str, content_type: &str, body: impl Into<Body>, admin: bool) -> Request<Body> {
    let mut builder = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if admin {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    }
    builder.body(body.into()).unwrap()
}

fn assert_problem(got: &(StatusCode, String, Value), status: StatusCode) {
    assert_eq!(got.0, status, "{}", got.2);
    assert_eq!(got.1, "application/problem+json", "{}", got.2);
    assert_eq!(got.2["status"], status.as_u16(), "{}", got.2);
    assert!(got.2["type"].as_str().is_some_and(|t| !t.is_empty()));
}

fn privilege_request() -> Value {
    json!({
        "credential": {
            "@context": ["https://www.w3.org/ns/credentials/v2"],
            "type": ["VerifiableCredential", "ClinicianPrivilegeCredential"],
            "credentialSubject": {"id": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"},
        }
    })
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let s = issuer();
    let got = send(
        &s.app,
        Request::get("/nowhere").body(Body::empty()).unwrap(),
    )
    .await;
    assert_problem(&got, StatusCode::NOT_FOUND);
    let got = send(
        &s.app,
        Request::get("/credentials/issue")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&got, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn admin_calls_need_the_token() {
    let s = issuer();
    let body = privilege_request().to_string();
    let got = send(
        &s.app,
        post(
            "/credentials/issue",
            "application/json",
            body.clone(),
            false,
        ),
    )
    .await;
    assert_problem(&got, StatusCode::UNAUTHORIZED);
    let mut wrong = post("/credentials/issue", "application/json", body, false);
    wrong.headers_mut().insert(
        header::AUTHORIZATION,
        "Bearer not-the-token-at-all-really".parse().unwrap(),
    );
    assert_problem(&send(&s.app, wrong).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bodies_that_are_not_strict_json_are_refused_before_any_handler() {
    let s = issuer();
    let cases: [(&str, &str, StatusCode, &str); 4] = [
        ("text/plain", "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
        (
            "application/json",
            "{\"credential\":",
            StatusCode::BAD_REQUEST,
            "malformed-json",
        ),
        (
            "application/json",
            "{\"credential\": {}, \"credential\": {}}",
            StatusCode::BAD_REQUEST,
            "duplicate-key",
        ),
        (
            "application/json",
            "{\"credential\": {}, \"unknown\": 1}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
    ];
    for (content_type, body, status, slug) in cases {
        let got = send(&s.app, post("/credentials/issue", content_type, body, true)).await;
        assert_problem(&got, status);
        if !slug.is_empty() {
            assert!(
                got.2["type"].as_str().unwrap().ends_with(slug),
                "{body}: {}",
                got.2
            );
        }
    }
    let huge = format!("{{\"credential\": \"{}\"}}", "x".repeat(8192));
    let got = send(
        &s.app,
        post("/credentials/issue", "application/json", huge, true),
    )
    .await;
    assert_problem(&got, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn lifecycle_calls_on_unknown_credentials_are_not_found() {
    let s = issuer();
    let got = send(
        &s.app,
        post(
            "/v1/credentials/urn:uuid:6f1c2d3e-0000-4000-8000-000000000000/revoke",
            "application/json",
            "{}",
            true,
        ),
    )
    .await;
    assert_problem(&got, StatusCode::NOT_FOUND);
    let got = send(
        &s.app,
        Request::get("/v1/credentials/urn:uuid:6f1c2d3e-0000-4000-8000-000000000000")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&got, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_credential_of_a_type_the_office_does_not_issue_is_unprocessable() {
    let s = issuer();
    let mut request = privilege_request();
    request["credential"]["type"] = json!(["VerifiableCredential", "DriverLicence"]);
    let got = send(
        &s.app,
        post(
            "/credentials/issue",
            "application/json",
            request.to_string(),
            true,
        ),
    )
    .await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let s = issuer();
    let listed = service::openapi::route_operations(&issuer::routes::routes());
    assert!(listed.len() >= 13, "{listed:?}");
    let disagreements = service::openapi::disagreements(&s.app, &listed).await;
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // The status list is documented where the router serves it.
    let status_list = format!("/{}", issuer::routes::STATUS_LIST_PATH);
    assert!(listed.contains(&(axum::http::Method::GET, status_list)));

    let got = send(
        &s.app,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.1, "application/json");
    let issue = &got.2["paths"]["/credentials/issue"]["post"];
    assert_eq!(issue["security"][0]["adminToken"], json!([]), "{issue}");
    for status in ["201", "400", "401", "413", "415", "422"] {
        assert!(issue["responses"][status].is_object(), "{status}: {issue}");
    }
    // Unknown members are refused, and the document says so.
    let request = &got.2["components"]["schemas"]["IssueRequest"];
    assert_eq!(request["additionalProperties"], json!(false), "{request}");
}

#[tokio::test]
async fn the_docs_page_renders_the_document_under_its_own_policy() {
    let s = issuer();
    let response = s
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
    // Every other response keeps the strict default policy.
    let response = s
        .app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_SECURITY_POLICY],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap()
}

const CLINICIAN: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";

fn joiner_request() -> String {
    json!({
        "subject": {
            "id": CLINICIAN,
            "name": "Dr. Ada Test",
            "npi": "1234567893",
            "role": "physician",
            "specialty": "207R00000X",
            "organization": "did:web:hospital-a.test",
            "privileges": [{"facility": "did:web:hospital-b.test", "domains": ["clinical"], "actions": ["read"]}]
        },
        "format": "jwt"
    })
    .to_string()
}

#[tokio::test]
async fn a_restart_keeps_issued_credentials_revocations_and_status_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (revoked, kept) = {
        let app = issuer_in(dir.path()).unwrap();
        let mut issued = Vec::new();
        for _ in 0..2 {
            let got = send(
                &app,
                post("/v1/privileges", "application/json", joiner_request(), true),
            )
            .await;
            assert_eq!(got.0, StatusCode::CREATED, "{}", got.2);
            issued.push(got.2);
        }
        let id = issued[0]["id"].as_str().unwrap();
        let got = send(
            &app,
            post(
                &format!("/v1/credentials/{id}/revoke"),
                "application/json",
                "",
                true,
            ),
        )
        .await;
        assert_eq!(got.0, StatusCode::OK, "{}", got.2);
        (issued[0].clone(), issued[1].clone())
    };
    assert!(dir.path().join("data/issuer.redb").is_file());
    // The first issuer is gone with its router: the database reopens at once.
    let app = issuer_in(dir.path()).unwrap();
    let got = send(
        &app,
        get(&format!(
            "/v1/credentials/{}",
            revoked["id"].as_str().unwrap()
        )),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert!(got.2["revokedAt"].is_string(), "{}", got.2);
    assert_eq!(got.2["statusIndex"], revoked["statusListIndex"]);
    let got = send(
        &app,
        get(&format!("/v1/credentials/{}", kept["id"].as_str().unwrap())),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert!(got.2["revokedAt"].is_null(), "{}", got.2);
    let got = send(&app, get(&format!("/v1/subjects/{CLINICIAN}/credentials"))).await;
    assert_eq!(
        got.2["credentials"].as_array().map(Vec::len),
        Some(2),
        "{}",
        got.2
    );
    // Revoking again is still a conflict, and a new credential takes a new index.
    let got = send(
        &app,
        post(
            &format!("/v1/credentials/{}/revoke", revoked["id"].as_str().unwrap()),
            "application/json",
            "",
            true,
        ),
    )
    .await;
    assert_problem(&got, StatusCode::CONFLICT);
    let got = send(
        &app,
        post("/v1/privileges", "application/json", joiner_request(), true),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.2);
    assert_ne!(got.2["statusListIndex"], revoked["statusListIndex"]);
    assert_ne!(got.2["statusListIndex"], kept["statusListIndex"]);
}

#[test]
fn an_earlier_sled_database_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("data").join("issuer.sled");
    std::fs::create_dir_all(&legacy).unwrap();
    let err = issuer_in(dir.path()).err().unwrap();
    assert!(err.contains(&legacy.display().to_string()), "{err}");
    assert!(err.contains("sled"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    assert!(!dir.path().join("data").join("issuer.redb").exists());
}

#[tokio::test]
async fn readiness_reports_the_database() {
    let s = issuer();
    let got = send(&s.app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    assert_eq!(
        got.2["database"],
        json!({ "ready": true, "backend": "embedded" })
    );
}
