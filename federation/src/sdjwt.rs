//! SD-JWT VC (RFC 9901 SD-JWT, IETF SD-JWT VC, media type `dc+sd-jwt`): fedgate's three
//! credential types as selectively disclosable JWTs.
//!
//! The shape (docs/sd-jwt-vc.md has the whole of it):
//! - header `typ: dc+sd-jwt`, `alg` EdDSA or ES256, `kid` the office's verification method;
//! - always visible: `iss` (the office's DID), `sub` (`credentialSubject.id`), `jti` (the
//!   credential's id), `iat`, `nbf`/`exp` (validFrom/validUntil), `vct`, `status`, `cnf`,
//!   and for a study its `sponsor` (the holder the key is bound to);
//! - every other `credentialSubject` claim is a disclosure, and so is each element of an
//!   array claim (each privilege, each patient identifier); decoys are added to every
//!   `_sd` array, which is sorted, so that neither the number nor the order of claims shows;
//! - `cnf.jwk` is the holder's key: the key of the subject's DID (the sponsor's for a study),
//!   a did:key or did:jwk, decoded locally.
//!
//! Concealing is ssi's (`ssi::claims::sd_jwt`); signing uses this crate's JOSE so that the
//! header carries `typ` and `kid`. Revealing is written here, because ssi's accepts what
//! RFC 9901 says to reject (a disclosure twice, a disclosure named `_sd`), and because the
//! verifier needs to know which claim each disclosure revealed. The key binding JWT is
//! written and checked here too: ssi's carries a fractional `iat` and `null` times, and its
//! verifier does not check it at all.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::keys::KeyPair;
use crate::kind::CredentialKind;

/// The media type (and JWS `typ`) of an SD-JWT VC.
pub const MEDIA_TYPE: &str = "dc+sd-jwt";
/// The JWS `typ` of a key binding JWT.
pub const KB_TYP: &str = "kb+jwt";
/// The one digest algorithm fedgate makes and accepts.
pub const SD_ALG: &str = "sha-256";
/// How old a key binding JWT may be (`iat`), before the clock skew is added.
pub const KB_MAX_AGE_SECS: i64 = 300;

/// A path to a claim, as DCQL writes it: each element a claim name (string), an array
/// index (non-negative integer) or every element of an array (`null`).
pub type ClaimPath = Vec<Value>;

