//! The issuer's HTTP service: state, router and handlers.
//!
//! Public: the DID document, the W3C VC API verify endpoints, the status list (a Bitstring
//! Status List, or a Token Status List to a client that asks for one), the SD-JWT VC type
//! metadata at each vct URL, revocation events, the key inventory and health. Admin (bearer token): issue, and the privilege
//! lifecycle (joiner, mover, leaver, list by subject).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::Utc;
use federation::credentials::{
    self, CredentialKind, Privilege, PrivilegeSubject, ProofFormat, StatusEntry,
};
use federation::did::DidResolver;
use federation::keys::KeyPair;
use federation::status::StatusCache;
use federation::trust::StaticTrust;
use federation::verify::Verifier;
use serde::Deserialize;
use serde_json::{json, Value};
use service::http::StrictJson;
use service::openapi::{AdminErrors, BadParameter, JsonBodyErrors, NotFound};
use service::params;
use tokio::sync::broadcast;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::config::IssuerConfig;
use crate::error::{IssuerError, ProtocolError, StartError};
use crate::oid4vci::{self as vci, OfferSpec, Oid4vci};
use crate::store::{Record, Store};

/// Path of the one revocation list this issuer publishes.
pub const STATUS_LIST_PATH: &str = "status/revocation";

pub struct IssuerState {
    config: IssuerConfig,
    key: KeyPair,
    store: Store,
    verifier: Verifier,
    /// Contexts, schemas and related resources bundled by configuration.
    bundle: federation::bundle::Bundle,
    public_url: reqwest::Url,
    admin_token: Option<service::admin::AdminToken>,
    events: broadcast::Sender<String>,
    signed_list: Mutex<Option<(u64, Instant, String)>>,
    /// The same bits as a Token Status List, for SD-JWT VCs.
    signed_token_list: Mutex<Option<(u64, Instant, String)>>,
    /// OpenID4VCI offers, codes, tokens and nonces.
    oid4vci: Oid4vci,
}

