//! The OpenAPI document every service serves, generated from its handlers.
//!
//! Each service lists its routes once, as [`utoipa_axum::routes!`] of handlers annotated with
//! `#[utoipa::path]`; [`document`] turns that list into both the axum router and the
//! OpenAPI document, so that a route cannot be served without being documented (nor
//! documented without being served). The document is served at `GET /openapi.json`, and
//! rendered by Redoc at `GET /docs`: the Redoc bundle is vendored (`service/vendor/redoc`,
//! MIT) and served from `/docs/redoc.js`, since the services' Content-Security-Policy loads
//! nothing from anywhere else.
//!
//! Error responses are RFC 9457 problems; the sets that recur ([`JsonBodyErrors`],
//! [`AdminErrors`], [`Unavailable`]) are named once here and listed in each path's
//! `responses(...)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use utoipa::openapi::path::PathItem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    ResponseBuilder,
};
use utoipa::{IntoResponses, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::http::PROBLEM_JSON;

/// The routes of a service, each carrying its operations: what [`document`] builds the
/// router and the document from.
pub type Routes<S> = Vec<UtoipaMethodRouter<S>>;

/// Name of the security scheme of the admin endpoints (bearer token, see `service::admin`).
const ADMIN_TOKEN: &str = "adminToken";

/// The Content-Security-Policy of the `/docs` page: the Redoc script from this origin, the
/// styles it injects, the document fetched from this origin, and the search worker it
/// starts from a `blob:`. Nothing from anywhere else.
pub const DOCS_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const REDOC_JS: &[u8] = include_bytes!("../vendor/redoc/redoc.standalone.js");

/// An RFC 9457 problem details document, as the services send it (`application/problem+json`).
/// Extension members such as `check`, `decision_id` or `reasons` may follow.
#[derive(ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)] // Describes `crate::http::Problem` on the wire (for `body = ProblemDoc`); never built.
pub struct ProblemDoc {
    /// `about:blank` or `https://w3id.org/fedgate/problems/<slug>`.
    #[schema(rename = "type")]
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    instance: Option<String>,
}

/// The start of a service's document: its title, version and description, the `Problem`
/// schema and the admin token's security scheme.
pub fn base(title: &str, version: &str, description: &str) -> OpenApi {
    let components = ComponentsBuilder::new()
        .schema("Problem", <ProblemDoc as utoipa::PartialSchema>::schema())
        .security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(version)
                .description(Some(description)),
        )
        .components(Some(components))
        .build()
}

/// Builds a service's router and its document from one list of routes, and adds
/// `GET /openapi.json`, `GET /docs` and `GET /docs/redoc.js` (documented as well). The
/// caller adds its fallback and state, then `http::common_layers`.
pub fn document<S>(base: OpenApi, routes: Routes<S>) -> (Router<S>, OpenApi)
where
    S: Clone + Send + Sync + 'static,
{
    let mut api = OpenApiRouter::with_openapi(base);
    for route in routes {
        api = api.routes(route);
    }
    let api = api
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
        .routes(routes!(redoc_js));
    let (router, doc) = api.split_for_parts();
    let json = match doc.to_json() {
        Ok(json) => Bytes::from(json),
        // A document of strings and maps always serializes; answer 500s if it ever did not.
        Err(err) => {
            tracing::error!(%err, "cannot serialize the OpenAPI document");
            Bytes::new()
        }
    };
    let router = router.layer(Extension(DocumentJson(Arc::new(json))));
    (router, doc)
}

#[derive(Clone)]
struct DocumentJson(Arc<Bytes>);

/// This service's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service",
        content_type = "application/json", body = Object)))]
async fn openapi_json(Extension(doc): Extension<DocumentJson>) -> Response {
    if doc.0.is_empty() {
        return crate::http::internal("the OpenAPI document could not be serialized")
            .into_response();
    }
    ([(CONTENT_TYPE, "application/json")], (*doc.0).clone()).into_response()
}

/// A page rendering this service's OpenAPI document (Redoc).
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "HTML page rendering /openapi.json",
        content_type = "text/html", body = String)))]
async fn docs_page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CONTENT_SECURITY_POLICY, DOCS_CSP),
        ],
        DOCS_HTML,
    )
        .into_response()
}

/// Relative URLs: the page works behind a proxy that serves the service under a prefix.
const DOCS_HTML: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>API reference</title>\n</head>\n<body>\n<redoc spec-url=\"openapi.json\"></redoc>\n\
<script src=\"docs/redoc.js\"></script>\n</body>\n</html>\n";

/// The Redoc bundle (vendored, MIT; see `service/vendor/redoc/LICENSE`).
#[utoipa::path(get, path = "/docs/redoc.js", tag = "docs",
    responses((status = 200, description = "The Redoc standalone bundle",
        content_type = "text/javascript", body = String)))]
async fn redoc_js() -> Response {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_JS,
    )
        .into_response()
}