/// Largest SD-JWT (with its disclosures and key binding) read.
pub const MAX_SD_JWT_BYTES: usize = 256 * 1024;
/// Most disclosures one SD-JWT may carry.
const MAX_DISCLOSURES: usize = 512;
/// Decoys added to each `_sd` array (at least one, at most this many).
const MAX_DECOYS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdJwtError {
    /// Not an SD-JWT (framing, base64url, JSON).
    #[error("not an SD-JWT: {0}")]
    Malformed(String),
    /// A disclosure that RFC 9901 says to reject: its digest is not in the SD-JWT, it is
    /// there twice, it is malformed, it names `_sd` or `...`, or `_sd_alg` is not sha-256.
    #[error("disclosure refused: {0}")]
    Disclosure(String),
    /// A claim path names nothing in the credential (or is not a claim path).
    #[error("claim path {0} is not in the credential")]
    NoSuchClaim(String),
    /// What cannot be issued as an SD-JWT VC (no holder key, no vct base).
    #[error("cannot issue as an SD-JWT VC: {0}")]
    Issue(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The vct of a fedgate type issued by the office whose public base URL is `base`
/// (e.g. "https://office.example.org"): `{base}/vct/{TypeName}`.
pub fn vct(base: &str, kind: CredentialKind) -> String {
    format!("{}/vct/{}", base.trim_end_matches('/'), kind.type_name())
}

/// The kind a vct names (its last path segment after "/vct/"), if any.
pub fn kind_of_vct(vct: &str) -> Option<CredentialKind> {
    let (_, name) = vct.rsplit_once("/vct/")?;
    CredentialKind::from_type_name(name)
}

/// The base of the vct URLs of an office (what [`vct`] takes), from a vct.
pub fn vct_base(vct: &str) -> Option<&str> {
    vct.rsplit_once("/vct/").map(|(base, _)| base)
}

fn b64_json(v: &Value) -> Result<String, SdJwtError> {
    serde_json::to_vec(v)
        .map(|b| crate::b64::encode(&b))
        .map_err(|e| SdJwtError::Sign(e.to_string()))
}

/// The digest of a disclosure as it travels (RFC 9901 §4.2.3): base64url of the SHA-256 of
/// its ASCII form.
pub fn digest(disclosure: &str) -> String {
    crate::b64::encode(&Sha256::digest(disclosure.as_bytes()))
}

/// The `sd_hash` of a presentation (RFC 9901 §4.3.1): the digest of everything up to and
/// including the last `~` before the key binding JWT.
pub fn sd_hash(presented: &str) -> String {
    digest(presented)
}

/// Which claims of a credential subject are disclosures, and which key binds it.
fn holder_of(kind: CredentialKind, subject: &Map<String, Value>) -> Option<String> {
    let field = match kind {
        CredentialKind::ResearchStudy => "sponsor",
        _ => "id",
    };
    subject
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The claims of a subject that are never disclosures: `id` (it is `sub`) and, for a
/// study, `sponsor` (the holder the key is bound to, which holder binding reads).
fn always_visible(kind: CredentialKind, name: &str) -> bool {
    name == "id" || (kind == CredentialKind::ResearchStudy && name == "sponsor")
}

/// Issues a fedgate credential (already checked against its type and schema) as an
/// SD-JWT VC signed by `key`, with vct URLs under `vct_base`; the status entry, if any,
/// becomes a Token Status List reference with the same URL and index.
pub fn issue(credential: &Value, key: &KeyPair, vct_base: &str) -> Result<String, SdJwtError> {
    let bad = |m: &str| SdJwtError::Issue(m.to_string());
    let kind = CredentialKind::of_credential(credential).map_err(|e| bad(&e.to_string()))?;
    let subject = credential
        .get("credentialSubject")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("credentialSubject must be one object"))?;
    let holder =
        holder_of(kind, subject).ok_or_else(|| bad("the credential names no holder DID"))?;
    let holder_key = crate::did::local_public_key(&holder).map_err(|e| {
        SdJwtError::Issue(format!(
            "the holder key comes from the holder's DID, which must be a did:key or did:jwk: {e}"
        ))
    })?;
    let issuer = credential
        .get("issuer")
        .and_then(|i| i.as_str().or_else(|| i.get("id").and_then(Value::as_str)))
        .ok_or_else(|| bad("no issuer"))?;
    let seconds = |field: &str| -> Result<Option<i64>, SdJwtError> {
        match credential.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(crate::time::parse)
                .map(|t| Some(t.timestamp()))
                .ok_or_else(|| SdJwtError::Issue(format!("{field} is not a date-time"))),
        }
    };
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(issuer));
    if let Some(sub) = subject.get("id") {
        claims.insert("sub".into(), sub.clone());
    }
    if let Some(id) = credential.get("id") {
        claims.insert("jti".into(), id.clone());
    }
    claims.insert("iat".into(), json!(chrono::Utc::now().timestamp()));
    if let Some(nbf) = seconds("validFrom")? {
        claims.insert("nbf".into(), json!(nbf));
    }
    if let Some(exp) = seconds("validUntil")? {
        claims.insert("exp".into(), json!(exp));
    }
    claims.insert("vct".into(), json!(vct(vct_base, kind)));
    claims.insert("cnf".into(), json!({ "jwk": holder_key.to_public() }));
    // `kid` and `alg` would only repeat what the key is; RFC 7800 needs the key alone.
    if let Some(jwk) = claims.get_mut("cnf").and_then(|c| c.get_mut("jwk")) {
        if let Some(o) = jwk.as_object_mut() {
            o.remove("kid");
            o.remove("alg");
        }
    }
    if let Some(status) = credential.get("credentialStatus") {
        let uri = status.get("statusListCredential").and_then(Value::as_str);
        let idx = status
            .get("statusListIndex")
            .and_then(Value::as_str)
            .and_then(|i| i.parse::<u64>().ok());
        match (uri, idx) {
            (Some(uri), Some(idx)) => {
                claims.insert(
                    "status".into(),
                    json!({ "status_list": { "idx": idx, "uri": uri } }),
                );
            }
            _ => return Err(bad("credentialStatus is not a status list entry")),
        }
    }
    let mut pointers = Vec::new();
    for (name, value) in subject {
        if always_visible(kind, name) {
            if name != "id" {
                claims.insert(name.clone(), value.clone());
            }
            continue;
        }
        if claims.contains_key(name) {
            return Err(SdJwtError::Issue(format!(
                "the subject claim {name:?} collides with a registered claim"
            )));
        }
        claims.insert(name.clone(), value.clone());
        let mut pointer = ssi::claims::sd_jwt::JsonPointerBuf::default();
        pointer.push(name);
        if let Value::Array(items) = value {
            for i in 0..items.len() {
                let mut element = pointer.clone();
                element.push_index(i);
                pointers.push(element);
            }
        }
        pointers.push(pointer);
    }
    let (payload, disclosures) = ssi::claims::sd_jwt::SdJwtPayload::conceal(
        &Value::Object(claims),
        ssi::claims::sd_jwt::SdAlg::Sha256,
        &pointers,
    )
    .map_err(|e| SdJwtError::Sign(e.to_string()))?;
    let mut payload = Value::Object(payload.claims);
    add_decoys_and_sort(&mut payload);
    payload["_sd_alg"] = json!(SD_ALG);
    let jws = crate::jose::sign(&payload, key, MEDIA_TYPE)
        .map_err(|e| SdJwtError::Sign(e.to_string()))?;
    let mut out = jws;
    out.push('~');
    for d in &disclosures {
        out.push_str(d.encoded.as_str());
        out.push('~');
    }
    Ok(out)
}

