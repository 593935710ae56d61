//! The token vault: identifier values replaced by `tok_…` tokens in responses, kept here
//! AES-256-GCM-encrypted so that a later, separately authorized detokenize request can
//! reveal them to the organization they were issued to, and to nobody else.
//!
//! Layout of its tree of the gateway's database (owned by this module):
//! - `t:<token>` → [`Sealed`] (metadata in clear for the policy, value encrypted);
//! - `i:<HMAC(index key, recipient, domain, class, value)>` → token, so the same value sent
//!   to the same recipient again reuses its token instead of growing the vault.
//!
//! Both keys are derived from the gateway secret with HMAC-SHA256 and distinct labels; the
//! secret itself is not kept, and the derived keys are zeroized on drop. A third entry,
//! `s:check` → HMAC(encryption key, label), records which secret the vault is written with:
//! a process with another secret (a replica whose `secret_file` was not copied, and so was
//! created afresh) is refused at start rather than mint tokens the others cannot reveal
//! ([`Vault::check_secret`]).
//!
//! New tokens are written together: a tokenization collects the tokens it minted
//! ([`NewTokens`]) and commits them in one write before its answer leaves
//! ([`Vault::commit`]), so a token that left is on disk. Until then a minted token is kept
//! in memory, so that two tokenizations of one value at once agree on its token.
//!
//! Replicas of the gateway share the vault's tree but not that memory: two of them may
//! mint a token for one value at once. The commit decides: the first to write the value's
//! index entry keeps it, and a later commit that finds another token there writes none of
//! its own and answers which token replaces which ([`Replaced`]); the tokenizer puts the
//! stored token in its output before it leaves. So one value has one token for one
//! recipient, whichever replica answers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use aes_gcm::aead::{Aead, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use federation::b64::encode as b64;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use storage::StoreError;
use zeroize::{Zeroize, Zeroizing};

use crate::db::Tree;

type HmacSha256 = Hmac<Sha256>;

const TOKEN_PREFIX: &str = "tok_";
const TOKEN_KEY: &[u8] = b"t:";
const INDEX_KEY: &[u8] = b"i:";
const ENC_LABEL: &[u8] = b"fedgate/vault/encryption/v1";
const INDEX_LABEL: &[u8] = b"fedgate/vault/index/v1";
const CHECK_KEY: &[u8] = b"s:check";
const CHECK_LABEL: &[u8] = b"fedgate/vault/secret-check/v1";
/// Longest token accepted on lookup: ours are 26 characters.
const MAX_TOKEN_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("unknown token")]
    UnknownToken,
    #[error("the token was not issued to this organization")]
    WrongRecipient,
    #[error("vault entry is corrupt or was tampered with")]
    Corrupt,
    #[error("invalid vault input: {0}")]
    Invalid(&'static str),
    #[error("vault encryption failed")]
    Crypto,
    #[error("vault storage: {0}")]
    Storage(#[from] StoreError),
    #[error("secret file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "not the secret this gateway's vault was first written with (every replica of a \
         gateway needs the same secret file)"
    )]
    OtherSecret,
}

/// The token another writer stored for `minted`'s value, recipient, domain and class since
/// it was looked up, if any: one of the same recipient, domain and class. An entry that
/// does not hold together is replaced, as at lookup.
fn stored_instead(
    tx: &mut storage::WriteTx<'_>,
    tree: &Tree,
    minted: &Minted,
) -> Result<Option<String>, StoreError> {
    let Some(existing) = tx.get(tree, &minted.index_key)? else {
        return Ok(None);
    };
    let Ok(token) = String::from_utf8(existing) else {
        return Ok(None);
    };
    if token == minted.token {
        return Ok(None);
    }
    let Some(stored) = tx.get(tree, &[TOKEN_KEY, token.as_bytes()].concat())? else {
        return Ok(None);
    };
    let kind = |bytes: &[u8]| {
        serde_json::from_slice::<Sealed>(bytes)
            .ok()
            .map(|s| (s.recipient_org, s.domain, s.class))
    };
    match (kind(&stored), kind(&minted.sealed)) {
        (Some(theirs), Some(ours)) if theirs == ours => Ok(Some(token)),
        _ => Ok(None),
    }
}