impl IssuerState {
    /// Builds the state: loads (or creates) the key, opens storage, reads the admin token.
    pub fn new(config: IssuerConfig, public_url: reqwest::Url) -> Result<Arc<Self>, StartError> {
        // `did = "did:key"`: the office's DID is the did:key of its key, made on first start.
        let key = KeyPair::load_or_create(&config.key_file, || {
            if config.did.starts_with("did:key") {
                KeyPair::generate_did_key(Default::default())
            } else {
                KeyPair::generate_did_web(&config.did, Default::default())
            }
            .map(|k| k.with_purpose("issuer assertion"))
        })
        .map_err(StartError::Key)?;
        let matches = if config.did == "did:key" {
            key.did().starts_with("did:key:")
        } else {
            key.did() == config.did
        };
        if !matches {
            return Err(StartError::KeyMismatch {
                found: key.did().to_string(),
                configured: config.did.clone(),
            });
        }
        let admin_token = match &config.admin_token_file {
            Some(path) => Some(service::admin::AdminToken::load(path)?),
            None => {
                tracing::warn!("no admin_token_file: admin endpoints will refuse every call");
                None
            }
        };
        let store = Store::open(&config.data_dir, &config.storage).map_err(StartError::Store)?;

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let mut allow = HashMap::new();
        for (did, url) in config.did_web.iter().chain(&config.status_origins) {
            let url = reqwest::Url::parse(url).map_err(|source| StartError::DidWeb {
                did: did.clone(),
                source,
            })?;
            allow.insert(did.clone(), url);
        }
        // Its own DID's registered origin (for a did:key, that of its status lists only).
        allow.insert(key.did().to_string(), public_url.clone());
        resolver.set_web_allow_map(allow);
        resolver.pin(key.did_document().map_err(StartError::DidDocument)?);
        let trust = StaticTrust::new();
        for (kind, issuers) in &config.trust {
            for issuer in issuers {
                trust.add(*kind, issuer);
            }
        }
        for kind in &config.issues {
            trust.add(*kind, key.did());
        }
        for (type_name, issuers) in &config.trust_types {
            for issuer in issuers {
                trust.add_type(type_name, issuer);
            }
        }
        for other in &config.other_types {
            trust.add_type(&other.type_name, key.did());
        }
        let bundle = config.bundle.load("issuer config")?;
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            Duration::from_secs(config.status_list_ttl_secs.min(60)),
            config.dev_mode,
        ));
        let verifier =
            Verifier::new(resolver.clone(), Arc::new(trust), status).with_bundle(bundle.clone());
        let (events, _) = broadcast::channel(256);
        let oid4vci = Oid4vci::new(store.db(), resolver.clone(), config.oid4vci.nonce_ttl_secs);
        Ok(Arc::new(IssuerState {
            oid4vci,
            config,
            key,
            store,
            verifier,
            bundle,
            public_url,
            admin_token,
            events,
            signed_list: Mutex::new(None),
            signed_token_list: Mutex::new(None),
        }))
    }

    fn status_list_url(&self) -> String {
        format!("{}{}", self.public_url, STATUS_LIST_PATH)
    }

    fn require_admin(&self, headers: &HeaderMap) -> Result<(), IssuerError> {
        match &self.admin_token {
            Some(token) if token.admits(headers) => Ok(()),
            _ => Err(IssuerError::Unauthorized),
        }
    }

    /// Completes, checks, signs and records a credential. Every issue path goes through here.
    async fn issue(
        &self,
        credential: Value,
        format: ProofFormat,
        replaces: Option<&str>,
    ) -> Result<Record, IssuerError> {
        self.issue_with(credential, format, replaces, None).await
    }

    /// [`Self::issue`], with the VC API's `options.credentialId`.
    async fn issue_with(
        &self,
        mut credential: Value,
        format: ProofFormat,
        replaces: Option<&str>,
        credential_id: Option<&str>,
    ) -> Result<Record, IssuerError> {
        let unprocessable = |m: String| IssuerError::Unprocessable(m);
        let obj = credential
            .as_object_mut()
            .ok_or_else(|| IssuerError::BadRequest("credential must be a JSON object".into()))?;
        match obj.get("issuer") {
            None => {
                obj.insert("issuer".into(), json!(self.key.did()));
            }
            Some(Value::String(s)) if s == self.key.did() => {}
            // VC Data Model 2.0 §4.7: an object with the issuer's id (and a name, ...).
            Some(Value::Object(o))
                if o.get("id").and_then(Value::as_str) == Some(self.key.did()) => {}
            Some(_) => {
                return Err(unprocessable(format!(
                    "issuer must be {} (this office), as a string or an object's id",
                    self.key.did()
                )))
            }
        }
        let supplied_status = obj.remove("credentialStatus");
        if let Some(status) = &supplied_status {
            self.check_supplied_status(status)?;
        }
        let id = match (obj.get("id"), credential_id) {
            (Some(Value::String(s)), Some(option)) if s != option => {
                return Err(unprocessable(
                    "options.credentialId differs from the credential's id".into(),
                ))
            }
            (Some(Value::String(s)), _) => s.clone(),
            (Some(_), _) => return Err(unprocessable("id must be a string".into())),
            (None, Some(option)) => {
                obj.insert("id".into(), json!(option));
                option.to_string()
            }
            (None, None) => {
                let id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
                obj.insert("id".into(), json!(id));
                id
            }
        };
        if reqwest::Url::parse(&id).is_err() {
            return Err(unprocessable(
                "id must be a URL (urn:uuid:..., https://...)".into(),
            ));
        }
        for key in ["validFrom", "validUntil"] {
            if let Some(v) = obj.get(key) {
                if v.as_str().and_then(federation::time::parse).is_none() {
                    return Err(unprocessable(format!(
                        "{key} must be an RFC 3339 date-time with a time zone"
                    )));
                }
            }
        }
        let now = Utc::now();
        obj.entry("validFrom")
            .or_insert_with(|| json!(federation::time::rfc3339(now)));
        obj.entry("validUntil").or_insert_with(|| {
            json!(federation::time::rfc3339(
                now + chrono::Duration::days(self.config.credential_validity_days)
            ))
        });
        let kind = match CredentialKind::of_credential(&credential) {
            Ok(kind) if self.config.issues.contains(&kind) => Some(kind),
            Ok(kind) => return Err(unprocessable(format!("this office does not issue {kind}"))),
            Err(federation::kind::KindError::Unknown(_)) if format == ProofFormat::SdJwt => {
                return Err(unprocessable(
                    "format sd-jwt is for this office's healthcare types only (it has a vct for each of them)".into(),
                ))
            }
            Err(federation::kind::KindError::Unknown(types)) => {
                self.complete_other_type(&mut credential, &types)?;
                None
            }
            Err(e) => return Err(unprocessable(e.to_string())),
        };
        match self.store.get(&id) {
            Ok(_) => return Err(IssuerError::Conflict(format!("credential {id} exists"))),
            Err(IssuerError::NotFound(_)) => {}
            // A storage or decoding failure is not "no such credential": issuing then
            // could overwrite a record that only failed to read.
            Err(e) => return Err(e),
        }
        // Check the schema and the data model before reserving a status index for it.
        match kind {
            Some(kind) => federation::schema::check(kind, &credential)
                .map_err(|e| unprocessable(e.to_string()))?,
            None => {
                federation::verify::check_shape(&credential, &self.bundle)
                    .map_err(|e| unprocessable(e.detail))?;
            }
        }
        let index = self.store.allocate_index(&id).await?;
        let mut entry = json!(StatusEntry::revocation(
            &self.status_list_url(),
            index as usize
        ));
        // What the caller supplied (checked above) is kept, completed with this office's
        // list and index.
        if let (Some(Value::Object(supplied)), Some(ours)) =
            (supplied_status, entry.as_object_mut())
        {
            for (k, v) in supplied {
                ours.entry(k).or_insert(v);
            }
        }
        credential["credentialStatus"] = entry;
        let types = match kind {
            Some(_) => Vec::new(),
            None => federation::verify::type_names(&credential),
        };
        let subject = credential["credentialSubject"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let issued = async {
            let signed = match kind {
                Some(_) => credentials::issue(credential, &self.key, format).await?,
                None => credentials::issue_any(credential, &self.key, format, &self.bundle).await?,
            };
            let record = Record {
                id: id.clone(),
                kind,
                types,
                subject,
                format,
                status_index: index,
                issued_at: now,
                revoked_at: None,
                replaced_by: None,
                replaces: replaces.map(str::to_string),
                credential: signed,
            };
            match replaces {
                Some(old) => {
                    self.store.revoke(old, Some(&record)).await?;
                    self.announce_revocation(old);
                }
                None => self.store.insert(&record).await?,
            }
            Ok(record)
        }
        .await;
        if issued.is_err() {
            // Nothing was issued: the reserved index goes back to the list.
            if let Err(e) = self.store.release_index(index, &id).await {
                tracing::warn!(error = %e, "a reserved status list index was not released");
            }
        }
        issued
    }

    /// A `credentialStatus` in an issue request is accepted only as an entry of this
    /// office's own revocation list, whose index the office assigns: a status that another
    /// party controls, or an index the caller picks (which could be another credential's),
    /// would let someone else revoke or un-revoke what this office issued.
    fn check_supplied_status(&self, status: &Value) -> Result<(), IssuerError> {
        let refuse = |why: &str| {
            Err(IssuerError::Unprocessable(format!(
                "credentialStatus is refused: {why}"
            )))
        };
        let Value::Object(entry) = status else {
            return refuse("it must be one entry (an object) of this office's status list");
        };
        if entry.get("type").and_then(Value::as_str) != Some("BitstringStatusListEntry") {
            return refuse("this office publishes a BitstringStatusListEntry list only");
        }
        if entry
            .get("statusPurpose")
            .is_some_and(|p| p.as_str() != Some("revocation"))
        {
            return refuse("this office's list has the statusPurpose revocation only");
        }
        if entry
            .get("statusListCredential")
            .is_some_and(|l| l.as_str() != Some(self.status_list_url().as_str()))
        {
            return refuse("statusListCredential is not this office's status list");
        }
        if entry.contains_key("statusListIndex") || entry.contains_key("id") {
            return refuse("the office assigns the entry's id and statusListIndex itself");
        }
        if let Some(other) = entry.keys().find(|k| {
            !matches!(
                k.as_str(),
                "type" | "statusPurpose" | "statusListCredential"
            )
        }) {
            return refuse(&format!("{other} is not a member of this office's entries"));
        }
        Ok(())
    }

    /// A credential of another type than the three: allowed if the configuration lists
    /// its type (or allows any type); the type's context is added when missing, and its
    /// schema named as `credentialSchema`.
    fn complete_other_type(
        &self,
        credential: &mut Value,
        types: &[String],
    ) -> Result<(), IssuerError> {
        let configured = self
            .config
            .other_types
            .iter()
            .find(|o| types.contains(&o.type_name));
        let Some(other) = configured else {
            if self.config.issue_any_type {
                return Ok(());
            }
            let shown: Vec<&str> = types
                .iter()
                .map(String::as_str)
                .filter(|t| *t != "VerifiableCredential")
                .collect();
            return Err(IssuerError::Unprocessable(format!(
                "unknown credential type {shown:?}: this office issues its healthcare types and the types its configuration lists (other_types)"
            )));
        };
        if let Some(context) = &other.context {
            let widened = match credential.get("@context") {
                Some(Value::String(only)) if only != context => Some(json!([only, context])),
                _ => None,
            };
            if let Some(widened) = widened {
                credential["@context"] = widened;
            } else if let Some(Value::Array(list)) = credential.get_mut("@context") {
                if !list.iter().any(|c| c == context.as_str()) {
                    list.push(json!(context));
                }
            }
        }
        if let Some(schema) = &other.schema {
            if credential.get("credentialSchema").is_none() {
                credential["credentialSchema"] = json!({"id": schema, "type": "JsonSchema"});
            }
        }
        Ok(())
    }

    /// Drops the expired `c_nonce`s (run every minute).
    pub(crate) async fn purge_expired(&self) {
        if let Err(e) = self.oid4vci.nonces.purge_expired().await {
            tracing::warn!(error = %e, "expired c_nonces were not purged");
        }
    }

    /// The credential issuer identifier of OpenID4VCI: the public URL without its final
    /// slash, exactly as the metadata, offers and key proofs name it.
    pub(crate) fn issuer_id(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// The type names this office issues by name (the three it is configured for, then
    /// the other types of its configuration).
    fn type_names(&self) -> Vec<String> {
        self.config
            .issues
            .iter()
            .map(|k| k.type_name().to_string())
            .chain(self.config.other_types.iter().map(|o| o.type_name.clone()))
            .collect()
    }

    fn contexts_of(&self, type_name: &str) -> Vec<String> {
        let mut contexts = vec!["https://www.w3.org/ns/credentials/v2".to_string()];
        if CredentialKind::from_type_name(type_name).is_some() {
            contexts.push("https://w3id.org/fedgate/v1".to_string());
        } else if let Some(c) = self
            .config
            .other_types
            .iter()
            .find(|o| o.type_name == type_name)
            .and_then(|o| o.context.clone())
        {
            contexts.push(c);
        }
        contexts
    }

    /// Makes an OpenID4VCI offer of `credential` (unsigned; checked again when issued) in
    /// `formats` (OpenID4VCI format names; all this office has for the type when empty).
    async fn offer(
        &self,
        credential: Value,
        options: &OfferOptions,
        replaces: Option<String>,
    ) -> Result<Value, IssuerError> {
        if !credential.is_object() {
            return Err(IssuerError::BadRequest(
                "credential must be a JSON object".into(),
            ));
        }
        let type_name = match CredentialKind::of_credential(&credential) {
            Ok(kind) if self.config.issues.contains(&kind) => kind.type_name().to_string(),
            Ok(kind) => {
                return Err(IssuerError::Unprocessable(format!(
                    "this office does not issue {kind}"
                )))
            }
            Err(federation::kind::KindError::Unknown(types)) => self
                .config
                .other_types
                .iter()
                .find(|o| types.contains(&o.type_name))
                .map(|o| o.type_name.clone())
                .ok_or_else(|| {
                    IssuerError::Unprocessable(
                        "offers are made for the types this office lists (issues, other_types)"
                            .into(),
                    )
                })?,
            Err(e) => return Err(IssuerError::Unprocessable(e.to_string())),
        };
        let available = vci::formats_for(&type_name);
        let formats = match &options.formats {
            None => available.clone(),
            Some(names) if names.is_empty() => available.clone(),
            Some(names) => {
                let mut out = Vec::new();
                for name in names {
                    let format = vci::format_of_name(name)
                        .filter(|f| available.contains(f))
                        .ok_or_else(|| {
                            IssuerError::Unprocessable(format!(
                                "format {name:?} is not offered for {type_name} (ldp_vc, jwt_vc_json, dc+sd-jwt)"
                            ))
                        })?;
                    if !out.contains(&format) {
                        out.push(format);
                    }
                }
                out
            }
        };
        let subject = credential
            .pointer("/credentialSubject/id")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(did) = &subject {
            if !(did.starts_with("did:key:") || did.starts_with("did:jwk:")) {
                return Err(IssuerError::Unprocessable(
                    "an offered credential's subject is a did:key or did:jwk (its holder proves the key), or none (the holder's key names it)"
                        .into(),
                ));
            }
        }
        let ttl = options
            .expires_in_secs
            .unwrap_or(self.config.oid4vci.offer_ttl_secs);
        if !(1..=7 * 86_400).contains(&ttl) {
            return Err(IssuerError::BadRequest(
                "expiresInSecs must be 1 to 604800".into(),
            ));
        }
        let spec = OfferSpec {
            configuration_ids: formats
                .iter()
                .map(|f| vci::configuration_id(&type_name, *f))
                .collect(),
            credential,
            subject,
            replaces,
            tx_code: options.tx_code.unwrap_or(true),
            tries: self.config.oid4vci.tx_code_tries,
            ttl: chrono::Duration::seconds(ttl as i64),
        };
        Ok(self
            .oid4vci
            .make_offer(&self.issuer_id(), spec)
            .await?
            .answer)
    }

    async fn revoke(&self, id: &str) -> Result<Record, IssuerError> {
        let rec = self.store.revoke(id, None).await?;
        self.announce_revocation(id);
        Ok(rec)
    }

    fn announce_revocation(&self, id: &str) {
        tracing::info!(credential = id, "credential revoked");
        if let Ok(mut list) = self.signed_list.lock() {
            *list = None;
        }
        if let Ok(mut list) = self.signed_token_list.lock() {
            *list = None;
        }
        // The verify endpoints of this office must see its own revocations at once.
        self.verifier.status.invalidate(&self.status_list_url());
        let event = json!({"statusListCredential": self.status_list_url()}).to_string();
        // No subscriber is fine: verifiers then rely on the list's TTL.
        let _ = self.events.send(event);
    }

    /// The signed status list, re-signed when a revocation happened or half its life passed.
    fn signed_status_list(&self) -> Result<String, IssuerError> {
        let ttl = Duration::from_secs(self.config.status_list_ttl_secs);
        let (bits, generation) = self.store.bits()?;
        if let Ok(guard) = self.signed_list.lock() {
            if let Some((g, at, jwt)) = guard.as_ref() {
                if *g == generation && at.elapsed() < ttl / 2 {
                    return Ok(jwt.clone());
                }
            }
        }
        let list = federation::status::list_credential(
            self.key.did(),
            &self.status_list_url(),
            &bits,
            chrono::Duration::seconds(self.config.status_list_ttl_secs as i64),
        )
        .map_err(|e| IssuerError::Signing(e.to_string()))?;
        let jwt = federation::status::sign_list(&list, &self.key)
            .map_err(|e| IssuerError::Signing(e.to_string()))?;
        if let Ok(mut guard) = self.signed_list.lock() {
            *guard = Some((generation, Instant::now(), jwt.clone()));
        }
        Ok(jwt)
    }
}

impl IssuerState {
    /// The same revocation bits as [`Self::signed_status_list`], as a Token Status List
    /// (`statuslist+jwt`) whose `sub` is the same URL; re-signed on the same terms.
    fn signed_token_list(&self) -> Result<String, IssuerError> {
        let ttl = Duration::from_secs(self.config.status_list_ttl_secs);
        let (bits, generation) = self.store.bits()?;
        if let Ok(guard) = self.signed_token_list.lock() {
            if let Some((g, at, jwt)) = guard.as_ref() {
                if *g == generation && at.elapsed() < ttl / 2 {
                    return Ok(jwt.clone());
                }
            }
        }
        let jwt = federation::status::sign_token_list(
            &self.key,
            &self.status_list_url(),
            &bits,
            chrono::Duration::seconds(self.config.status_list_ttl_secs as i64),
        )
        .map_err(|e| IssuerError::Signing(e.to_string()))?;
        if let Ok(mut guard) = self.signed_token_list.lock() {
            *guard = Some((generation, Instant::now(), jwt.clone()));
        }
        Ok(jwt)
    }

    /// The base of this office's vct URLs: its public URL without the trailing `/` (the
    /// one `credentials::issue` derives from the status list URL).
    fn vct_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }
}