/// Adds decoy digests to every `_sd` array and sorts it (RFC 9901 §4.2.4.1, §4.2.5): the
/// order of the digests would otherwise give away the order of the claims, and their
/// number how many claims there are.
fn add_decoys_and_sort(v: &mut Value) {
    use rand::Rng as _;
    match v {
        Value::Object(o) => {
            for child in o.values_mut() {
                add_decoys_and_sort(child);
            }
            if let Some(Value::Array(sd)) = o.get_mut("_sd") {
                let mut rng = rand::thread_rng();
                for _ in 0..rng.gen_range(1..=MAX_DECOYS) {
                    let mut salt = [0u8; 16];
                    rng.fill(&mut salt);
                    sd.push(json!(digest(&crate::b64::encode(&salt))));
                }
                sd.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
        Value::Array(a) => a.iter_mut().for_each(add_decoys_and_sort),
        _ => {}
    }
}

/// An SD-JWT split at its `~`s: the issuer-signed JWT, the disclosures, the key binding
/// JWT (None when the SD-JWT ends with `~`).
#[derive(Debug, Clone)]
pub(crate) struct Parts<'a> {
    pub(crate) jwt: &'a str,
    pub(crate) disclosures: Vec<&'a str>,
    pub(crate) kb: Option<&'a str>,
    /// Everything up to and including the last `~` (what `sd_hash` covers).
    pub(crate) presented: &'a str,
}

pub(crate) fn split(sd_jwt: &str) -> Result<Parts<'_>, SdJwtError> {
    if sd_jwt.len() > MAX_SD_JWT_BYTES {
        return Err(SdJwtError::Malformed(
            "larger than the accepted size".into(),
        ));
    }
    let last_tilde = sd_jwt
        .rfind('~')
        .ok_or_else(|| SdJwtError::Malformed("no `~` after the issuer-signed JWT".into()))?;
    let (presented, kb) = sd_jwt.split_at(last_tilde + 1);
    let mut parts = presented[..last_tilde].split('~');
    let jwt = parts.next().unwrap_or_default();
    if jwt.is_empty() {
        return Err(SdJwtError::Malformed("no issuer-signed JWT".into()));
    }
    let disclosures: Vec<&str> = parts.collect();
    if disclosures.iter().any(|d| d.is_empty()) {
        return Err(SdJwtError::Malformed("an empty disclosure".into()));
    }
    if disclosures.len() > MAX_DISCLOSURES {
        return Err(SdJwtError::Disclosure(format!(
            "more than {MAX_DISCLOSURES} disclosures"
        )));
    }
    Ok(Parts {
        jwt,
        disclosures,
        kb: (!kb.is_empty()).then_some(kb),
        presented,
    })
}

/// One disclosure, decoded.
#[derive(Debug, Clone)]
struct Disclosure {
    /// The claim name of an object property; None for an array element.
    name: Option<String>,
    value: Value,
}

