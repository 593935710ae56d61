//! HTTP serving for every fedgate service: RFC 9457 problem details, a strict JSON body
//! extractor, the common middleware stack (limits, timeouts, security headers, request ids),
//! and TLS/loopback serving. The outbound client policy is `federation::client`'s.
//!
//! One file per concept, each usable without reading the others:
//! - `problem`: problem details and their constructors (depends on nothing here);
//! - `config`: the listen configuration, the limits, and the errors of serving them;
//! - `json`: the strict JSON body extractor (answers in problems);
//! - `layers`: the middleware stack and the limits it applies;
//! - `serve`: listening, TLS and the listen configuration;
//! - `conn`: the connection loop under `serve` (caps and deadlines per connection).
//!
//! Everything public is re-exported here, so callers name `service::http::X` whatever file
//! holds it. The tests below drive the whole layer over real sockets.

mod config;
mod conn;
mod json;
mod layers;
mod problem;
mod serve;

pub use config::*;
pub use json::*;
pub use layers::*;
pub use problem::*;
pub(crate) use serve::*;

#[cfg(test)]
mod tests {
    use super::json::is_json_content_type;
    use super::layers::is_valid_request_id;
    use super::problem::GENERIC_INTERNAL_DETAIL;
    use super::serve::is_loopback;
    use super::*;
    use federation::json::MAX_JSON_DEPTH;

    use std::time::{Duration, Instant};

    use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
    use axum::http::{HeaderMap, HeaderValue, StatusCode};

    use axum::response::IntoResponse;
    use axum::Router;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use axum::routing::{get, post};
    use axum::Json;
    use federation::client::{http_client, http_client_builder, try_http_client};
    use tokio::sync::oneshot;

    #[derive(Debug, Deserialize, Serialize)]
    struct Registration {
        name: String,
        count: u32,
    }

    async fn echo(StrictJson(value): StrictJson<Value>) -> Json<Value> {
        Json(value)
    }