/// Every (method, path) the document describes, in the document's order.
#[cfg(test)]
fn operations(doc: &OpenApi) -> Vec<(Method, String)> {
    doc.paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            methods_of(item)
                .into_iter()
                .map(move |method| (method, path.clone()))
        })
        .collect()
}

/// Every (method, path) of a list of routes, as the router serves them.
pub fn route_operations<S>(routes: &Routes<S>) -> Vec<(Method, String)> {
    routes
        .iter()
        .flat_map(|(_, paths, _)| {
            paths.paths.iter().flat_map(|(path, item)| {
                methods_of(item)
                    .into_iter()
                    .map(move |method| (method, path.clone()))
            })
        })
        .collect()
}

/// The methods an OpenAPI path item may hold.
const HTTP_METHODS: [Method; 8] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
    Method::HEAD,
    Method::PATCH,
    Method::TRACE,
];

fn methods_of(item: &PathItem) -> Vec<Method> {
    [
        (Method::GET, item.get.is_some()),
        (Method::PUT, item.put.is_some()),
        (Method::POST, item.post.is_some()),
        (Method::DELETE, item.delete.is_some()),
        (Method::OPTIONS, item.options.is_some()),
        (Method::HEAD, item.head.is_some()),
        (Method::PATCH, item.patch.is_some()),
        (Method::TRACE, item.trace.is_some()),
    ]
    .into_iter()
    .filter_map(|(method, present)| present.then_some(method))
    .collect()
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

/// Problem responses by status, for a service's own sets (`impl IntoResponses`).
pub fn problems(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    list.iter()
        .map(|(status, description)| (status.to_string(), problem(description)))
        .collect()
}

/// The problems of a request with a JSON body (`StrictJson`): malformed (400), too large
/// (413), not JSON (415), unknown members or wrong types (422).
pub struct JsonBodyErrors;

impl IntoResponses for JsonBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        problems(&[
            (400, "Malformed request"),
            (413, "Body too large"),
            (415, "Not JSON"),
            (
                422,
                "Well-formed but invalid (an unknown member, a wrong type)",
            ),
        ])
    }
}

/// The problems of an admin endpoint: no or a wrong bearer token (401).
pub struct AdminErrors;

impl IntoResponses for AdminErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        problems(&[(401, "No admin token, or not this service's")])
    }
}

/// Fail closed: the service cannot answer now (503).
pub struct Unavailable;

impl IntoResponses for Unavailable {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        problems(&[(503, "Fail closed: the service cannot answer now")])
    }
}

/// A resource that may not exist (404).
pub struct NotFound;

impl IntoResponses for NotFound {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        problems(&[(404, "No such resource")])
    }
}

/// A malformed path parameter (400, naming the parameter).
pub struct BadParameter;

impl IntoResponses for BadParameter {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        problems(&[(400, "A path parameter is malformed")])
    }
}

