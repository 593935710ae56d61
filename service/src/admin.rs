//! Admin bearer tokens: the one shared secret a service's operator uses for its admin
//! endpoints (the issuer's issue and revoke, the gateway's patient links).
//!
//! There is no default token: without a token file the admin endpoints refuse every
//! call. The file must be 0600 and hold at least 16 characters; only its SHA-256 digest
//! is kept in memory, and presented tokens are compared by digest, so the comparison's
//! timing does not depend on the token.

use std::path::Path;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// Fewer characters than this cannot be a token anyone generated.
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

/// Why an admin token file was refused. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// Missing, unreadable, or open to group or others.
    #[error("admin_token_file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: federation::keys::KeyError,
    },
    #[error("admin_token_file {path}: not text")]
    NotText { path: String },
    #[error(
        "admin_token_file {path}: the admin token must be at least {MIN_TOKEN_CHARS} characters"
    )]
    TooShort { path: String },
}

/// Shows nothing of the token, not even its digest.
impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<AdminToken, AdminTokenError> {
        let shown = || path.display().to_string();
        let bytes =
            federation::keys::read_private(path).map_err(|source| AdminTokenError::Read {
                path: shown(),
                source,
            })?;
        let token = std::str::from_utf8(&bytes)
            .map_err(|_| AdminTokenError::NotText { path: shown() })?
            .trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(AdminTokenError::TooShort { path: shown() });
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `Authorization: Bearer <token>` carries this token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_checked_by_digest_from_a_closed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef-token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = AdminToken::load(&path).unwrap();
        let mut headers = HeaderMap::new();
        assert!(!token.admits(&headers));
        for (value, ok) in [
            ("Bearer 0123456789abcdef-token", true),
            ("Bearer 0123456789abcdef-tokeN", false),
            ("0123456789abcdef-token", false),
            ("Basic 0123456789abcdef-token", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(token.admits(&headers), ok, "{value}");
        }

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AdminToken::load(&path).unwrap_err();
        assert!(matches!(err, AdminTokenError::Read { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::write(dir.path().join("short"), "short").unwrap();
        std::fs::set_permissions(
            dir.path().join("short"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let err = AdminToken::load(&dir.path().join("short")).unwrap_err();
        assert!(matches!(err, AdminTokenError::TooShort { .. }), "{err}");
        assert!(err.to_string().contains("at least 16 characters"), "{err}");
    }
}
