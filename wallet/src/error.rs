//! The wallet's errors. Each message is one line that says what to do next.

use federation::client::ClientError;
use federation::credentials::IssueError;
use federation::keys::KeyError;
use federation::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("{0}")]
    Key(#[from] KeyError),

    #[error("no wallet in {path}: run `fedgate wallet init --dir {path}` first")]
    NotInitialized { path: String },

    #[error("cannot prepare the wallet folder {path}: {reason}")]
    Folder { path: String, reason: String },

    #[error("wallet store {path}: {reason}")]
    Storage { path: String, reason: String },

    /// The store's database (its message names the file).
    #[error("wallet store: {0}")]
    Database(#[from] storage::StoreError),

    #[error("{path} is an earlier fedgate's sled credential store, which this version does not read: keep using the earlier version for this wallet, or save its credentials with it (`fedgate wallet show`), move the folder away and import them again")]
    EarlierStore { path: String },

    #[error("the store in {path} belongs to {store_holder}, not to the key's DID {key_holder}; use the key file this wallet was created with")]
    HolderMismatch {
        path: String,
        store_holder: String,
        key_holder: String,
    },

    #[error("credential rejected, {0}")]
    Rejected(VerifyError),

    #[error("credential rejected: {0}")]
    NotAddressed(String),

    #[error("a different credential with id {id} is already stored; remove it first (`fedgate wallet remove {id}`)")]
    IdConflict { id: String },

    #[error("no credential {id} in this wallet (see `fedgate wallet list`)")]
    NotFound { id: String },

    #[error("the consent cannot be written as FHIR: {0}")]
    ConsentMapping(String),

    #[error("no privilege in this wallet covers domain {domain} at {facility}; import one from your credentialing office (`fedgate wallet import`)")]
    NoMatchingPrivilege { facility: String, domain: String },

    #[error("no active consent of patient {patient} permits {domain} data for purpose {purpose} at {facility}; ask the patient for one and import it")]
    NoMatchingConsent {
        patient: String,
        facility: String,
        domain: String,
        purpose: String,
    },

    #[error("no privilege and no research study credential in this wallet covers purpose {purpose} at {facility}; import the study credential issued to your network")]
    NoMatchingStudy { facility: String, purpose: String },

    #[error("a presentation carries at most {max} credentials; this one would carry {count}")]
    TooManyCredentials { count: usize, max: usize },

    #[error("invalid presentation request: {0}")]
    InvalidRequest(String),

    /// An OpenID4VP authorization request that cannot be answered, or a verifier that
    /// refused the answer.
    #[error("OpenID4VP: {0}")]
    Oid4vp(String),

    #[error("refusing to contact the gateway: {0}")]
    Outbound(#[from] ClientError),

    #[error("gateway {url} is unreachable: {reason}")]
    GatewayUnreachable { url: String, reason: String },

    #[error("gateway {url} answered with something other than the protocol: {reason}")]
    GatewayProtocol { url: String, reason: String },

    #[error("gateway refused ({status} {title}): {detail}")]
    GatewayError {
        status: u16,
        title: String,
        detail: String,
    },

    #[error("gateway sent an unusable challenge ({0}); nothing was signed")]
    BadChallenge(String),

    #[error("the gateway answered as {got}, but the request is for {expected}; nothing was signed (check --gateway and --facility)")]
    WrongGateway { expected: String, got: String },

    #[error("cannot sign: {0}")]
    Sign(#[from] IssueError),
    /// An SD-JWT VC could not be presented (a claim path it does not hold, a malformed
    /// stored credential).
    #[error("cannot present the SD-JWT VC: {0}")]
    SdJwt(#[from] federation::sdjwt::SdJwtError),
    /// A credential asked to be presented as an SD-JWT VC is in another format.
    #[error("credential {id} is not an SD-JWT VC (format {format}); present it in a presentation instead")]
    NotSdJwt { id: String, format: String },

    #[error("invalid consent: {0}")]
    InvalidConsent(String),

    #[error("credential {id} is a {kind}, not a consent (see `fedgate wallet consent list`)")]
    NotAConsent { id: String, kind: String },

    #[error("consent {id} was not granted by this wallet's holder; only the patient can register or withdraw it")]
    NotOwnConsent { id: String },

    #[error(
        "consent {id} has been withdrawn; it is never presented again (grant a new one if needed)"
    )]
    Withdrawn { id: String },

    #[error("gateway {gateway} is not a custodian of consent {id} (custodians: {custodians}); nothing was signed")]
    NotACustodian {
        id: String,
        gateway: String,
        custodians: String,
    },

    #[error("trust file {path}: {reason}")]
    TrustConfig {
        path: String,
        #[source]
        reason: TrustFileError,
    },

    #[error("{0:?} is not `now`, a date (YYYY-MM-DD) or an RFC 3339 date-time")]
    BadTime(String),

    #[error("unusable credential offer: {0}")]
    BadOffer(String),

    #[error("this offer needs the transaction code the credentialing office gave you (--tx-code); nothing was asked of the issuer")]
    TxCodeNeeded,

    #[error("issuer {url} is unreachable: {reason}")]
    IssuerUnreachable { url: String, reason: String },

    #[error(
        "issuer {url} answered with something other than OpenID4VCI: {reason}; nothing was stored"
    )]
    IssuerProtocol { url: String, reason: String },

    #[error("issuer refused at {url} ({status} {error}): {description}")]
    IssuerRefused {
        url: String,
        status: u16,
        error: String,
        description: String,
    },
}

/// What is wrong with a trust file (see `trust_config`); shown after its path.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("larger than 1 MiB")]
    TooLarge,
    #[error("{0}")]
    Json(#[from] federation::json::StrictJsonError),
    #[error("{0}")]
    Shape(#[from] serde_json::Error),
    #[error("not UTF-8")]
    NotUtf8,
    /// The message only: TOML's own rendering spans several lines.
    #[error("{}", .0.message())]
    Toml(#[from] toml::de::Error),
    #[error("didWeb key {0:?} is not a did:web")]
    NotDidWeb(String),
    #[error("didWeb {did}: {base:?} is not a URL ({source})")]
    BadBase {
        did: String,
        base: String,
        #[source]
        source: url::ParseError,
    },
    #[error("didWeb {did}: {source}")]
    Transport {
        did: String,
        #[source]
        source: ClientError,
    },
    #[error("unknown credential type {0:?} in trustedIssuers (ClinicianPrivilegeCredential, PatientConsentCredential or ResearchStudyCredential)")]
    UnknownType(String),
    #[error("trusted issuer {0:?} is not a did:key or did:web")]
    BadIssuer(String),
    #[error("trusted issuer {0} has no didWeb entry; add its base URL")]
    NoDidWebEntry(String),
}

pub type Result<T, E = WalletError> = std::result::Result<T, E>;

impl WalletError {
    pub(crate) fn storage(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        WalletError::Storage {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}
