//! The wallet: the holder's key, the credential store, importing and presenting.
//!
//! A wallet is a folder:
//! - `holder.key.json`: the holder's did:key (mode 0600; refused when others can read it);
//! - `credentials.redb`: the credential store (see `store`). An earlier fedgate kept it
//!   in a sled folder, `store/`; a wallet that still has one is refused, naming it.

use std::path::{Path, PathBuf};

use chrono::Utc;
use federation::credentials::{PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::verify::Verifier;
use serde_json::Value;

use crate::error::{Result, WalletError};
use crate::gateway::GatewayClient;
use crate::request::{select, PresentationRequest};
use crate::store::{Store, StoredCredential};

/// File name of the holder key inside a wallet folder.
pub const KEY_FILE: &str = "holder.key.json";
/// File of the credential store inside a wallet folder.
pub const STORE_FILE: &str = "credentials.redb";
/// Folder of an earlier fedgate's (sled) credential store inside a wallet folder.
const EARLIER_STORE_DIR: &str = "store";

pub struct Wallet {
    dir: PathBuf,
    key: KeyPair,
    pub(crate) store: Store,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("dir", &self.dir)
            .field("holder", &self.key.did())
            .finish_non_exhaustive()
    }
}

/// Creates the wallet folder readable by its owner only: it holds consents and privileges.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| WalletError::Folder {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })
}

impl Wallet {
    /// Creates a wallet in `dir`: a new holder did:key and an empty store. Refuses a
    /// folder that already has a holder key.
    pub fn init(dir: &Path, alg: KeyAlgorithm) -> Result<Wallet> {
        create_private_dir(dir)?;
        let store_path = dir.join(STORE_FILE);
        // A store left without its key would never open with a new one.
        if store_path.exists() || dir.join(EARLIER_STORE_DIR).exists() {
            return Err(WalletError::Folder {
                path: dir.display().to_string(),
                reason: "it already holds a wallet store; choose an empty folder".into(),
            });
        }
        let key_path = dir.join(KEY_FILE);
        let key = KeyPair::generate_did_key(alg)?.with_purpose("holder");
        key.save(&key_path)?;
        let store = Store::open(&store_path, key.did())?;
        Ok(Wallet {
            dir: dir.to_path_buf(),
            key,
            store,
        })
    }

    /// Opens the wallet in `dir`.
    pub fn open(dir: &Path) -> Result<Wallet> {
        let key_path = dir.join(KEY_FILE);
        let store_path = dir.join(STORE_FILE);
        let earlier = dir.join(EARLIER_STORE_DIR);
        if earlier.exists() {
            return Err(WalletError::EarlierStore {
                path: earlier.display().to_string(),
            });
        }
        if !key_path.exists() || !store_path.exists() {
            return Err(WalletError::NotInitialized {
                path: dir.display().to_string(),
            });
        }
        let key = KeyPair::load(&key_path)?;
        let store = Store::open(&store_path, key.did())?;
        Ok(Wallet {
            dir: dir.to_path_buf(),
            key,
            store,
        })
    }

    /// The holder's DID.
    pub fn did(&self) -> &str {
        self.key.did()
    }

    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }

    /// Verifies a credential (a JWT string or a Data Integrity object) with the full
    /// pipeline, checks it is addressed to this holder, and stores it. Nothing is written
    /// when either check fails. Importing the same credential again returns the stored
    /// record unchanged.
    pub async fn import(&self, credential: Value, verifier: &Verifier) -> Result<StoredCredential> {
        // A JWT pasted with surrounding whitespace is still the same JWT.
        let credential = match credential {
            Value::String(s) => Value::String(s.trim().to_string()),
            other => other,
        };
        let verified = verifier
            .verify_credential(&credential)
            .await
            .map_err(WalletError::Rejected)?;
        let held = self.store.all()?;
        crate::addressing::check(&verified, self.did(), &held)?;
        let record = StoredCredential::from_verified(&verified, credential);
        self.store.insert_new(record)
    }

    /// Every stored credential, in id order.
    /// Presents the stored SD-JWT VC `id` to a verifier: only the disclosures of `paths`
    /// (DCQL claim paths over the credential as held, e.g. `[["privileges", 0]]`; see
    /// [`federation::sdjwt::claim_paths`] for what it holds), with a key binding JWT signed
    /// by the holder key over `aud` and `nonce` (for OpenID4VP: the full `client_id`, and
    /// the request's nonce). Returns the presentation (`jwt~disclosures~kb-jwt`). A
    /// withdrawn consent is never presented.
    pub fn present_sd_jwt(
        &self,
        id: &str,
        paths: &[federation::sdjwt::ClaimPath],
        aud: &str,
        nonce: &str,
    ) -> Result<String> {
        let stored = self.show(id)?;
        if stored.withdrawn {
            return Err(WalletError::Withdrawn { id: id.to_string() });
        }
        let compact = match (&stored.format, &stored.credential) {
            (ProofFormat::SdJwt, Value::String(s)) => s,
            _ => {
                return Err(WalletError::NotSdJwt {
                    id: id.to_string(),
                    format: serde_json::to_value(stored.format)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                })
            }
        };
        Ok(federation::sdjwt::present(
            compact, paths, aud, nonce, &self.key,
        )?)
    }

    pub fn list(&self) -> Result<Vec<StoredCredential>> {
        self.store.all()
    }

    pub fn show(&self, id: &str) -> Result<StoredCredential> {
        self.store
            .get(id)?
            .ok_or_else(|| WalletError::NotFound { id: id.to_string() })
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        if self.store.remove(id)? {
            Ok(())
        } else {
            Err(WalletError::NotFound { id: id.to_string() })
        }
    }

    /// Presents what `request` needs to the gateway: picks the credentials first (so that
    /// nothing is asked of the gateway when nothing fits), asks for a challenge, checks the
    /// gateway speaks as the requested facility, then signs a presentation bound to that
    /// challenge and DID.
    pub async fn present(
        &self,
        request: &PresentationRequest,
        gateway: &GatewayClient,
    ) -> Result<Value> {
        let held = self.store.all()?;
        let credentials = select(self.did(), &held, request, Utc::now())?;
        let challenge = gateway.challenge().await?;
        if challenge.domain != request.facility {
            return Err(WalletError::WrongGateway {
                expected: request.facility.clone(),
                got: challenge.domain,
            });
        }
        self.present_with(&credentials, &challenge.binding(), request.format)
            .await
    }

    /// Signs a presentation of `credentials` (as they travel) bound to `binding`.
    pub(crate) async fn present_with(
        &self,
        credentials: &[Value],
        binding: &PresentationBinding,
        format: ProofFormat,
    ) -> Result<Value> {
        Ok(federation::credentials::present(credentials, &self.key, binding, format).await?)
    }
}