type AppState = State<Arc<IssuerState>>;

/// Every route of the issuer, each with its OpenAPI operation: the router and the document
/// at `/openapi.json` are both built from this list.
pub fn routes() -> service::openapi::Routes<Arc<IssuerState>> {
    vec![
        routes!(did_document),
        routes!(issue),
        routes!(verify_credential),
        routes!(verify_presentation),
        routes!(joiner),
        routes!(mover),
        routes!(leaver),
        routes!(get_credential),
        routes!(by_subject),
        routes!(status_list),
        routes!(vct_metadata),
        routes!(status_events),
        routes!(inventory),
        routes!(healthz),
        routes!(readyz),
        routes!(make_offer),
        routes!(credential_issuer_metadata),
        routes!(authorization_server_metadata),
        routes!(offer_by_reference),
        routes!(token),
        routes!(nonce),
        routes!(credential),
    ]
}

fn base_document() -> utoipa::openapi::OpenApi {
    service::openapi::base(
        "fedgate issuer",
        env!("CARGO_PKG_VERSION"),
        "A credentialing office, IRB or consent registry: issues W3C Verifiable Credentials \
         (admin token), runs the privilege lifecycle (joiner, mover, leaver), publishes its \
         revocation status list and pushes revocation events. Errors are RFC 9457 \
         problem+json.",
    )
}