/// What the policy may know about a token before deciding: never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub recipient_org: String,
    pub domain: String,
    pub class: String,
}

/// One stored token. Metadata is in clear (the policy needs it) but bound into the AAD,
/// so an edited entry no longer decrypts.
#[derive(Serialize, Deserialize)]
struct Sealed {
    recipient_org: String,
    domain: String,
    class: String,
    nonce: String,
    ciphertext: String,
    created: i64,
}

pub struct Vault {
    tree: Tree,
    enc_key: Zeroizing<[u8; 32]>,
    index_key: Zeroizing<[u8; 32]>,
    /// Tokens minted and not yet known to be on disk, by index key.
    minting: Mutex<HashMap<Vec<u8>, Minted>>,
}

/// A minted token and its two entries.
#[derive(Clone)]
struct Minted {
    index_key: Vec<u8>,
    token: String,
    sealed: Vec<u8>,
}

/// The tokens one tokenization handed out that may not be on disk yet; [`Vault::commit`]
/// writes them.
#[derive(Default)]
pub struct NewTokens(Vec<(Minted, Origin)>);

/// Whether a tokenization minted a token itself, or took one another was minting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Minted,
    Shared,
}

/// What a commit found another writer (another replica) had already stored for the
/// same value, recipient, domain and class: each token minted here that must not leave,
/// and the stored token to send instead.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replaced(HashMap<String, String>);

impl Replaced {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token to send instead of `token`, if it was replaced.
    pub fn get(&self, token: &str) -> Option<&str> {
        self.0.get(token).map(String::as_str)
    }
}

impl NewTokens {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

/// HMAC-SHA256 over `parts` joined by 0x00, so that no two part lists give the same input
/// as long as no part but the last contains a NUL byte.
pub(crate) fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed(key);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(&[0]);
        }
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn keyed(key: &[u8; 32]) -> HmacSha256 {
    // A 32-byte HMAC key is zero-padded to the block size by the algorithm; doing it here
    // makes the constructor infallible.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <HmacSha256 as Mac>::new(&(*block).into())
}

/// [`hmac_sha256`] of many part lists that share their first parts: the key and those
/// parts are absorbed once, and each MAC then costs only its last part.
#[derive(Clone)]
pub(crate) struct HmacPrefix {
    mac: HmacSha256,
}

impl HmacPrefix {
    pub(crate) fn new(key: &[u8; 32], prefix: &[&[u8]]) -> HmacPrefix {
        let mut mac = keyed(key);
        for part in prefix {
            mac.update(part);
            mac.update(&[0]);
        }
        HmacPrefix { mac }
    }

    /// `hmac_sha256(key, [prefix..., last])`.
    pub(crate) fn mac(&self, last: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(last);
        mac.finalize().into_bytes().into()
    }
}

fn unb64(s: &str) -> Result<Vec<u8>, VaultError> {
    federation::b64::decode(s).map_err(|_| VaultError::Corrupt)
}

fn aad(token: &str, recipient_org: &str, domain: &str, class: &str) -> Vec<u8> {
    [token, recipient_org, domain, class]
        .join("\0")
        .into_bytes()
}

fn check_field(value: &str, what: &'static str) -> Result<(), VaultError> {
    if value.is_empty() || value.len() > 512 || value.contains('\0') {
        return Err(VaultError::Invalid(what));
    }
    Ok(())
}

impl Vault {
    /// Opens the vault in `tree` with keys derived from the gateway secret `key`.
    pub fn open(tree: Tree, key: [u8; 32]) -> Vault {
        let mut key = key;
        let vault = Vault {
            tree,
            enc_key: Zeroizing::new(hmac_sha256(&key, &[ENC_LABEL])),
            index_key: Zeroizing::new(hmac_sha256(&key, &[INDEX_LABEL])),
            minting: Mutex::new(HashMap::new()),
        };
        key.zeroize();
        vault
    }

    /// Whether a token's lookup is a read of a local file (the embedded store) rather than
    /// a round trip to a database server.
    pub fn reads_locally(&self) -> bool {
        !self.tree.db().is_postgres()
    }