fn decode_disclosure(encoded: &str) -> Result<Disclosure, SdJwtError> {
    let bad = |m: &str| SdJwtError::Disclosure(m.to_string());
    let bytes = crate::b64::decode(encoded).map_err(|_| bad("a disclosure is not base64url"))?;
    let json = crate::json::parse_strict(&bytes).map_err(|e| {
        SdJwtError::Disclosure(format!("a disclosure is not strict JSON: {}", e.summary()))
    })?;
    let Value::Array(items) = json else {
        return Err(bad("a disclosure is not a JSON array"));
    };
    let mut items = items.into_iter();
    let (salt, second, third, rest) = (items.next(), items.next(), items.next(), items.next());
    if rest.is_some() || !salt.as_ref().is_some_and(Value::is_string) {
        return Err(bad("a disclosure is [salt, name, value] or [salt, value]"));
    }
    match (second, third) {
        (Some(Value::String(name)), Some(value)) => {
            if name == "_sd" || name == "..." {
                return Err(SdJwtError::Disclosure(format!(
                    "a disclosure may not name the claim {name:?}"
                )));
            }
            Ok(Disclosure {
                name: Some(name),
                value,
            })
        }
        (Some(_), Some(_)) => Err(bad("a disclosure's claim name is not a string")),
        (Some(value), None) => Ok(Disclosure { name: None, value }),
        _ => Err(bad("a disclosure is [salt, name, value] or [salt, value]")),
    }
}

/// A payload with its disclosures put back: the claims, and for each disclosure (in the
/// order received) the path of the claim it revealed.
#[derive(Debug, Clone)]
pub(crate) struct Revealed {
    pub(crate) claims: Value,
    pub(crate) paths: Vec<ClaimPath>,
}

/// Reveals `payload` with `disclosures`, refusing everything RFC 9901 §7.1 refuses: a
/// `_sd_alg` other than sha-256 (absent means sha-256), a disclosure twice, a digest twice
/// in the payload, a disclosure whose digest is not in the payload (or not where its kind
/// fits: a property in an `_sd` array, an element in an array), a disclosed name that is
/// already a claim of its object, `_sd` that is not an array of strings.
pub(crate) fn reveal(payload: &Value, disclosures: &[&str]) -> Result<Revealed, SdJwtError> {
    match payload.get("_sd_alg") {
        None => {}
        Some(Value::String(a)) if a == SD_ALG => {}
        Some(other) => {
            return Err(SdJwtError::Disclosure(format!(
                "_sd_alg {other} is not sha-256"
            )))
        }
    }
    let mut by_digest: HashMap<String, usize> = HashMap::with_capacity(disclosures.len());
    let mut decoded = Vec::with_capacity(disclosures.len());
    for (i, d) in disclosures.iter().enumerate() {
        if by_digest.insert(digest(d), i).is_some() {
            return Err(SdJwtError::Disclosure("a disclosure is there twice".into()));
        }
        decoded.push(decode_disclosure(d)?);
    }
    let mut state = RevealState {
        by_digest,
        decoded,
        seen: HashSet::new(),
        paths: vec![None; disclosures.len()],
    };
    let mut claims = payload.clone();
    if let Some(o) = claims.as_object_mut() {
        o.remove("_sd_alg");
    }
    state.walk(&mut claims, &mut Vec::new())?;
    let mut paths = Vec::with_capacity(state.paths.len());
    for p in state.paths {
        paths.push(p.ok_or_else(|| {
            SdJwtError::Disclosure("a disclosure's digest is not in the SD-JWT".into())
        })?);
    }
    Ok(Revealed { claims, paths })
}

struct RevealState {
    by_digest: HashMap<String, usize>,
    decoded: Vec<Disclosure>,
    /// Every digest met in the payload and in revealed values, disclosed or not.
    seen: HashSet<String>,
    paths: Vec<Option<ClaimPath>>,
}

impl RevealState {
    fn first_sight(&mut self, digest: &str) -> Result<(), SdJwtError> {
        if self.seen.insert(digest.to_string()) {
            Ok(())
        } else {
            Err(SdJwtError::Disclosure(
                "a digest appears twice in the SD-JWT".into(),
            ))
        }
    }