pub fn router(state: Arc<IssuerState>) -> Router {
    let limits = state.config.limits.clone();
    let (router, _) = service::openapi::document(base_document(), routes());
    let router = router
        .fallback(service::http::problem_fallback)
        .with_state(state);
    service::http::common_layers(router, &limits)
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database can be read and written (no failed commit stopped it).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{database}`", body = Object),
        (status = 503, description = "The database refuses writes", body = Object,
            content_type = "application/problem+json")))]
async fn readyz(State(s): AppState) -> axum::response::Response {
    service::db::readyz_response(s.store.db())
}

/// This issuer's DID document (did:web).
#[utoipa::path(get, path = "/.well-known/did.json", tag = "identity",
    responses((status = 200, description = "DID document", body = Object)))]

async fn did_document(State(s): AppState) -> Result<Json<Value>, IssuerError> {
    s.key
        .did_document()
        .map(Json)
        .map_err(|e| IssuerError::Signing(e.to_string()))
}

/// This issuer's keys: their ids, algorithms and purposes (no private material).
#[utoipa::path(get, path = "/v1/keys", tag = "identity",
    responses((status = 200, description = "Key inventory", body = Object)))]
async fn inventory(State(s): AppState) -> Json<Value> {
    Json(json!({ "keys": [s.key.info()] }))
}

/// A credential to complete, sign and record.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    /// The unsigned credential; the issuer assigns `issuer`, `id`, validity and status.
    credential: Value,
    #[serde(default)]
    options: IssueOptions,
}

/// VC API issue options.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssueOptions {
    /// The proof format (default: the configured one): `data-integrity`, `jwt` or `sd-jwt`
    /// (SD-JWT VC, `dc+sd-jwt`: the healthcare types only).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    format: Option<ProofFormat>,
    /// The credential's id, when the credential has none (a URL).
    #[serde(default)]
    credential_id: Option<String>,
    /// `DataIntegrityProof` (Data Integrity) or `vc+jwt` / `EnvelopedVerifiableCredential`
    /// (VC-JOSE).
    #[serde(default)]
    proof_type: Option<String>,
    /// The Data Integrity cryptosuite: the one of this office's key (`eddsa-rdfc-2022` for
    /// Ed25519, `ecdsa-rdfc-2019` for P-256).
    #[serde(default)]
    cryptosuite: Option<String>,
    /// Selective disclosure: refused (this office's cryptosuites disclose everything).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    mandatory_pointers: Option<Value>,
}

impl IssueOptions {
    /// The proof format these options ask for, refusing what this office cannot do.
    fn format(&self, key: &KeyPair, default: ProofFormat) -> Result<ProofFormat, IssuerError> {
        let refuse = |m: String| Err(IssuerError::Unprocessable(m));
        if self.mandatory_pointers.is_some() {
            return refuse(
                "options.mandatoryPointers is not supported: this office signs with eddsa-rdfc-2022 or ecdsa-rdfc-2019, which disclose the whole credential (no selective disclosure)"
                    .into(),
            );
        }
        let suite = match key.algorithm() {
            federation::keys::KeyAlgorithm::Ed25519 => "eddsa-rdfc-2022",
            federation::keys::KeyAlgorithm::P256 => "ecdsa-rdfc-2019",
        };
        let by_type = match self.proof_type.as_deref() {
            None => None,
            Some("DataIntegrityProof") => Some(ProofFormat::DataIntegrity),
            Some("vc+jwt" | "EnvelopedVerifiableCredential" | "JsonWebSignature") => {
                Some(ProofFormat::Jwt)
            }
            Some(other) => {
                return refuse(format!(
                    "options.proofType {other:?} is not supported (DataIntegrityProof or vc+jwt)"
                ))
            }
        };
        let by_suite = match self.cryptosuite.as_deref() {
            None => None,
            Some(s) if s == suite => Some(ProofFormat::DataIntegrity),
            Some(other) => {
                return refuse(format!(
                "options.cryptosuite {other:?} is not supported: this office's key signs {suite}"
            ))
            }
        };
        let asked: Vec<ProofFormat> = [self.format, by_type, by_suite]
            .into_iter()
            .flatten()
            .collect();
        match asked.as_slice() {
            [] => Ok(default),
            [first, rest @ ..] if rest.iter().all(|f| f == first) => Ok(*first),
            _ => {
                refuse("options.format, proofType and cryptosuite ask for different proofs".into())
            }
        }
    }
}

/// W3C VC API: issue a credential of a type this office issues: one of the three
/// healthcare types (against its schema), a type its configuration lists beyond them, or
/// any type for a sandbox office (`issue_any_type`).
#[utoipa::path(post, path = "/credentials/issue", tag = "credentials",
    request_body = IssueRequest, security(("adminToken" = [])),
    responses((status = 201, description = "`{verifiableCredential}`", body = Object),
        (status = 409, description = "A credential with this id exists", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        JsonBodyErrors, AdminErrors))]
async fn issue(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(req): StrictJson<IssueRequest>,
) -> Result<Response, IssuerError> {
    s.require_admin(&headers)?;
    let format = req.options.format(&s.key, s.config.default_format)?;
    let rec = s
        .issue_with(
            req.credential,
            format,
            None,
            req.options.credential_id.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "verifiableCredential": rec.credential })),
    )
        .into_response())
}

/// W3C VC API: verify a credential of any type (format, proof, validity, status; schema
/// and issuer trust where they apply). Access decisions take only fedgate's three types.
#[utoipa::path(post, path = "/credentials/verify", tag = "credentials",
    request_body = service::vcapi::VerifyCredentialRequest,
    responses((status = 200, description = "`{checks, warnings, errors, credential}`", body = Object),
        (status = 422, description = "Verification failed: `check` names the check", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        JsonBodyErrors))]
async fn verify_credential(
    State(s): AppState,
    StrictJson(req): StrictJson<service::vcapi::VerifyCredentialRequest>,
) -> Result<Json<Value>, service::http::Problem> {
    service::vcapi::verify_credential(&s.verifier, req).await
}

/// W3C VC API: verify a presentation (bound to `options.challenge` and `options.domain`
/// when given) and its credentials, of any type.
#[utoipa::path(post, path = "/presentations/verify", tag = "credentials",
    request_body = service::vcapi::VerifyPresentationRequest,
    responses((status = 200, description = "`{checks, warnings, errors, presentation}`", body = Object),
        (status = 422, description = "Verification failed: `check` names the check, `credential` the position", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        JsonBodyErrors))]
async fn verify_presentation(
    State(s): AppState,
    StrictJson(req): StrictJson<service::vcapi::VerifyPresentationRequest>,
) -> Result<Json<Value>, service::http::Problem> {
    service::vcapi::verify_presentation(&s.verifier, req).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinerRequest {
    /// The clinician privilege credential's subject.
    #[schema(value_type = Object)]
    subject: PrivilegeSubject,
    /// RFC 3339 date-time; none: no expiry.
    #[serde(default)]
    valid_until: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    format: Option<ProofFormat>,
    /// Answer with an OpenID4VCI offer of the credential instead of the credential.
    #[serde(default)]
    offer: Option<OfferOptions>,
}

/// An OpenID4VCI offer's options.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OfferOptions {
    /// OpenID4VCI formats offered (`ldp_vc`, `jwt_vc_json`, `dc+sd-jwt`); default: every
    /// format this office has for the type (the holder's wallet picks one).
    #[serde(default)]
    formats: Option<Vec<String>>,
    /// Require a transaction code (default true): six digits, answered once, to be
    /// given to the holder apart from the offer.
    #[serde(default)]
    tx_code: Option<bool>,
    /// Seconds the offer can be redeemed (default `[oid4vci] offer_ttl_secs`, 600).
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

impl OfferOptions {
    /// The options, with `format` (the lifecycle body's) as the one format offered when
    /// the options name none.
    fn with_format(mut self, format: Option<ProofFormat>) -> Self {
        if self.formats.is_none() {
            self.formats = format.map(|f| vec![vci::format_name(f).to_string()]);
        }
        self
    }
}

fn offered(answer: Value) -> Response {
    (StatusCode::CREATED, Json(answer)).into_response()
}

fn privilege_credential(
    s: &IssuerState,
    subject: &PrivilegeSubject,
    valid_until: Option<&str>,
) -> Result<Value, IssuerError> {
    let until = match valid_until {
        Some(t) => Some(federation::time::parse(t).ok_or_else(|| {
            IssuerError::BadRequest("validUntil is not an RFC 3339 date-time".into())
        })?),
        None => None,
    };
    let subject =
        serde_json::to_value(subject).map_err(|e| IssuerError::BadRequest(e.to_string()))?;
    let mut vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        s.key.did(),
        subject,
        Utc::now(),
        until,
        None,
    );
    if until.is_none() {
        if let Some(obj) = vc.as_object_mut() {
            obj.remove("validUntil");
        }
    }
    Ok(vc)
}

fn issued(rec: &Record) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({
            "id": rec.id,
            "replaces": rec.replaces,
            "statusListIndex": rec.status_index,
            "verifiableCredential": rec.credential,
        })),
    )
        .into_response()
}

/// Joiner: a new privilege credential, or (with `offer`) an OpenID4VCI offer of it.
#[utoipa::path(post, path = "/v1/privileges", tag = "lifecycle",
    request_body = JoinerRequest, security(("adminToken" = [])),
    responses((status = 201, description = "`{id, replaces, statusListIndex, verifiableCredential}`, or with `offer` the offer as `POST /v1/oid4vci/offers` answers it", body = Object),
        JsonBodyErrors, AdminErrors))]
async fn joiner(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(req): StrictJson<JoinerRequest>,
) -> Result<Response, IssuerError> {
    s.require_admin(&headers)?;
    let vc = privilege_credential(&s, &req.subject, req.valid_until.as_deref())?;
    if let Some(options) = req.offer {
        let options = options.with_format(req.format);
        return Ok(offered(s.offer(vc, &options, None).await?));
    }
    let rec = s
        .issue(vc, req.format.unwrap_or(s.config.default_format), None)
        .await?;
    Ok(issued(&rec))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MoverRequest {
    /// The new privileges (replacing the old ones).
    #[schema(value_type = Vec<Object>)]
    privileges: Vec<Privilege>,
    #[serde(default)]
    organization: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    valid_until: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    format: Option<ProofFormat>,
    /// Answer with an OpenID4VCI offer of the new credential; the old one stays valid
    /// until the holder's wallet receives the new one, and is revoked in the same write.
    #[serde(default)]
    offer: Option<OfferOptions>,
}

/// Mover: re-issue with changed privileges; the old credential is revoked atomically.
/// With `offer`, the new credential is offered by OpenID4VCI, and the old one is revoked
/// when the holder's wallet receives the new one (in the same write).
#[utoipa::path(post, path = "/v1/privileges/{id}/move", tag = "lifecycle",
    params(("id" = String, Path, description = "The privilege credential's id")),
    request_body = MoverRequest, security(("adminToken" = [])),
    responses((status = 201, description = "`{id, replaces, statusListIndex, verifiableCredential}`, or with `offer` the offer (and `replaces`)", body = Object),
        (status = 409, description = "Already revoked", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        JsonBodyErrors, AdminErrors, NotFound))]
async fn mover(
    State(s): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictJson(req): StrictJson<MoverRequest>,
) -> Result<Response, IssuerError> {
    s.require_admin(&headers)?;
    params::credential_id("id", &id)?;
    let old = s.store.get(&id)?;
    if old.kind != Some(CredentialKind::ClinicianPrivilege) {
        return Err(IssuerError::Unprocessable(format!(
            "{id} is not a privilege credential"
        )));
    }
    if old.revoked_at.is_some() {
        return Err(IssuerError::Conflict(format!("{id} is already revoked")));
    }
    let old_vc = match &old.credential {
        Value::String(sd_jwt) if old.format == ProofFormat::SdJwt => {
            federation::sdjwt::revealed_claims(sd_jwt)
                .map(|claims| {
                    federation::sdjwt::credential_of_claims(
                        CredentialKind::ClinicianPrivilege,
                        &claims,
                    )
                })
                .map_err(|e| IssuerError::Storage(e.to_string()))?
        }
        Value::String(jwt) => federation::jose::decode(jwt)
            .map(|d| d.payload)
            .map_err(|e| IssuerError::Storage(e.to_string()))?,
        other => other.clone(),
    };
    let mut subject: PrivilegeSubject = serde_json::from_value(old_vc["credentialSubject"].clone())
        .map_err(|e| IssuerError::Storage(e.to_string()))?;
    subject.privileges = req.privileges;
    if let Some(org) = req.organization {
        subject.organization = org;
    }
    if let Some(role) = req.role {
        subject.role = role;
    }
    let vc = privilege_credential(&s, &subject, req.valid_until.as_deref())?;
    if let Some(options) = req.offer {
        let options = options.with_format(req.format);
        let mut answer = s.offer(vc, &options, Some(id.clone())).await?;
        answer["replaces"] = json!(id);
        return Ok(offered(answer));
    }
    let rec = s
        .issue(vc, req.format.unwrap_or(old.format), Some(&id))
        .await?;
    Ok(issued(&rec))
}

/// Leaver: revoke.
#[utoipa::path(post, path = "/v1/credentials/{id}/revoke", tag = "lifecycle",
    params(("id" = String, Path, description = "The credential's id")),
    security(("adminToken" = [])),
    responses((status = 200, description = "`{id, revokedAt, statusListCredential, statusListIndex}`", body = Object),
        BadParameter, AdminErrors, NotFound))]
async fn leaver(
    State(s): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, IssuerError> {
    s.require_admin(&headers)?;
    params::credential_id("id", &id)?;
    let rec = s.revoke(&id).await?;
    Ok(Json(json!({
        "id": rec.id,
        "revokedAt": rec.revoked_at,
        "statusListCredential": s.status_list_url(),
        "statusListIndex": rec.status_index,
    })))
}

/// One issued credential and its record (status index, revocation, replacement).
#[utoipa::path(get, path = "/v1/credentials/{id}", tag = "lifecycle",
    params(("id" = String, Path, description = "The credential's id")),
    security(("adminToken" = [])),
    responses((status = 200, description = "The record", body = Object),
        BadParameter, AdminErrors, NotFound))]
async fn get_credential(
    State(s): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Record>, IssuerError> {
    s.require_admin(&headers)?;
    params::credential_id("id", &id)?;
    Ok(Json(s.store.get(&id)?))
}

/// The credentials issued to a subject. A subject this office never issued to is a 404:
/// an empty list would read as a subject whose credentials are all gone.
#[utoipa::path(get, path = "/v1/subjects/{did}/credentials", tag = "lifecycle",
    params(("did" = String, Path, description = "The subject's DID")),
    security(("adminToken" = [])),
    responses((status = 200, description = "`{credentials}`", body = Object),
        BadParameter, AdminErrors, NotFound))]
async fn by_subject(
    State(s): AppState,
    headers: HeaderMap,
    Path(did): Path<String>,
) -> Result<Json<Value>, IssuerError> {
    s.require_admin(&headers)?;
    params::subject("did", &did)?;
    let credentials = s.store.by_subject(&did)?;
    if credentials.is_empty() {
        return Err(IssuerError::NotFound("credentials of this subject".into()));
    }
    Ok(Json(json!({ "credentials": credentials })))
}

/// The signed revocation status list; served at `/` + [`STATUS_LIST_PATH`]. A Bitstring
/// Status List credential (`vc+jwt`, the list Data Integrity and VC-JOSE credentials name),
/// or, to a client whose `Accept` names `application/statuslist+jwt`, the same bits as a
/// Token Status List (draft-ietf-oauth-status-list; the `status.status_list.uri` of this
/// office's SD-JWT VCs, with the same index).
#[utoipa::path(get, path = "/status/revocation", tag = "status",
    responses((status = 200, description = "The Bitstring Status List credential (`vc+jwt`), or the Token Status List (`statuslist+jwt`) to `Accept: application/statuslist+jwt`",
        content((String = "application/vc+jwt"), (String = "application/statuslist+jwt")))))]
async fn status_list(State(s): AppState, headers: HeaderMap) -> Result<Response, IssuerError> {
    let wants_token_list = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(federation::status::TOKEN_LIST_MEDIA_TYPE));
    if wants_token_list {
        let jwt = s.signed_token_list()?;
        return Ok((
            [(
                header::CONTENT_TYPE,
                federation::status::TOKEN_LIST_MEDIA_TYPE,
            )],
            jwt,
        )
            .into_response());
    }
    let jwt = s.signed_status_list()?;
    Ok(([(header::CONTENT_TYPE, "application/vc+jwt")], jwt).into_response())
}

/// SD-JWT VC type metadata of a credential type this office issues: its `vct` is this URL.
#[utoipa::path(get, path = "/vct/{type_name}", tag = "credentials",
    params(("type_name" = String, Path, description = "The credential type, e.g. ClinicianPrivilegeCredential")),
    responses((status = 200, description = "`{vct, name, description, display, claims}` (SD-JWT VC type metadata)", body = Object),
        NotFound))]
async fn vct_metadata(
    State(s): AppState,
    Path(type_name): Path<String>,
) -> Result<Json<Value>, IssuerError> {
    let kind = CredentialKind::from_type_name(&type_name)
        .filter(|k| s.config.issues.contains(k))
        .ok_or_else(|| IssuerError::NotFound("credential type".into()))?;
    Ok(Json(federation::sdjwt::type_metadata(&s.vct_base(), kind)))
}

/// Server-sent revocation events: `{"statusListCredential": url}` per revocation.
#[utoipa::path(get, path = "/v1/status/events", tag = "status",
    responses((status = 200, description = "Server-sent events named `revocation`", body = String,
        content_type = "text/event-stream")))]
async fn status_events(
    State(s): AppState,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    use futures::StreamExt;
    let rx = s.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|msg| async move {
        // A lagging subscriber gets a generic event: it must drop its cached lists.
        let data = msg.unwrap_or_else(|_| json!({"statusListCredential": null}).to_string());
        Some(Ok(Event::default().event("revocation").data(data)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// An OpenID4VCI offer of a credential body (any type this office issues).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OfferRequest {
    /// The unsigned credential, as for `/credentials/issue`. Without
    /// `credentialSubject.id`, the holder's key proof names the subject (its did:key or
    /// did:jwk); with one (a did:key or did:jwk), only that DID's key can receive it.
    credential: Value,
    #[serde(flatten)]
    options: OfferOptions,
}

/// OpenID4VCI: offer a credential by pre-authorized code. The answer holds the offer by
/// value (`credentialOfferUrl`, also as the QR codes `qrPng`, base64, and `qrSvg`) and by
/// reference (`credentialOfferUriUrl`), and the transaction code (`txCode`), shown only
/// here. The offer can be redeemed once, before `expiresAt`.
#[utoipa::path(post, path = "/v1/oid4vci/offers", tag = "openid4vci",
    request_body = OfferRequest, security(("adminToken" = [])),
    responses((status = 201, description = "`{offerId, credentialOffer, credentialOfferUrl, credentialOfferUri, credentialOfferUriUrl, txCode, expiresAt, qrPng, qrSvg}`", body = Object),
        JsonBodyErrors, AdminErrors))]
async fn make_offer(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(req): StrictJson<OfferRequest>,
) -> Result<Response, IssuerError> {
    s.require_admin(&headers)?;
    Ok(offered(s.offer(req.credential, &req.options, None).await?))
}

/// OpenID4VCI 1.0 §12.2: the credential issuer's metadata.
#[utoipa::path(get, path = "/.well-known/openid-credential-issuer", tag = "openid4vci",
    responses((status = 200, description = "Credential issuer metadata", body = Object)))]
async fn credential_issuer_metadata(State(s): AppState) -> Json<Value> {
    let configurations = vci::configurations(&s.type_names());
    Json(vci::issuer_metadata(
        &s.issuer_id(),
        s.key.did(),
        s.key.algorithm(),
        &configurations,
        |t| s.contexts_of(t),
    ))
}

/// RFC 8414: the authorization server metadata (this issuer is its own authorization
/// server, for the pre-authorized code grant only).
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "openid4vci",
    responses((status = 200, description = "Authorization server metadata", body = Object)))]
async fn authorization_server_metadata(State(s): AppState) -> Json<Value> {
    Json(vci::authorization_server_metadata(&s.issuer_id()))
}

/// OpenID4VCI 1.0 §4.1.3: a credential offer by reference (`credential_offer_uri`),
/// served until its code is redeemed or it expires.
#[utoipa::path(get, path = "/oid4vci/offers/{id}", tag = "openid4vci",
    params(("id" = String, Path, description = "The offer's reference id")),
    responses((status = 200, description = "The credential offer object", body = Object), NotFound))]
async fn offer_by_reference(
    State(s): AppState,
    Path(id): Path<String>,
) -> Result<Response, IssuerError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IssuerError::NotFound("offer".into()));
    }
    let offer = s
        .oid4vci
        .offers
        .by_reference(&id)?
        .ok_or_else(|| IssuerError::NotFound("offer".into()))?;
    Ok(no_store(Json(offer).into_response()))
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The media type of a request, without parameters, in lower case.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// OAuth 2.0 token endpoint (RFC 6749 §3.2; OpenID4VCI 1.0 §6): the pre-authorized code
/// (and transaction code) for an access token. Form body; errors as `{error,
/// error_description}`: `invalid_request` (a parameter missing, repeated, or a `tx_code`
/// missing or unexpected), `invalid_grant` (an unknown, used, expired or void code, or a
/// wrong `tx_code`: after `[oid4vci] tx_code_tries` wrong ones the offer is void),
/// `unsupported_grant_type`.
#[utoipa::path(post, path = "/oid4vci/token", tag = "openid4vci",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`grant_type=urn:ietf:params:oauth:grant-type:pre-authorized_code&pre-authorized_code=...&tx_code=...`"),
    responses((status = 200, description = "`{access_token, token_type, expires_in}`", body = Object),
        (status = 400, description = "`{error, error_description}`", body = Object)))]