    async fn typed(StrictJson(reg): StrictJson<Registration>) -> Json<Registration> {
        Json(reg)
    }

    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_millis(300)).await;
        "done"
    }

    fn app(limits: &HttpLimits) -> Router {
        let router = Router::new()
            .route("/echo", post(echo))
            .route("/typed", post(typed))
            .route("/health", get(|| async { "ok" }))
            .route("/slow", get(slow))
            .route(
                "/secret",
                get(|| async { internal("db password is hunter2") }),
            )
            .route("/auth", get(|| async { unauthorized("token missing") }))
            .route(
                "/teapot",
                get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
            )
            .route(
                "/redirect",
                get(|| async { axum::response::Redirect::temporary("/health") }),
            )
            .route(
                "/ua",
                get(|headers: HeaderMap| async move {
                    headers
                        .get(axum::http::header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                }),
            )
            .route(
                "/cors",
                get(|| async { ([("access-control-allow-origin", "*")], "x") }),
            )
            .route(
                "/denied",
                get(|| async {
                    forbidden("policy-denied", "not allowed")
                        .with("decision_id", "d-1")
                        .with("reasons", vec!["no consent"])
                        .with("status", 200)
                }),
            );
        common_layers(router, limits)
    }

    struct Server {
        base: String,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), HttpError>>,
    }

    impl Server {
        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                stop.send(()).unwrap();
            }
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    async fn start(limits: HttpLimits) -> Server {
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let router = app(&limits);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        let addr = ready_rx.await.unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        Server {
            base: format!("http://{addr}"),
            stop: Some(stop_tx),
            task,
        }
    }

    fn client() -> reqwest::Client {
        try_http_client().unwrap()
    }

    fn assert_common_headers(resp: &reqwest::Response) {
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert_eq!(h["referrer-policy"], "no-referrer");
        let id = h["x-request-id"].to_str().unwrap();
        assert!(is_valid_request_id(id), "{id}");
        assert!(
            h.keys().all(|k| !k.as_str().starts_with("access-control-")),
            "{h:?}"
        );
    }

    /// Asserts a problem+json response and returns the parsed problem.
    async fn problem(resp: reqwest::Response, status: u16, slug: &str) -> Value {
        assert_eq!(resp.status().as_u16(), status);
        assert_common_headers(&resp);
        assert_eq!(resp.headers()["content-type"], PROBLEM_JSON);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], status);
        assert!(
            body["type"].as_str().unwrap().ends_with(slug),
            "expected {slug}: {body}"
        );
        assert!(body["title"].is_string() && body["detail"].is_string());
        body
    }

    async fn post_json(
        srv: &Server,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        client()
            .post(format!("{}{path}", srv.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn strict_json_over_http() {
        let srv = start(HttpLimits::default()).await;

        let resp = post_json(&srv, "/echo", r#"{"a":[1,{"b":null}]}"#).await;
        assert_eq!(resp.status(), 200);
        assert_common_headers(&resp);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            serde_json::json!({"a":[1,{"b":null}]})
        );

        let resp = client()
            .post(format!("{}/echo", srv.base))
            .header("content-type", "application/ld+json; charset=utf-8")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        for ct in [
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
        ] {
            let mut req = client().post(format!("{}/echo", srv.base)).body("{}");
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            problem(req.send().await.unwrap(), 415, "unsupported-media-type").await;
        }

        problem(
            post_json(&srv, "/echo", "{\"a\":").await,
            400,
            "malformed-json",
        )
        .await;
        problem(
            post_json(&srv, "/echo", "{} x").await,
            400,
            "malformed-json",
        )
        .await;
        problem(post_json(&srv, "/echo", "").await, 400, "malformed-json").await;

        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        problem(post_json(&srv, "/echo", deep).await, 400, "too-deep").await;
        let deep_objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        problem(
            post_json(&srv, "/echo", deep_objects).await,
            400,
            "too-deep",
        )
        .await;
        let resp = client()
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        let body = problem(
            post_json(&srv, "/echo", r#"{"x":{"k":1,"k":2}}"#).await,
            400,
            "duplicate-key",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains("\"k\""));

        problem(
            post_json(&srv, "/echo", b"{\"a\":\"\xff\xfe\"}".to_vec()).await,
            400,
            "invalid-utf8",
        )
        .await;

        let big = format!("\"{}\"", "a".repeat(2 * 1024 * 1024));
        problem(
            post_json(&srv, "/echo", big).await,
            413,
            "payload-too-large",
        )
        .await;

        let resp = post_json(&srv, "/typed", r#"{"name":"clinic","count":3}"#).await;
        assert_eq!(resp.status(), 200);
        let body = problem(
            post_json(&srv, "/typed", r#"{"name":"clinic"}"#).await,
            422,
            "invalid-request",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains("count"), "{body}");
        let body = problem(
            post_json(&srv, "/typed", r#"{"name":"clinic","count":"x"}"#).await,
            422,
            "invalid-request",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains("invalid type"),
            "{body}"
        );

        srv.stop().await;
    }

    #[tokio::test]
    async fn chunked_body_over_limit_is_413() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let srv = start(HttpLimits::default()).await;
        // No Content-Length, so the limit is only hit while StrictJson reads the body.
        let addr = srv.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        for _ in 0..40 {
            // The server may answer and close before everything is sent.
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains(PROBLEM_JSON), "{response}");
        assert!(response.contains("payload-too-large"), "{response}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn router_errors_are_problems() {
        let srv = start(HttpLimits::default()).await;
        let c = client();

        problem(
            c.get(format!("{}/nope", srv.base)).send().await.unwrap(),
            404,
            "not-found",
        )
        .await;

        let resp = c.get(format!("{}/echo", srv.base)).send().await.unwrap();
        assert!(resp.headers()["allow"].to_str().unwrap().contains("POST"));
        problem(resp, 405, "method-not-allowed").await;

        let resp = c.get(format!("{}/auth", srv.base)).send().await.unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        problem(resp, 401, "unauthorized").await;

        let body = problem(
            c.get(format!("{}/secret", srv.base)).send().await.unwrap(),
            500,
            "internal-error",
        )
        .await;
        assert!(!body.to_string().contains("hunter2"));

        let body = problem(
            c.get(format!("{}/teapot", srv.base)).send().await.unwrap(),
            418,
            "about:blank",
        )
        .await;
        assert!(!body.to_string().contains("stout"));

        let body = problem(
            c.get(format!("{}/denied", srv.base)).send().await.unwrap(),
            403,
            "policy-denied",
        )
        .await;
        assert_eq!(body["decision_id"], "d-1");
        assert_eq!(body["reasons"][0], "no consent");

        let resp = c.get(format!("{}/cors", srv.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_common_headers(&resp);

        srv.stop().await;
    }

    #[tokio::test]
    async fn request_id_is_kept_or_generated() {
        let srv = start(HttpLimits::default()).await;
        let c = client();
        let url = format!("{}/health", srv.base);

        let resp = c
            .get(&url)
            .header("x-request-id", "abc-123")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "abc-123");

        for bad in ["has space", "semi;colon", &"a".repeat(65)] {
            let resp = c
                .get(&url)
                .header("x-request-id", bad)
                .send()
                .await
                .unwrap();
            let id = resp.headers()["x-request-id"].to_str().unwrap();
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        }

        let a = c.get(&url).send().await.unwrap();
        let b = c.get(&url).send().await.unwrap();
        assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
        srv.stop().await;
    }

    #[tokio::test]
    async fn timeout_is_408_problem() {
        let app = Router::new().route(
            "/sleep",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let limits = HttpLimits {
            request_timeout_secs: 1,
            ..HttpLimits::default()
        };
        let router = common_layers(app, &limits);
        let (ready_tx, ready_rx) = oneshot::channel();
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let task = tokio::spawn(async move {
            serve(
                router,
                &cfg,
                &limits,
                std::future::pending(),
                Some(ready_tx),
            )
            .await
        });
        let addr = ready_rx.await.unwrap();
        let resp = client()
            .get(format!("http://{addr}/sleep"))
            .send()
            .await
            .unwrap();
        problem(resp, 408, "request-timeout").await;
        task.abort();
    }

    #[tokio::test]
    async fn concurrency_limit_queues() {
        let srv = start(HttpLimits {
            max_concurrent: 1,
            ..HttpLimits::default()
        })
        .await;
        let c = client();
        let url = format!("{}/slow", srv.base);
        let started = Instant::now();
        let (a, b) = tokio::join!(c.get(&url).send(), c.get(&url).send());
        assert_eq!(a.unwrap().status(), 200);
        assert_eq!(b.unwrap().status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(600));
        srv.stop().await;
    }

    #[tokio::test]
    async fn plain_http_refused_off_loopback() {
        for listen in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0", "10.1.2.3:8443"] {
            let cfg = ListenConfig {
                listen: listen.parse().unwrap(),
                tls_cert: None,
                tls_key: None,
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            let err = serve(
                Router::new(),
                &cfg,
                &HttpLimits::default(),
                async {},
                Some(ready_tx),
            )
            .await
            .unwrap_err();
            // 192.0.2.1 is not assigned here: a bind attempt would have been a Bind error.
            assert!(
                matches!(err, HttpError::PlainHttpNotLoopback { .. }),
                "{listen}: {err}"
            );
            assert!(err
                .to_string()
                .contains("plain HTTP is allowed only on loopback; set tls_cert and tls_key"));
            assert!(ready_rx.await.is_err());
        }

        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some("cert.pem".into()),
            tls_key: None,
        };
        let err = serve(Router::new(), &cfg, &HttpLimits::default(), async {}, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::IncompleteTls));

        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let limits = HttpLimits {
            max_concurrent: 0,
            ..HttpLimits::default()
        };
        let err = serve(Router::new(), &cfg, &limits, async {}, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::InvalidLimits(_)));
    }

    #[tokio::test]
    async fn bind_then_serve_on() {
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let listener = bind(&cfg).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let limits = HttpLimits::default();
        let router = app(&limits);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve_on(listener, router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        assert_eq!(ready_rx.await.unwrap(), addr);
        let resp = http_client()
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();

        // The rule holds on the real address too, whatever the config claims.
        let wildcard = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let claims_loopback = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        let err = serve_on(
            wildcard,
            Router::new(),
            &claims_loopback,
            &HttpLimits::default(),
            async {},
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, HttpError::PlainHttpNotLoopback { .. }),
            "{err}"
        );

        let off_loopback = ListenConfig {
            listen: "192.0.2.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
        };
        assert!(matches!(
            bind(&off_loopback),
            Err(HttpError::PlainHttpNotLoopback { .. })
        ));
    }

    #[test]
    fn loopback_ipv6_and_mapped_are_allowed() {
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("127.5.6.7".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }

    #[tokio::test]
    async fn tls_with_self_signed_cert() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, key.cert.pem()).unwrap();
        std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();

        let limits = HttpLimits::default();
        let cfg = ListenConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some(cert_path),
            tls_key: Some(key_path),
        };
        let router = app(&limits);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            serve(router, &cfg, &limits, shutdown, Some(ready_tx)).await
        });
        let addr = ready_rx.await.unwrap();

        let root = reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap();
        let trusting = http_client_builder()
            .tls_certs_only([root])
            .resolve("localhost", addr)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/health", addr.port());
        let resp = trusting.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_common_headers(&resp);
        assert_eq!(resp.text().await.unwrap(), "ok");

        let resp = trusting
            .post(format!("https://localhost:{}/echo", addr.port()))
            .header("content-type", "application/json")
            .body(r#"{"a":1,"a":2}"#)
            .send()
            .await
            .unwrap();
        problem(resp, 400, "duplicate-key").await;

        let untrusting = http_client_builder()
            .resolve("localhost", addr)
            .build()
            .unwrap();
        assert!(untrusting.get(&url).send().await.is_err());

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn client_policy() {
        let srv = start(HttpLimits::default()).await;
        let c = client();
        let resp = c
            .get(format!("{}/redirect", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307, "redirects must not be followed");
        let ua = c.get(format!("{}/ua", srv.base)).send().await.unwrap();
        assert_eq!(
            ua.text().await.unwrap(),
            format!("fedgate/{}", env!("CARGO_PKG_VERSION"))
        );
        srv.stop().await;
    }

    #[test]
    fn strict_parse_rules() {
        let slug = |b: &[u8]| parse_strict_json(b).unwrap_err().slug().map(str::to_owned);
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_strict_json(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            slug(nested(MAX_JSON_DEPTH + 1).as_bytes()).as_deref(),
            Some("too-deep")
        );
        // Brackets inside strings, including after escaped quotes, do not count.
        let in_string = format!(r#"{{"k":"\"{}\\"}}"#, "[".repeat(1000));
        assert!(
            parse_strict_json(in_string.as_bytes()).is_ok(),
            "{in_string}"
        );

        assert_eq!(slug(br#"{"a":1,"a":1}"#).as_deref(), Some("duplicate-key"));
        assert_eq!(
            slug(br#"[{"b":{"c":[{"d":1,"d":2}]}}]"#).as_deref(),
            Some("duplicate-key")
        );
        // Same key after unescaping.
        assert_eq!(
            slug(br#"{"a":1,"\u0061":2}"#).as_deref(),
            Some("duplicate-key")
        );
        assert!(parse_strict_json(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#).is_ok());

        assert_eq!(slug(b"\"\xc3\x28\"").as_deref(), Some("invalid-utf8"));
        assert_eq!(slug(b"{").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"[1,]").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"\"\\ud800\"").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"1 2").as_deref(), Some("malformed-json"));
        assert_eq!(slug(b"\xef\xbb\xbf{}").as_deref(), Some("malformed-json"));
        assert_eq!(
            parse_strict_json(
                br#"{"n":-1,"f":1.5,"u":18446744073709551615,"s":"\u00e9","z":null,"t":true}"#
            )
            .unwrap(),
            serde_json::json!({"n":-1,"f":1.5,"u":18446744073709551615u64,"s":"é","z":null,"t":true})
        );
        let err = parse_strict_json(b"{").unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_content_types() {
        let check = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            is_json_content_type(&headers)
        };
        assert!(check(&["application/json"]));
        assert!(check(&["Application/JSON; charset=UTF-8"]));
        assert!(check(&["application/vc+json"]));
        assert!(check(&["application/problem+json"]));
        assert!(!check(&[]));
        assert!(!check(&["application/+json"]));
        assert!(!check(&["text/json"]));
        assert!(!check(&["application/jsonx"]));
        assert!(!check(&["application/json; charset=utf-16"]));
        assert!(!check(&["application/json", "application/json"]));
    }

    #[test]
    fn problem_document_shape() {
        let p = bad_request("malformed-json", "oops")
            .with("check", "schema")
            .with("title", "shadow")
            .with_instance("/x");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "https://w3id.org/fedgate/problems/malformed-json",
                "title": "Bad Request",
                "status": 400,
                "detail": "oops",
                "instance": "/x",
                "check": "schema",
            })
        );
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back.extensions["check"], "schema");
        assert_eq!(back.slug(), Some("malformed-json"));
        assert_eq!(
            Problem::new(StatusCode::CONFLICT, "", "Conflict", "x").r#type,
            "about:blank"
        );

        let resp = unauthorized("no token").into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(resp.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(internal("secret").detail, GENERIC_INTERNAL_DETAIL);
    }

    #[test]
    fn limits_config() {
        let limits: HttpLimits = toml_like(r#"{"max_body_bytes": 10}"#);
        assert_eq!(limits.max_body_bytes, 10);
        assert_eq!(limits.request_timeout_secs, 30);
        assert_eq!(limits.max_concurrent, 512);
        assert_eq!(limits.header_read_timeout_secs, 10);
        assert!(serde_json::from_str::<HttpLimits>(r#"{"max_body_byte": 10}"#).is_err());
        let listen: ListenConfig = toml_like(r#"{"listen": "127.0.0.1:8443"}"#);
        assert!(listen.tls_cert.is_none() && listen.tls_key.is_none());
    }

    fn toml_like<T: DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