    fn walk(&mut self, v: &mut Value, path: &mut ClaimPath) -> Result<(), SdJwtError> {
        match v {
            Value::Object(o) => {
                let sd = match o.remove("_sd") {
                    None => Vec::new(),
                    Some(Value::Array(a)) => a,
                    Some(_) => return Err(SdJwtError::Disclosure("_sd is not an array".into())),
                };
                if o.contains_key("...") {
                    return Err(SdJwtError::Disclosure(
                        "`...` outside an array element".into(),
                    ));
                }
                // Plain claims first: revealed values are walked once inserted.
                let names: Vec<String> = o.keys().cloned().collect();
                for name in names {
                    if let Some(child) = o.get_mut(&name) {
                        path.push(Value::String(name.clone()));
                        self.walk(child, path)?;
                        path.pop();
                    }
                }
                for entry in sd {
                    let Value::String(d) = entry else {
                        return Err(SdJwtError::Disclosure(
                            "_sd holds something other than digests".into(),
                        ));
                    };
                    self.first_sight(&d)?;
                    let Some(&i) = self.by_digest.get(&d) else {
                        continue; // undisclosed, or a decoy
                    };
                    let Disclosure { name, value } = self.decoded[i].clone();
                    let Some(name) = name else {
                        return Err(SdJwtError::Disclosure(
                            "an array element's disclosure is referenced from _sd".into(),
                        ));
                    };
                    if o.contains_key(&name) {
                        return Err(SdJwtError::Disclosure(format!(
                            "the disclosed claim {name:?} is already in its object"
                        )));
                    }
                    path.push(Value::String(name.clone()));
                    self.paths[i] = Some(path.clone());
                    let mut value = value;
                    self.walk(&mut value, path)?;
                    path.pop();
                    o.insert(name, value);
                }
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in std::mem::take(items) {
                    let digest = match &item {
                        Value::Object(o) if o.contains_key("...") => {
                            if o.len() != 1 {
                                return Err(SdJwtError::Disclosure(
                                    "an array element digest has other members".into(),
                                ));
                            }
                            match o.get("...") {
                                Some(Value::String(d)) => Some(d.clone()),
                                _ => {
                                    return Err(SdJwtError::Disclosure(
                                        "an array element digest is not a string".into(),
                                    ))
                                }
                            }
                        }
                        _ => None,
                    };
                    let mut value = match digest {
                        None => item,
                        Some(d) => {
                            self.first_sight(&d)?;
                            let Some(&i) = self.by_digest.get(&d) else {
                                continue; // undisclosed, or a decoy
                            };
                            let Disclosure { name, value } = self.decoded[i].clone();
                            if name.is_some() {
                                return Err(SdJwtError::Disclosure(
                                    "a property's disclosure is referenced from an array".into(),
                                ));
                            }
                            let mut element = path.clone();
                            element.push(json!(out.len()));
                            self.paths[i] = Some(element);
                            value
                        }
                    };
                    path.push(json!(out.len()));
                    self.walk(&mut value, path)?;
                    path.pop();
                    out.push(value);
                }
                *items = out;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The decoded payload of the issuer-signed JWT, without checking its signature (the
/// holder reading what it holds; a verifier goes through the pipeline).
fn unverified_payload(jwt: &str) -> Result<Value, SdJwtError> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| SdJwtError::Malformed("the issuer-signed part is not a JWS".into()))?;
    let bytes = crate::b64::decode(payload)
        .map_err(|_| SdJwtError::Malformed("the payload is not base64url".into()))?;
    let v = crate::json::parse_strict(&bytes).map_err(|e| {
        SdJwtError::Malformed(format!("the payload is not strict JSON: {}", e.summary()))
    })?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(SdJwtError::Malformed("the payload is not an object".into()))
    }
}

/// Every claim of an SD-JWT with all its disclosures revealed (unverified: what a holder
/// reads from what it holds), `_sd` and decoys removed.
pub fn revealed_claims(sd_jwt: &str) -> Result<Value, SdJwtError> {
    let parts = split(sd_jwt)?;
    Ok(reveal(&unverified_payload(parts.jwt)?, &parts.disclosures)?.claims)
}

/// The claim paths of everything an SD-JWT discloses when all its disclosures are revealed,
/// for a wallet to show and select from.
pub fn claim_paths(sd_jwt: &str) -> Result<Vec<ClaimPath>, SdJwtError> {
    let parts = split(sd_jwt)?;
    let mut paths = reveal(&unverified_payload(parts.jwt)?, &parts.disclosures)?.paths;
    sort_paths(&mut paths);
    Ok(paths)
}

/// Sorts claim paths element by element (a parent before its children).
pub fn sort_paths(paths: &mut [ClaimPath]) {
    paths.sort_by_key(|p| p.iter().map(Value::to_string).collect::<Vec<_>>());
}

/// Whether a requested path and a disclosure's path lie on one branch (one is a prefix of
/// the other, `null` matching any index): the disclosures a path needs are those on its
/// way down (its parents) and those below it (what it holds).
fn on_one_branch(requested: &[Value], disclosed: &[Value]) -> bool {
    requested.iter().zip(disclosed).all(|(r, d)| match r {
        Value::Null => d.is_u64(),
        other => other == d,
    })
}

fn check_claim_path(path: &ClaimPath) -> Result<(), SdJwtError> {
    let ok = !path.is_empty()
        && path
            .iter()
            .all(|p| p.is_string() || p.is_u64() || p.is_null());
    if ok {
        Ok(())
    } else {
        Err(SdJwtError::NoSuchClaim(
            Value::Array(path.clone()).to_string(),
        ))
    }
}

/// Whether `path` names something in `claims` (null: an array with at least one element).
fn path_exists(claims: &Value, path: &[Value]) -> bool {
    let Some((head, rest)) = path.split_first() else {
        return true;
    };
    match (head, claims) {
        (Value::String(name), Value::Object(o)) => {
            o.get(name).is_some_and(|v| path_exists(v, rest))
        }
        (Value::Number(n), Value::Array(a)) => n
            .as_u64()
            .and_then(|i| a.get(usize::try_from(i).ok()?))
            .is_some_and(|v| path_exists(v, rest)),
        (Value::Null, Value::Array(a)) => !a.is_empty() && a.iter().all(|v| path_exists(v, rest)),
        _ => false,
    }
}

/// Present: keep only the disclosures for these claim paths (DCQL-style paths, e.g.
/// `[["privileges"], ["organization"]]` or `[["privileges", 0]]` / `[["privileges", null]]`),
/// append a KB-JWT signed with the holder key over aud and nonce.
///
/// Paths index the credential as the holder holds it (every disclosure revealed, as
/// [`claim_paths`] lists them). A path that names nothing in the credential is an error:
/// the holder would otherwise present less than was asked without knowing it.
pub fn present(
    sd_jwt: &str,
    paths: &[ClaimPath],
    aud: &str,
    nonce: &str,
    holder: &KeyPair,
) -> Result<String, SdJwtError> {
    let parts = split(sd_jwt)?;
    let revealed = reveal(&unverified_payload(parts.jwt)?, &parts.disclosures)?;
    for path in paths {
        check_claim_path(path)?;
        if !path_exists(&revealed.claims, path) {
            return Err(SdJwtError::NoSuchClaim(
                Value::Array(path.clone()).to_string(),
            ));
        }
    }
    let mut out = String::with_capacity(sd_jwt.len());
    out.push_str(parts.jwt);
    out.push('~');
    for (d, disclosed) in parts.disclosures.iter().zip(&revealed.paths) {
        if paths.iter().any(|p| on_one_branch(p, disclosed)) {
            out.push_str(d);
            out.push('~');
        }
    }
    let kb = key_binding_jwt(&out, aud, nonce, holder)?;
    out.push_str(&kb);
    Ok(out)
}

/// A key binding JWT (RFC 9901 §4.3) over a presentation that ends with `~`.
pub fn key_binding_jwt(
    presented: &str,
    aud: &str,
    nonce: &str,
    holder: &KeyPair,
) -> Result<String, SdJwtError> {
    key_binding_jwt_at(
        presented,
        aud,
        nonce,
        holder,
        chrono::Utc::now().timestamp(),
    )
}

pub(crate) fn key_binding_jwt_at(
    presented: &str,
    aud: &str,
    nonce: &str,
    holder: &KeyPair,
    iat: i64,
) -> Result<String, SdJwtError> {
    let alg = match holder.algorithm() {
        crate::keys::KeyAlgorithm::Ed25519 => "EdDSA",
        crate::keys::KeyAlgorithm::P256 => "ES256",
    };
    let header = json!({ "alg": alg, "typ": KB_TYP });
    let payload = json!({
        "iat": iat,
        "aud": aud,
        "nonce": nonce,
        "sd_hash": sd_hash(presented),
    });
    let input = format!("{}.{}", b64_json(&header)?, b64_json(&payload)?);
    let sig = ssi::claims::jws::sign_bytes(
        holder.algorithm().jws_algorithm(),
        input.as_bytes(),
        holder.jwk(),
    )
    .map_err(|e| SdJwtError::Sign(e.to_string()))?;
    Ok(format!("{input}.{}", crate::b64::encode(&sig)))
}

/// Why a key binding JWT was refused; the pipeline names a check for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KbError {
    #[error("the key binding JWT is malformed: {0}")]
    Malformed(String),
    #[error("the key binding JWT is not signed by the credential's cnf key")]
    Signature,
    #[error("the key binding JWT's sd_hash is not that of this presentation")]
    SdHash,
    #[error("the key binding JWT is for another audience")]
    Audience,
    #[error("the key binding JWT answers another nonce")]
    Nonce,
    #[error("the key binding JWT is too old or from the future (iat)")]
    Time,
}

/// The payload of a key binding JWT, checked: header (`typ kb+jwt`, `alg` EdDSA or ES256
/// matching the key, no key or `crit` headers), signature by `cnf`, `sd_hash`, `iat` an
/// integer within `KB_MAX_AGE_SECS` + `skew` in the past and `skew` in the future; `aud`
/// and `nonce` when `expected` gives them.
pub(crate) fn check_key_binding(
    kb: &str,
    presented: &str,
    cnf: &ssi::jwk::JWK,
    expected: Option<(&str, &str)>,
    now: i64,
    skew: i64,
) -> Result<(), KbError> {
    let malformed = |m: &str| KbError::Malformed(m.to_string());
    let mut parts = kb.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a compact JWS"));
    };
    let json = |part: &str| -> Result<Value, KbError> {
        let bytes = crate::b64::decode(part).map_err(|_| malformed("not base64url"))?;
        let v = crate::json::parse_strict(&bytes)
            .map_err(|e| KbError::Malformed(format!("not strict JSON: {}", e.summary())))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(malformed("not a JSON object"))
        }
    };
    let header = json(h)?;
    if header.get("typ").and_then(Value::as_str) != Some(KB_TYP) {
        return Err(malformed("typ is not kb+jwt"));
    }
    for refused in ["jwk", "jku", "x5u", "x5c", "crit"] {
        if header.get(refused).is_some() {
            return Err(KbError::Malformed(format!("header {refused} is refused")));
        }
    }
    if header.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err(malformed("header b64 is refused"));
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("EdDSA" | "Ed25519") => ssi::jwk::Algorithm::EdDSA,
        Some("ES256") => ssi::jwk::Algorithm::ES256,
        _ => return Err(malformed("alg is not EdDSA or ES256")),
    };
    let key_alg = match &cnf.params {
        ssi::jwk::Params::OKP(k) if k.curve == "Ed25519" => ssi::jwk::Algorithm::EdDSA,
        ssi::jwk::Params::EC(k) if k.curve.as_deref() == Some("P-256") => {
            ssi::jwk::Algorithm::ES256
        }
        _ => return Err(KbError::Signature),
    };
    if key_alg != alg {
        return Err(KbError::Signature);
    }
    let signature = crate::b64::decode(s).map_err(|_| malformed("signature is not base64url"))?;
    ssi::claims::jws::verify_bytes(alg, format!("{h}.{p}").as_bytes(), cnf, &signature)
        .map_err(|_| KbError::Signature)?;
    let payload = json(p)?;
    if payload.get("sd_hash").and_then(Value::as_str) != Some(sd_hash(presented).as_str()) {
        return Err(KbError::SdHash);
    }
    let iat = payload
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("iat is not an integer"))?;
    if iat > now + skew || iat < now - KB_MAX_AGE_SECS - skew {
        return Err(KbError::Time);
    }
    let aud = payload.get("aud").and_then(Value::as_str);
    let nonce = payload.get("nonce").and_then(Value::as_str);
    if aud.is_none() || nonce.is_none() {
        return Err(malformed("aud and nonce must be strings"));
    }
    if let Some((want_aud, want_nonce)) = expected {
        if aud != Some(want_aud) {
            return Err(KbError::Audience);
        }
        if nonce != Some(want_nonce) {
            return Err(KbError::Nonce);
        }
    }
    Ok(())
}