async fn token(
    State(s): AppState,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, IssuerError> {
    let invalid = |m: String| ProtocolError::bad("invalid_request", m);
    if media_type(&headers) != "application/x-www-form-urlencoded" {
        return Err(invalid("the body must be application/x-www-form-urlencoded".into()).into());
    }
    let mut form: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            return Err(invalid(format!("{k} is repeated")).into());
        }
    }
    let grant = form
        .get("grant_type")
        .ok_or_else(|| invalid("grant_type is missing".into()))?;
    if grant != vci::PRE_AUTHORIZED_GRANT {
        return Err(ProtocolError::bad(
            "unsupported_grant_type",
            "this issuer grants the pre-authorized code only",
        )
        .into());
    }
    let code = form
        .get("pre-authorized_code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid("pre-authorized_code is missing".into()))?;
    let tx_code = form.get("tx_code").map(String::as_str);
    let ttl = chrono::Duration::seconds(s.config.oid4vci.token_ttl_secs as i64);
    let answer = s.oid4vci.token(code, tx_code, ttl).await?;
    Ok(no_store(Json(answer).into_response()))
}

/// OpenID4VCI 1.0 §7: a fresh `c_nonce` for a key proof; single use, short-lived.
#[utoipa::path(post, path = "/oid4vci/nonce", tag = "openid4vci",
    responses((status = 200, description = "`{c_nonce}` (Cache-Control: no-store)", body = Object)))]