    /// Checks that this vault's secret is the one its tree was first written with,
    /// recording it (as an HMAC, which tells nothing of the secret) the first time.
    pub async fn check_secret(&self) -> Result<(), VaultError> {
        let check = hmac_sha256(&self.enc_key, &[CHECK_LABEL]);
        let tree = self.tree.clone();
        self.tree
            .db()
            .write(move |tx| match tx.get(&tree, CHECK_KEY)? {
                Some(stored) if stored == check => Ok(()),
                Some(_) => Err(VaultError::OtherSecret),
                None => {
                    tx.insert(&tree, CHECK_KEY, &check)?;
                    Ok(())
                }
            })
            .await
    }

    /// Stores `value` for `recipient_org` in `domain` and returns its token, on disk. The
    /// same value for the same recipient, domain and class gets the same token back.
    /// Blocks on the write: not for the async workers.
    pub fn put(
        &self,
        value: &str,
        class: &str,
        recipient_org: &str,
        domain: &str,
    ) -> Result<String, VaultError> {
        let mut new = NewTokens::default();
        let token = self.put_staged(value, class, recipient_org, domain, &mut new)?;
        let replaced = self.commit(new)?;
        Ok(replaced.get(&token).map_or(token, str::to_string))
    }

    /// The token of `value`: the one on disk, else one minted now and added to `new`
    /// (written by [`Vault::commit`], which must return before the token leaves).
    pub fn put_staged(
        &self,
        value: &str,
        class: &str,
        recipient_org: &str,
        domain: &str,
        new: &mut NewTokens,
    ) -> Result<String, VaultError> {
        check_field(class, "class")?;
        check_field(recipient_org, "recipient organization")?;
        check_field(domain, "domain")?;
        let digest = hmac_sha256(
            &self.index_key,
            &[
                recipient_org.as_bytes(),
                domain.as_bytes(),
                class.as_bytes(),
                value.as_bytes(),
            ],
        );
        let index_key = [INDEX_KEY, &digest[..]].concat();
        // Tokens on disk are never removed: one found here is the value's.
        if let Some(token) = self.stored_token(&index_key, recipient_org, domain, class)? {
            return Ok(token);
        }
        let mut minting = self.minting.lock().unwrap_or_else(PoisonError::into_inner);
        // Minted by a tokenization running now: the same token, written by both.
        if let Some(minted) = minting.get(&index_key) {
            new.0.push((minted.clone(), Origin::Shared));
            return Ok(minted.token.clone());
        }
        // Committed since the first look (its minter forgot it only after the commit).
        if let Some(token) = self.stored_token(&index_key, recipient_org, domain, class)? {
            return Ok(token);
        }
        let minted = self.mint(index_key, value, class, recipient_org, domain)?;
        minting.insert(minted.index_key.clone(), minted.clone());
        let token = minted.token.clone();
        new.0.push((minted, Origin::Minted));
        Ok(token)
    }

    /// The token the index holds for `index_key`, if it is one of the same recipient,
    /// domain and class. An entry that does not hold together is replaced by a new token;
    /// a storage failure is an error (minting a second token would only hide it).
    fn stored_token(
        &self,
        index_key: &[u8],
        recipient_org: &str,
        domain: &str,
        class: &str,
    ) -> Result<Option<String>, VaultError> {
        let Some(existing) = self.tree.get(index_key)? else {
            return Ok(None);
        };
        let Ok(token) = std::str::from_utf8(&existing) else {
            return Ok(None);
        };
        match self.sealed(token) {
            Ok(s) if s.recipient_org == recipient_org && s.domain == domain && s.class == class => {
                Ok(Some(token.to_string()))
            }
            Err(VaultError::Storage(e)) => Err(VaultError::Storage(e)),
            _ => Ok(None),
        }
    }

