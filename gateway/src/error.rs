//! Errors of the gateway, and their one mapping to RFC 9457 problem+json.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use service::http::Problem;

use crate::consents::ConsentStoreError;
use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The client's request is malformed (400).
    #[error("{detail}")]
    BadRequest { slug: &'static str, detail: String },
    /// A path parameter without its format (400, naming the parameter).
    #[error(transparent)]
    Param(#[from] service::params::ParamError),
    /// Well-formed but not processable (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("unknown data domain {0:?} (clinical or billing)")]
    UnknownDomain(String),
    /// Access refused: verification failed or policy denied (403). Always recorded.
    #[error("access denied")]
    Denied {
        decision_id: String,
        reasons: Vec<String>,
        check: Option<String>,
        /// Digest of the policy bundle that decided (none when verification refused).
        policy: Option<String>,
    },
    #[error("{0} not found")]
    NotFound(String),
    /// A later page of a paged answer could not be served (401, 403 or 404).
    #[error(transparent)]
    Page(crate::paging::PageError),
    /// An admin endpoint without the admin token (401).
    #[error("the gateway's admin token is required")]
    Unauthorized,
    /// Fail closed: the gateway cannot record or decide right now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The record source did not answer in time (504).
    #[error("{0}")]
    SourceTimeout(String),
    /// The consent store failed: storage is 503 (try again), an encoding defect 500.
    #[error(transparent)]
    Consents(#[from] ConsentStoreError),
    /// The token vault failed: storage is 503, a corrupt entry 500. Never a 4xx: a vault
    /// that cannot answer says nothing about the token asked for.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// OpenID4VP: the wallet has not answered yet (202).
    #[error("the wallet has not answered yet")]
    Pending,
    /// OpenID4VP: a collection without the right secret or response code (401).
    #[error("wrong requester secret or response code")]
    Oid4vpUnauthorized,
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// A failure of the record source: 504 when it did not answer in time, else 503 (try
    /// again later). Never a 4xx: it is not the requester's mistake.
    pub fn record_source(e: crate::records::RecordError) -> Self {
        match e {
            crate::records::RecordError::Timeout(_) => {
                GatewayError::SourceTimeout(format!("record source: {e}"))
            }
            e => GatewayError::Unavailable(format!("record source: {e}")),
        }
    }

    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        GatewayError::BadRequest {
            slug,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let problem = match self {
            GatewayError::BadRequest { slug, detail } => {
                service::http::bad_request(slug, detail)
            }
            GatewayError::Param(e) => e.problem(),
            GatewayError::Unprocessable(d) => service::http::unprocessable("invalid-request", d),
            GatewayError::UnknownDomain(d) => service::http::not_found(format!(
                "unknown data domain {d:?} (clinical or billing)"
            )),
            GatewayError::Denied {
                decision_id,
                reasons,
                check,
                policy,
            } => {
                let detail = reasons
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "access denied".into());
                let mut p = Problem::new(
                    StatusCode::FORBIDDEN,
                    "access-denied",
                    "Access denied",
                    detail,
                )
                .with("reasons", serde_json::json!(reasons));
                // The same headers as an answer: a client finds the decision of a refusal
                // where it finds the decision of a 200.
                if let Ok(v) = HeaderValue::from_str(&decision_id) {
                    p = p.with_header(HeaderName::from_static("fedgate-decision-id"), v);
                }
                p = p.with("decision_id", decision_id);
                if let Some(check) = check {
                    p = p.with("check", check);
                }
                if let Some(policy) = policy.filter(|d| !d.is_empty()) {
                    if let Ok(v) = HeaderValue::from_str(&policy) {
                        p = p.with_header(HeaderName::from_static("fedgate-policy-digest"), v);
                    }
                    p = p.with("policy_digest", policy);
                }
                p
            }
            GatewayError::Page(e) => {
                use crate::paging::PageError;
                let (status, slug, title) = match &e {
                    PageError::MissingProof | PageError::BadProof(_) => {
                        (StatusCode::UNAUTHORIZED, "page-proof", "Page proof required")
                    }
                    PageError::WrongRequester => {
                        (StatusCode::FORBIDDEN, "page-requester", "Another requester's cursor")
                    }
                    PageError::UnknownCursor | PageError::NoSuchPage(_) => {
                        (StatusCode::NOT_FOUND, "page-cursor", "Unknown or expired cursor")
                    }
                    PageError::Storage(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service-unavailable",
                        "Service Unavailable",
                    ),
                };
                Problem::new(status, slug, title, e.to_string())
            }
            GatewayError::NotFound(what) => {
                service::http::not_found(format!("{what} not found"))
            }
            GatewayError::Unauthorized => service::http::unauthorized(
                "this endpoint needs the gateway's admin token (admin_token_file) as a Bearer token",
            ),
            GatewayError::Unavailable(d) => service::http::service_unavailable(d),
            GatewayError::SourceTimeout(d) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "record-source-timeout",
                "Record source timeout",
                d,
            ),
            GatewayError::Consents(e) => match e {
                ConsentStoreError::Storage(_) => service::http::service_unavailable(e.to_string()),
                ConsentStoreError::Encode(_) => service::http::internal(e),
            },
            GatewayError::Vault(e) => match e {
                VaultError::Storage(_) => service::http::service_unavailable(e.to_string()),
                _ => service::http::internal(e),
            },
            GatewayError::Pending => {
                return (
                    StatusCode::ACCEPTED,
                    [(axum::http::header::CACHE_CONTROL, "no-store")],
                    axum::Json(serde_json::json!({"status": "pending"})),
                )
                    .into_response()
            }
            GatewayError::Oid4vpUnauthorized => Problem::new(
                StatusCode::UNAUTHORIZED,
                "oid4vp-unauthorized",
                "Wrong requester secret or response code",
                "collect with the response code (same device) or the requester secret (cross device)",
            ),
            GatewayError::Internal(d) => service::http::internal(d),
        };
        problem.into_response()
    }
}