async fn nonce(State(s): AppState) -> Result<Response, IssuerError> {
    let (c_nonce, _) = s.oid4vci.nonces.issue();
    Ok(no_store(
        Json(json!({ "c_nonce": c_nonce })).into_response(),
    ))
}

/// The parts of a credential request (OpenID4VCI 1.0 §8.2) this issuer reads.
struct CredentialRequest {
    configuration_id: String,
    proof: String,
}

impl CredentialRequest {
    fn read(headers: &HeaderMap, body: &[u8]) -> Result<Self, ProtocolError> {
        let invalid = |m: &str| ProtocolError::bad("invalid_credential_request", m);
        if media_type(headers) != "application/json" {
            return Err(invalid("the body must be application/json"));
        }
        let body = federation::json::parse_strict(body)
            .map_err(|e| invalid(&format!("the body is not strict JSON: {}", e.summary())))?;
        let body = body
            .as_object()
            .ok_or_else(|| invalid("the body is not a JSON object"))?;
        if body.contains_key("credential_identifier") {
            return Err(ProtocolError::bad(
                "unknown_credential_identifier",
                "this issuer hands out no credential identifiers: name a credential_configuration_id",
            ));
        }
        if body.contains_key("proof") {
            return Err(invalid("proof is a draft parameter: send proofs"));
        }
        if body.contains_key("credential_response_encryption") {
            return Err(invalid("credential response encryption is not supported"));
        }
        let configuration_id = body
            .get("credential_configuration_id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("credential_configuration_id is missing"))?
            .to_string();
        let proofs = body
            .get("proofs")
            .ok_or_else(|| vci::invalid_proof("proofs is missing"))?
            .as_object()
            .ok_or_else(|| vci::invalid_proof("proofs is not an object"))?;
        if let Some(other) = proofs.keys().find(|k| k.as_str() != "jwt") {
            return Err(vci::invalid_proof(&format!(
                "proof type {other:?} is not supported (jwt)"
            )));
        }
        let proof = match proofs
            .get("jwt")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([Value::String(jwt)]) => jwt.clone(),
            Some([_, _, ..]) => {
                return Err(vci::invalid_proof(
                    "batch issuance is not supported: send one key proof",
                ))
            }
            _ => return Err(vci::invalid_proof("proofs.jwt must be an array of one JWT")),
        };
        Ok(CredentialRequest {
            configuration_id,
            proof,
        })
    }
}