    /// A new token for `value`, encrypted, with its entries.
    fn mint(
        &self,
        index_key: Vec<u8>,
        value: &str,
        class: &str,
        recipient_org: &str,
        domain: &str,
    ) -> Result<Minted, VaultError> {
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", b64(&raw));
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(&(*self.enc_key).into());
        let aad = aad(&token, recipient_org, domain, class);
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Crypto)?;
        let sealed = Sealed {
            recipient_org: recipient_org.to_string(),
            domain: domain.to_string(),
            class: class.to_string(),
            nonce: b64(&nonce),
            ciphertext: b64(&ciphertext),
            created: chrono::Utc::now().timestamp(),
        };
        let sealed = serde_json::to_vec(&sealed).map_err(|_| VaultError::Crypto)?;
        Ok(Minted {
            index_key,
            token,
            sealed,
        })
    }

    /// Writes the tokens of `new` (each with its index entry) in one write; they are on
    /// disk when this returns. A value whose index entry another writer filled since it
    /// was looked up (another replica's tokenization) keeps that token: this one is not
    /// written, and is in the answer with the token to send instead. Blocks on the write:
    /// call it off the async workers.
    pub fn commit(&self, new: NewTokens) -> Result<Replaced, VaultError> {
        if new.is_empty() {
            return Ok(Replaced::default());
        }
        let tree = self.tree.clone();
        let written: Vec<Minted> = new.0.iter().map(|(m, _)| m.clone()).collect();
        let replaced = self.tree.db().write_blocking(move |tx| {
            let mut replaced = HashMap::new();
            for m in &written {
                if let Some(stored) = stored_instead(tx, &tree, m)? {
                    replaced.insert(m.token.clone(), stored);
                    continue;
                }
                tx.insert(&tree, &[TOKEN_KEY, m.token.as_bytes()].concat(), &m.sealed)?;
                tx.insert(&tree, &m.index_key, m.token.as_bytes())?;
            }
            Ok::<_, StoreError>(replaced)
        })?;
        if !replaced.is_empty() {
            // Counts only: which values raced is nobody's business.
            tracing::debug!(
                tokens = replaced.len(),
                "tokens minted at once by another replica kept instead of this one's"
            );
        }
        // On disk (or replaced by what is): readers find them there from now on. (After a
        // failed write they stay here, and whoever hands one out again writes it again.)
        self.forget_where(&new, |_| true);
        Ok(Replaced(replaced))
    }

    /// Drops the tokens a tokenization minted and then failed before its commit: they
    /// never left (those it took from another tokenization stay that one's to write).
    pub fn forget(&self, new: NewTokens) {
        self.forget_where(&new, |origin| origin == Origin::Minted);
    }

    fn forget_where(&self, new: &NewTokens, which: impl Fn(Origin) -> bool) {
        let mut minting = self.minting.lock().unwrap_or_else(PoisonError::into_inner);
        for (m, origin) in &new.0 {
            if which(*origin)
                && minting
                    .get(&m.index_key)
                    .is_some_and(|k| k.token == m.token)
            {
                minting.remove(&m.index_key);
            }
        }
    }

    fn sealed(&self, token: &str) -> Result<Sealed, VaultError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > MAX_TOKEN_LEN {
            return Err(VaultError::UnknownToken);
        }
        let key = [TOKEN_KEY, token.as_bytes()].concat();
        let body = self.tree.get(&key)?.ok_or(VaultError::UnknownToken)?;
        serde_json::from_slice(&body).map_err(|_| VaultError::Corrupt)
    }

    /// The token's metadata, for the detokenize policy. Never the value.
    pub fn get(&self, token: &str) -> Result<TokenInfo, VaultError> {
        let s = self.sealed(token)?;
        Ok(TokenInfo {
            recipient_org: s.recipient_org,
            domain: s.domain,
            class: s.class,
        })
    }

    /// The value behind `token`, only for the organization it was issued to.
    /// [`Vault::get`], with an unknown token as `None`: every other failure (storage, a
    /// corrupt entry) stays an error, so that it is never answered as "unknown token".
    pub fn find(&self, token: &str) -> Result<Option<TokenInfo>, VaultError> {
        match self.get(token) {
            Ok(info) => Ok(Some(info)),
            Err(VaultError::UnknownToken) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn reveal(&self, token: &str, recipient_org: &str) -> Result<String, VaultError> {
        let s = self.sealed(token)?;
        if s.recipient_org != recipient_org {
            return Err(VaultError::WrongRecipient);
        }
        let nonce: [u8; 12] = unb64(&s.nonce)?
            .try_into()
            .map_err(|_| VaultError::Corrupt)?;
        let ciphertext = unb64(&s.ciphertext)?;
        let cipher = Aes256Gcm::new(&(*self.enc_key).into());
        let aad = aad(token, &s.recipient_org, &s.domain, &s.class);
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| VaultError::Corrupt)
    }

    /// Number of tokens on disk.
    pub fn len(&self) -> Result<usize, VaultError> {
        let (start, end) = (TOKEN_KEY, [TOKEN_KEY[0], TOKEN_KEY[1] + 1]);
        let mut n = 0usize;
        self.tree.scan(start..&end[..], |_, _| {
            n += 1;
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool, VaultError> {
        Ok(self.len()? == 0)
    }

    /// Loads the 32-byte gateway secret from `path` (64 hex digits, or 32 raw bytes),
    /// creating it with mode 0600 if missing. A file that group or others can access is
    /// refused.
    pub fn key_from_file(path: &Path) -> Result<[u8; 32], VaultError> {
        let err = |reason: String| VaultError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            let mut secret = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(&mut secret[..]);
            let text = Zeroizing::new(format!("{}\n", hex::encode(&secret[..])));
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
            }
            match federation::keys::write_private(path, text.as_bytes()) {
                Ok(()) => return Ok(*secret),
                // Another process created it first: load theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        // Refused when group or others can access it.
        let bytes = federation::keys::read_private(path).map_err(|e| err(e.to_string()))?;
        let mut secret = [0u8; 32];
        if bytes.len() == 32 {
            secret.copy_from_slice(&bytes);
            return Ok(secret);
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| err("not 64 hex digits nor 32 raw bytes".into()))?
            .trim();
        hex::decode_to_slice(text, &mut secret)
            .map_err(|_| err("not 64 hex digits nor 32 raw bytes".into()))?;
        Ok(secret)
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn a_prefixed_mac_is_the_mac_of_all_its_parts() {
        let key = [42u8; 32];
        let prefix = HmacPrefix::new(&key, &[b"did:web:b.example", b"clinical", b"resource-ids"]);
        for value in ["", "Patient/1", "Observation/\u{e9}-0001", &"x".repeat(200)] {
            assert_eq!(
                prefix.mac(value.as_bytes()),
                hmac_sha256(
                    &key,
                    &[
                        b"did:web:b.example",
                        b"clinical",
                        b"resource-ids",
                        value.as_bytes()
                    ]
                ),
                "{value}"
            );
        }
        assert_eq!(
            HmacPrefix::new(&key, &[]).mac(b"v"),
            hmac_sha256(&key, &[b"v"])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> (tempfile::TempDir, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let v = Vault::open(db.tree("vault"), [7u8; 32]);
        (dir, v)
    }

    /// Sets `key` of the vault's tree behind its back.
    fn set(v: &Vault, key: &[u8], value: &[u8]) {
        let (tree, key, value) = (v.tree.clone(), key.to_vec(), value.to_vec());
        v.tree
            .db()
            .write_blocking(move |tx| tx.insert(&tree, &key, &value).map(|_| ()))
            .unwrap();
    }

    #[test]
    fn put_reveal_roundtrip_and_recipient_binding() {
        let (_d, v) = vault();
        let t = v
            .put("999-60-4067", "ssn", "did:web:a", "clinical")
            .unwrap();
        assert!(t.starts_with("tok_") && t.len() == 26, "{t}");
        assert_eq!(v.reveal(&t, "did:web:a").unwrap(), "999-60-4067");
        assert!(matches!(
            v.reveal(&t, "did:web:b"),
            Err(VaultError::WrongRecipient)
        ));
        let info = v.get(&t).unwrap();
        assert_eq!(info.recipient_org, "did:web:a");
        assert_eq!(info.domain, "clinical");
        assert_eq!(info.class, "ssn");
        assert!(matches!(v.get("tok_nope"), Err(VaultError::UnknownToken)));
        assert!(matches!(v.get("nope"), Err(VaultError::UnknownToken)));
    }

    #[test]
    fn value_is_not_stored_in_clear() {
        let (_d, v) = vault();
        v.put("VERY-SECRET-VALUE", "ssn", "did:web:a", "clinical")
            .unwrap();
        for (k, val) in v.tree.entries().unwrap() {
            let hay = [k, val].concat();
            assert!(!hay.windows(17).any(|w| w == b"VERY-SECRET-VALUE"));
        }
    }

    #[test]
    fn tokens_are_reused_per_recipient_domain_class() {
        let (_d, v) = vault();
        let a1 = v.put("x", "ssn", "did:web:a", "clinical").unwrap();
        let a2 = v.put("x", "ssn", "did:web:a", "clinical").unwrap();
        let b = v.put("x", "ssn", "did:web:b", "clinical").unwrap();
        let c = v.put("x", "passport", "did:web:a", "clinical").unwrap();
        let d = v.put("x", "ssn", "did:web:a", "billing").unwrap();
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        assert_ne!(a1, c);
        assert_ne!(a1, d);
        assert_eq!(v.len().unwrap(), 4);
    }

    #[test]
    fn tampered_metadata_does_not_decrypt() {
        let (_d, v) = vault();
        let t = v.put("secret", "ssn", "did:web:a", "clinical").unwrap();
        let key = [TOKEN_KEY, t.as_bytes()].concat();
        let mut s: Sealed = serde_json::from_slice(&v.tree.get(&key).unwrap().unwrap()).unwrap();
        s.domain = "billing".into();
        set(&v, &key, &serde_json::to_vec(&s).unwrap());
        assert!(matches!(
            v.reveal(&t, "did:web:a"),
            Err(VaultError::Corrupt)
        ));
        set(&v, &key, b"garbage");
        assert!(matches!(v.get(&t), Err(VaultError::Corrupt)));
    }

    #[test]
    fn another_key_cannot_reveal() {
        let db = crate::db::temporary().unwrap();
        let t = Vault::open(db.tree("v"), [1u8; 32])
            .put("secret", "ssn", "did:web:a", "clinical")
            .unwrap();
        let other = Vault::open(db.tree("v"), [2u8; 32]);
        assert!(matches!(
            other.reveal(&t, "did:web:a"),
            Err(VaultError::Corrupt)
        ));
    }

    /// A token that left is on disk: after a restart it is revealed, and the same value
    /// gets the same token again.
    #[test]
    fn a_restart_keeps_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let t = {
            let db = crate::db::open(dir.path()).unwrap();
            Vault::open(db.tree("vault"), [7u8; 32])
                .put("MRN-1", "mrn", "did:web:a", "clinical")
                .unwrap()
        };
        let db = crate::db::open(dir.path()).unwrap();
        let v = Vault::open(db.tree("vault"), [7u8; 32]);
        assert_eq!(v.reveal(&t, "did:web:a").unwrap(), "MRN-1");
        assert_eq!(v.put("MRN-1", "mrn", "did:web:a", "clinical").unwrap(), t);
        assert_eq!(v.len().unwrap(), 1);
    }

    /// A minted token is written by the commit, not before; two tokenizations of one value
    /// at once get the same token, and either commit writes it.
    #[test]
    fn tokens_minted_at_once_agree_and_are_on_disk_after_the_commit() {
        let (_d, v) = vault();
        let (mut first, mut second) = (NewTokens::default(), NewTokens::default());
        let a = v
            .put_staged("x", "ssn", "did:web:a", "clinical", &mut first)
            .unwrap();
        let b = v
            .put_staged("x", "ssn", "did:web:a", "clinical", &mut second)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!((first.len(), second.len()), (1, 1));
        assert!(matches!(v.get(&a), Err(VaultError::UnknownToken)));
        v.commit(second).unwrap();
        assert_eq!(v.reveal(&a, "did:web:a").unwrap(), "x");
        v.commit(first).unwrap();
        assert_eq!(v.len().unwrap(), 1);
        // Once on disk, a later tokenization has nothing to write.
        let mut third = NewTokens::default();
        let c = v
            .put_staged("x", "ssn", "did:web:a", "clinical", &mut third)
            .unwrap();
        assert_eq!(c, a);
        assert!(third.is_empty());
    }

    /// Two replicas over one database mint a token for one value at once, neither
    /// knowing the other's: the first commit keeps its token, the second writes none of
    /// its own and says which token its output must carry instead. Both then hand out
    /// the one token.
    #[test]
    fn replicas_minting_one_value_at_once_end_with_one_token() {
        let db = crate::db::temporary().unwrap();
        let a = Vault::open(db.tree("vault"), [7u8; 32]);
        let b = Vault::open(db.tree("vault"), [7u8; 32]);
        let (mut at_a, mut at_b) = (NewTokens::default(), NewTokens::default());
        let ta = a
            .put_staged("x", "ssn", "did:web:a", "clinical", &mut at_a)
            .unwrap();
        let tb = b
            .put_staged("x", "ssn", "did:web:a", "clinical", &mut at_b)
            .unwrap();
        assert_ne!(ta, tb);
        assert!(a.commit(at_a).unwrap().is_empty());
        let replaced = b.commit(at_b).unwrap();
        assert_eq!(replaced.get(&tb), Some(ta.as_str()));
        assert!(matches!(b.get(&tb), Err(VaultError::UnknownToken)));
        assert_eq!(b.reveal(&ta, "did:web:a").unwrap(), "x");
        assert_eq!(b.put("x", "ssn", "did:web:a", "clinical").unwrap(), ta);
        assert_eq!(a.len().unwrap(), 1);

        // Minted at once again, and this time `put` (which commits) loses the race: it
        // answers the stored token, not its own.
        let mut at_a = NewTokens::default();
        let ta = a
            .put_staged("y", "ssn", "did:web:a", "clinical", &mut at_a)
            .unwrap();
        let mut at_b = NewTokens::default();
        let tb = b
            .put_staged("y", "ssn", "did:web:a", "clinical", &mut at_b)
            .unwrap();
        assert!(b.commit(at_b).unwrap().is_empty());
        assert_eq!(a.commit(at_a).unwrap().get(&ta), Some(tb.as_str()));
        assert_eq!(a.put("y", "ssn", "did:web:a", "clinical").unwrap(), tb);
        // Another recipient's value is another token, untouched by the race.
        assert_ne!(a.put("y", "ssn", "did:web:b", "clinical").unwrap(), tb);
        assert_eq!(a.len().unwrap(), 3);
    }

    /// Replicas must share the secret: one whose secret file was created afresh is refused
    /// by the vault it would otherwise fill with tokens the others cannot reveal.
    #[tokio::test]
    async fn a_vault_written_with_one_secret_refuses_another() {
        let db = crate::db::temporary().unwrap();
        let first = Vault::open(db.tree("vault"), [7u8; 32]);
        first.check_secret().await.unwrap();
        let token = first.put("x", "ssn", "did:web:a", "clinical").unwrap();
        let same = Vault::open(db.tree("vault"), [7u8; 32]);
        same.check_secret().await.unwrap();
        let other = Vault::open(db.tree("vault"), [8u8; 32]);
        assert!(matches!(
            other.check_secret().await,
            Err(VaultError::OtherSecret)
        ));
        assert!(matches!(
            other.reveal(&token, "did:web:a"),
            Err(VaultError::Corrupt)
        ));
        assert_eq!(same.reveal(&token, "did:web:a").unwrap(), "x");
        assert_eq!(same.len().unwrap(), 1);
    }

    #[test]
    fn concurrent_puts_of_one_value_keep_one_token() {
        let (_d, v) = vault();
        let v = std::sync::Arc::new(v);
        let (sent, got) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let (v, sent) = (v.clone(), sent.clone());
            std::thread::spawn(move || {
                let _ = sent.send(v.put("y", "ssn", "did:web:a", "clinical"));
            });
        }
        // Bounded: a writer that hangs fails the test instead of stalling the run.
        let tokens: std::collections::HashSet<String> = (0..8)
            .map(|_| {
                got.recv_timeout(std::time::Duration::from_secs(60))
                    .expect("a put did not finish within 60 s")
                    .unwrap()
            })
            .collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(v.len().unwrap(), 1);
    }

    #[test]
    fn rejects_nul_in_metadata() {
        let (_d, v) = vault();
        assert!(v.put("x", "ssn", "did:web:a\0b", "clinical").is_err());
        assert!(v.put("x", "", "did:web:a", "clinical").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let k1 = Vault::key_from_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = Vault::key_from_file(&path).unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1, [0u8; 32]);
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        std::fs::write(&path, [3u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Vault::key_from_file(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Vault::key_from_file(&path).unwrap(), [3u8; 32]);
        std::fs::write(&path, b"short").unwrap();
        assert!(Vault::key_from_file(&path).is_err());
    }
}