/// The credential an SD-JWT VC's revealed claims stand for, in the shape of the W3C
/// credential of its type (contexts, types, issuer, validity, `credentialSubject`): what
/// the schema rule, policy input and the wallet read. Registered and SD-JWT VC claims are
/// mapped back (`iss` → `issuer`, `nbf`/`exp` → `validFrom`/`validUntil`, `sub` →
/// `credentialSubject.id`, `jti` → `id`); the others are the subject's claims.
pub fn credential_of_claims(kind: CredentialKind, claims: &Value) -> Value {
    let mut subject = Map::new();
    let mut vc = json!({
        "@context": [crate::context::CREDENTIALS_V2, crate::context::FEDGATE_V1],
        "type": ["VerifiableCredential", kind.type_name()],
    });
    if let Some(o) = claims.as_object() {
        for (name, value) in o {
            match name.as_str() {
                "iss" => vc["issuer"] = value.clone(),
                "jti" => vc["id"] = value.clone(),
                "sub" => {
                    subject.insert("id".into(), value.clone());
                }
                "nbf" | "exp" => {
                    let t = value
                        .as_i64()
                        .and_then(|s| chrono::DateTime::from_timestamp(s, 0));
                    if let Some(t) = t {
                        let field = if name == "nbf" {
                            "validFrom"
                        } else {
                            "validUntil"
                        };
                        vc[field] = json!(crate::time::rfc3339(t));
                    }
                }
                "iat" | "vct" | "vct#integrity" | "cnf" | "status" | "_sd_alg" => {}
                _ => {
                    subject.insert(name.clone(), value.clone());
                }
            }
        }
    }
    vc["credentialSubject"] = Value::Object(subject);
    vc
}