/// The bearer access token of a request.
fn bearer(headers: &HeaderMap) -> Result<String, ProtocolError> {
    let unauthorized = |m: &str| ProtocolError::new(StatusCode::UNAUTHORIZED, "invalid_token", m);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("an access token from the token endpoint is required"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("Authorization: Bearer <access token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized("Authorization: Bearer <access token>"));
    }
    Ok(token.trim().to_string())
}

/// OpenID4VCI 1.0 §8: the credential, for an access token and a key proof. The access
/// token is spent by the credential it is issued for (one credential per offer). Errors as
/// `{error, error_description}`: 401 `invalid_token`; 400 `invalid_credential_request`,
/// `unknown_credential_configuration`, `unknown_credential_identifier`, `invalid_proof`
/// (typ, alg, key, signature, aud, iat, a missing nonce), `invalid_nonce` (unknown, used
/// or expired), `credential_request_denied`.
#[utoipa::path(post, path = "/oid4vci/credential", tag = "openid4vci",
    request_body(content = Object, description = "`{credential_configuration_id, proofs: {jwt: [key proof]}}`; header `Authorization: Bearer <access token>`"),
    responses((status = 200, description = "`{credentials: [{credential}]}`", body = Object),
        (status = 400, description = "`{error, error_description}`", body = Object),
        (status = 401, description = "`{error: invalid_token}`", body = Object)))]