/// Compares a service's router with its route list and its served document, and returns
/// every disagreement (empty when they agree):
/// - each (method, path) of `listed` (the list the router was built from) is in the
///   document served at `/openapi.json`, and the document has nothing else but the docs
///   routes;
/// - each documented path is routed: another method on it is answered 405 (not the 404 of
///   an unknown path), with an `Allow` header naming every documented method.
///
/// For the services' tests; nothing is sent but GET /openapi.json and requests whose
/// method no route takes, so no handler runs.
pub async fn disagreements(app: &Router, listed: &[(Method, String)]) -> Vec<String> {
    use tower::ServiceExt as _;

    let mut found = Vec::new();
    let request = |method: Method, path: &str| {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
    };
    let Ok(get) = request(Method::GET, "/openapi.json") else {
        return vec!["cannot build a request for /openapi.json".into()];
    };
    let served = match app.clone().oneshot(get).await {
        Ok(response) => http_body_util::BodyExt::collect(response.into_body()).await,
        Err(never) => match never {},
    };
    // Read as plain JSON: what a client of `/openapi.json` sees.
    let doc: serde_json::Value = match served.map(|body| serde_json::from_slice(&body.to_bytes())) {
        Ok(Ok(doc)) => doc,
        _ => return vec!["/openapi.json is not JSON".into()],
    };
    let Some(paths) = doc["paths"].as_object() else {
        return vec!["/openapi.json has no paths".into()];
    };
    let methods_at = |item: &serde_json::Value| -> Vec<Method> {
        item.as_object()
            .into_iter()
            .flat_map(|ops| ops.keys())
            .filter_map(|key| Method::from_bytes(key.to_ascii_uppercase().as_bytes()).ok())
            .filter(|method| HTTP_METHODS.contains(method))
            .collect()
    };
    let documented: Vec<(Method, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            methods_at(item)
                .into_iter()
                .map(move |method| (method, path.clone()))
        })
        .collect();
    let docs_routes = [
        (Method::GET, "/openapi.json".to_owned()),
        (Method::GET, "/docs".to_owned()),
        (Method::GET, "/docs/redoc.js".to_owned()),
    ];
    for op in listed {
        if !documented.contains(op) {
            found.push(format!("{} {} is routed but not documented", op.0, op.1));
        }
    }
    for op in &documented {
        if !listed.contains(op) && !docs_routes.contains(op) {
            found.push(format!(
                "{} {} is documented but not in the route list",
                op.0, op.1
            ));
        }
    }
    for (path, item) in paths {
        let methods = methods_at(item);
        let Some(other) = [Method::PATCH, Method::PUT, Method::DELETE]
            .into_iter()
            .find(|m| !methods.contains(m))
        else {
            continue;
        };
        let concrete = path.replace(['{', '}'], "");
        let Ok(probe) = request(other.clone(), &concrete) else {
            found.push(format!("{path}: cannot build a request"));
            continue;
        };
        let response = match app.clone().oneshot(probe).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if response.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED {
            found.push(format!(
                "{other} {path}: {} where a routed path answers 405",
                response.status()
            ));
            continue;
        }
        let allow = response
            .headers()
            .get(axum::http::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        for method in methods {
            if !allow.split(',').any(|m| m.trim() == method.as_str()) {
                found.push(format!(
                    "{method} {path} is documented but not routed (Allow: {allow})"
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    /// Greets.
    #[utoipa::path(get, path = "/hello/{name}", params(("name" = String, Path)),
        responses((status = 200, body = String), NotFound))]
    async fn hello() -> &'static str {
        "hello"
    }

    fn app() -> (Router, OpenApi) {
        let (router, doc) = document(base("test", "1", "a test service"), vec![routes!(hello)]);
        (router.fallback(crate::http::problem_fallback), doc)
    }

    async fn get(app: &Router, path: &str) -> Response {
        let request = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn the_document_lists_the_routes_and_is_served() {
        let (app, doc) = app();
        let ops = operations(&doc);
        for expected in ["/hello/{name}", "/openapi.json", "/docs", "/docs/redoc.js"] {
            assert!(
                ops.contains(&(Method::GET, expected.to_owned())),
                "{expected}: {ops:?}"
            );
        }
        let response = get(&app, "/openapi.json").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served["info"]["title"], "test");
        assert!(served["paths"]["/hello/{name}"]["get"].is_object());
        assert_eq!(
            served["paths"]["/hello/{name}"]["get"]["responses"]["404"]["content"][PROBLEM_JSON]
                ["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        assert!(served["components"]["schemas"]["Problem"].is_object());
        assert_eq!(
            served["components"]["securitySchemes"][ADMIN_TOKEN]["scheme"],
            "bearer"
        );
        assert_eq!(get(&app, "/hello/you").await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn the_docs_page_loads_redoc_from_this_origin_only() {
        let (app, _) = app();
        let response = get(&app, "/docs").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(!csp.contains("http"), "no other origin: {csp}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            page.contains("<script src=\"docs/redoc.js\"></script>"),
            "{page}"
        );
        assert!(page.contains("spec-url=\"openapi.json\""), "{page}");
        assert!(!page.contains("<script>"), "no inline script: {page}");

        let response = get(&app, "/docs/redoc.js").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), REDOC_JS.len());
    }

    #[tokio::test]
    async fn disagreements_are_found() {
        let (app, _) = app();
        let listed = vec![(Method::GET, "/hello/{name}".to_owned())];
        assert_eq!(disagreements(&app, &listed).await, Vec::<String>::new());

        let mut more = listed.clone();
        more.push((Method::POST, "/unlisted".to_owned()));
        assert_eq!(
            disagreements(&app, &more).await,
            vec!["POST /unlisted is routed but not documented".to_owned()]
        );
        assert_eq!(
            disagreements(&app, &[]).await,
            vec!["GET /hello/{name} is documented but not in the route list".to_owned()]
        );

        // A document listing a path that is not routed.
        let (router, mut doc) = app_parts();
        let extra = doc.paths.paths.get("/hello/{name}").cloned().unwrap();
        doc.paths.paths.insert("/ghost".to_owned(), extra);
        let json = Bytes::from(doc.to_json().unwrap());
        let app = router
            .layer(Extension(DocumentJson(Arc::new(json))))
            .fallback(crate::http::problem_fallback);
        let mut listed = listed;
        listed.push((Method::GET, "/ghost".to_owned()));
        let found = disagreements(&app, &listed).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("PATCH /ghost: 404"), "{found:?}");
    }

    /// The router and document of [`app`], before the document is attached.
    fn app_parts() -> (Router, OpenApi) {
        OpenApiRouter::with_openapi(base("test", "1", "a test service"))
            .routes(routes!(hello))
            .routes(routes!(openapi_json))
            .routes(routes!(docs_page))
            .routes(routes!(redoc_js))
            .split_for_parts()
    }

    #[test]
    fn the_route_list_and_the_document_agree() {
        let routes: Routes<()> = vec![routes!(hello)];
        assert_eq!(
            route_operations(&routes),
            vec![(Method::GET, "/hello/{name}".to_owned())]
        );
    }
}