/// The SD-JWT VC type metadata of a fedgate type (SD-JWT VC §6): served at its vct URL.
pub fn type_metadata(base: &str, kind: CredentialKind) -> Value {
    let (name, description, claims): (&str, &str, &[(&str, bool)]) = match kind {
        CredentialKind::ClinicianPrivilege => (
            "Clinician privilege",
            "A clinician's role, specialty, organization and the facilities and data domains the clinician holds privileges for.",
            &[
                ("name", false),
                ("npi", false),
                ("role", false),
                ("specialty", false),
                ("organization", false),
                ("privileges", true),
            ],
        ),
        CredentialKind::PatientConsent => (
            "Patient consent",
            "A patient's consent (permit or deny) for a grantee to access data of given classes, for given purposes, at given custodians.",
            &[
                ("patientIdentifiers", true),
                ("custodians", true),
                ("grantee", false),
                ("provision", false),
                ("domains", true),
                ("purposes", true),
                ("dataClasses", true),
                ("period", false),
            ],
        ),
        CredentialKind::ResearchStudy => (
            "Research study",
            "A research study approved to use federation data, with its purposes, data classes and disclosure limits.",
            &[
                ("title", false),
                ("irb", false),
                ("purposes", true),
                ("dataClasses", true),
                ("aggregateOnly", false),
                ("minCellSize", false),
                ("epsilonBudget", false),
            ],
        ),
    };
    let mut entries = vec![
        json!({"path": ["iss"], "sd": "never"}),
        json!({"path": ["sub"], "sd": "never"}),
        json!({"path": ["jti"], "sd": "never"}),
        json!({"path": ["nbf"], "sd": "never"}),
        json!({"path": ["exp"], "sd": "never"}),
        json!({"path": ["iat"], "sd": "never"}),
        json!({"path": ["vct"], "sd": "never"}),
        json!({"path": ["cnf"], "sd": "never"}),
        json!({"path": ["status"], "sd": "never"}),
    ];
    if kind == CredentialKind::ResearchStudy {
        entries.push(json!({"path": ["sponsor"], "sd": "never",
            "display": [{"locale": "en-US", "label": "sponsor"}]}));
    }
    for (claim, array) in claims {
        entries.push(json!({"path": [claim], "sd": "always",
            "display": [{"locale": "en-US", "label": claim}]}));
        if *array {
            entries.push(json!({"path": [claim, null], "sd": "always"}));
        }
    }
    json!({
        "vct": vct(base, kind),
        "name": name,
        "description": description,
        "display": [{"locale": "en-US", "name": name, "description": description}],
        "claims": entries,
    })
}

#[cfg(test)]
mod tests;