async fn credential(
    State(s): AppState,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, IssuerError> {
    let token = bearer(&headers)?;
    let Some(granted) = s.oid4vci.offers.token(&token)? else {
        return Err(ProtocolError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the access token is unknown, spent or expired",
        )
        .into());
    };
    let req = CredentialRequest::read(&headers, &body)?;
    let configuration = vci::configurations(&s.type_names())
        .into_iter()
        .find(|c| c.id == req.configuration_id)
        .ok_or_else(|| {
            ProtocolError::bad(
                "unknown_credential_configuration",
                "no such credential configuration (see /.well-known/openid-credential-issuer)",
            )
        })?;
    if !granted.offer.configuration_ids.contains(&configuration.id) {
        return Err(ProtocolError::bad(
            "credential_request_denied",
            "this access token's offer is not for that credential configuration",
        )
        .into());
    }
    let holder = s.oid4vci.check_proof(&req.proof, &s.issuer_id()).await?;
    if let Some(subject) = &granted.offer.subject {
        if subject != &holder {
            return Err(vci::invalid_proof(
                "the key proof is not by the key of the subject this credential was offered to",
            )
            .into());
        }
    }
    // Spent before issuing: of two requests with one token, one alone gets a credential.
    let Some(spent) = s.oid4vci.offers.spend(&token).await? else {
        return Err(ProtocolError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the access token is unknown, spent or expired",
        )
        .into());
    };
    let mut vc = spent.offer.credential.clone();
    if vc.pointer("/credentialSubject/id").is_none() {
        if let Some(subject) = vc
            .get_mut("credentialSubject")
            .and_then(Value::as_object_mut)
        {
            subject.insert("id".into(), json!(holder));
        }
    }
    let issued = s
        .issue(vc, configuration.format, spent.offer.replaces.as_deref())
        .await;
    match issued {
        Ok(rec) => {
            tracing::info!(offer = %spent.offer.id, credential = %rec.id, "credential issued by OpenID4VCI");
            Ok(no_store(
                Json(json!({"credentials": [{"credential": rec.credential}]})).into_response(),
            ))
        }
        Err(e) => {
            // Nothing was issued: the holder may try again while the token lasts.
            if let Err(restore) = s.oid4vci.offers.restore(&token, &spent).await {
                tracing::warn!(error = %restore, "a spent access token was not restored");
            }
            Err(match e {
                IssuerError::Conflict(m)
                | IssuerError::Unprocessable(m)
                | IssuerError::BadRequest(m) => ProtocolError::bad("credential_request_denied", m),
                other => ProtocolError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    other.to_string(),
                ),
            }
            .into())
        }
    }
}