/// Why the gateway could not start: its keys, storage, record source or federation
/// registry could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin_token_file: {0}")]
    AdminToken(String),
    #[error("key_file: {0}")]
    Key(#[source] federation::keys::KeyError),
    #[error("key_file belongs to {found}, not to the configured did {configured}")]
    WrongKey { found: String, configured: String },
    #[error("the gateway's DID document: {0}")]
    DidDocument(#[source] federation::keys::KeyError),
    #[error(transparent)]
    Secret(VaultError),
    #[error("{path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The gateway's database (`data_dir/gateway.redb`) could not be opened; the message
    /// names the file, or an earlier fedgate's `gateway.sled` in its way.
    #[error("gateway database: {0}")]
    Storage(#[from] storage::StoreError),
    #[error(transparent)]
    Consents(#[from] ConsentStoreError),
    #[error("records: {0}")]
    Records(#[from] crate::records::RecordError),
    /// A URL in the configuration (`setting` names where) that does not parse.
    #[error("{setting}: {reason}")]
    Url { setting: String, reason: String },
    #[error(transparent)]
    Registry(#[from] federation::registry::RegistryError),
    /// A bundled context, schema or resource (`[bundle]`) that does not load.
    #[error(transparent)]
    Bundle(#[from] service::config::ConfigError),
}

/// The OpenAPI responses of [`GatewayError::Denied`]: access refused (403), always recorded;
/// the problem carries the decision id, the reasons and the failed check.
pub(crate) struct Denied;

impl utoipa::IntoResponses for Denied {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        service::openapi::problems(&[(
            403,
            "Access denied (recorded): decision_id, reasons, the failed check; the fedgate-decision-id and fedgate-policy-digest headers as on an answer",
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consents::ConsentStore;
    use crate::vault::Vault;

    fn status(e: impl Into<GatewayError>) -> StatusCode {
        e.into().into_response().status()
    }

    #[test]
    fn a_refusal_carries_its_decision_in_headers() {
        let denied = |policy: Option<&str>| {
            GatewayError::Denied {
                decision_id: "urn:uuid:0b0c".into(),
                reasons: vec!["no consent".into()],
                check: None,
                policy: policy.map(str::to_string),
            }
            .into_response()
        };
        let r = denied(Some("ab12"));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["fedgate-decision-id"], "urn:uuid:0b0c");
        assert_eq!(r.headers()["fedgate-policy-digest"], "ab12");
        // Refused before any policy decided: no digest to name.
        let r = denied(None);
        assert_eq!(r.headers()["fedgate-decision-id"], "urn:uuid:0b0c");
        assert!(r.headers().get("fedgate-policy-digest").is_none());
    }

    /// The gateway's database in `dir` with trees `names` that cannot be read: each is
    /// replaced by a table of other key and value types, so every read and write of it
    /// fails in storage, the way a failing disk would answer.
    fn spoiled(dir: &std::path::Path, names: &[&str]) -> crate::db::Db {
        let path = dir.join("gateway.redb");
        drop(crate::db::open(dir).unwrap());
        {
            let db = redb::Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            for name in names {
                let tree = redb::TableDefinition::<&[u8], &[u8]>::new(name);
                tx.delete_table(tree).unwrap();
                let table = redb::TableDefinition::<u64, u64>::new(name);
                tx.open_table(table).unwrap().insert(1, 1).unwrap();
            }
            tx.commit().unwrap();
        }
        crate::db::open(dir).unwrap()
    }

    #[test]
    fn a_vault_that_cannot_read_is_503_not_an_unknown_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = {
            let db = crate::db::open(dir.path()).unwrap();
            let vault = Vault::open(db.tree("vault"), [7; 32]);
            let token = vault.put("MRN-1", "mrn", "did:web:b", "clinical").unwrap();
            assert_eq!(vault.find("tok_never-issued").unwrap(), None);
            assert!(vault.find(&token).unwrap().is_some());
            token
        };
        let db = spoiled(dir.path(), &["vault"]);
        let vault = Vault::open(db.tree("vault"), [7; 32]);
        let err = vault.find(&token).unwrap_err();
        assert!(matches!(err, VaultError::Storage(_)), "{err:?}");
        assert_eq!(status(err), StatusCode::SERVICE_UNAVAILABLE);
        let err = vault.reveal(&token, "did:web:b").unwrap_err();
        assert_eq!(status(err), StatusCode::SERVICE_UNAVAILABLE);
        // Nor is a value tokenized again under a fresh token while storage fails.
        assert!(matches!(
            vault.put("MRN-1", "mrn", "did:web:b", "clinical"),
            Err(VaultError::Storage(_))
        ));
    }

    #[test]
    fn other_vault_failures_are_500_never_4xx() {
        assert_eq!(
            status(VaultError::Corrupt),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn a_consent_store_that_cannot_read_fails_the_cohort_with_503() {
        let now = chrono::Utc::now();
        let store = ConsentStore::open(&crate::db::temporary().unwrap()).unwrap();
        assert_eq!(
            store
                .research_cohort("urn:study:s", "did:web:sponsor", "HRESCH", now, false)
                .unwrap(),
            Vec::<String>::new()
        );
        let dir = tempfile::tempdir().unwrap();
        let db = spoiled(dir.path(), &["consents_by_grantee", "patient_links"]);
        let store = ConsentStore::open(&db).unwrap();
        let err = store
            .research_cohort("urn:study:s", "did:web:sponsor", "HRESCH", now, false)
            .unwrap_err();
        assert_eq!(status(err), StatusCode::SERVICE_UNAVAILABLE);
        let err = store.dids_for_patient("p1", false).unwrap_err();
        assert_eq!(status(err), StatusCode::SERVICE_UNAVAILABLE);
    }
}
