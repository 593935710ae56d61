//! Checkpoints: the visibility log's signed tree heads, as C2SP tlog-checkpoint signed notes.
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//! [extension lines]
//!
//! — <key name> <base64(key ID || Ed25519 signature)>
//! ```
//!
//! The signature covers the body (everything before the blank line, final newline included).
//! The key ID is the first 4 bytes of SHA-256(key name || "\n" || 0x01 || public key), so a
//! verifier can tell which of its keys a line claims before spending a signature check.
//! Notes arrive over the network: [`open`] bounds their size and signature count, and turns
//! every malformed input into a [`NoteError`].

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::log::Hash;

/// The largest note [`open`] reads.
const MAX_NOTE_SIZE: usize = 16 * 1024;
/// The most signature lines [`open`] reads, known or not.
const MAX_SIGNATURES: usize = 100;

/// signed-note's algorithm byte for Ed25519.
const ALG_ED25519: u8 = 0x01;
/// Every signature line starts with an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("note is not UTF-8")]
    NotUtf8,
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    #[error("note has more than {max} signature lines")]
    TooManySignatures { max: usize },
    #[error("signature by known key {name} does not verify")]
    BadSignature { name: String },
    #[error("note carries no signature by a known key")]
    NoKnownSignature,
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidKeyName(String),
    #[error("not a usable Ed25519 public key")]
    InvalidPublicKey,
    #[error("invalid verifier key: {0}")]
    InvalidVerifierKey(&'static str),
}

fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
}

/// Control characters other than newline are banned from notes, so that what a person
/// reads is what was signed.
fn has_forbidden_control(text: &str) -> bool {
    text.chars().any(|c| c < ' ' && c != '\n')
}

/// The signed-note key ID of an Ed25519 key: SHA-256(name || "\n" || 0x01 || key)[..4].
fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ALG_ED25519])
        .chain_update(public_key)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// An Ed25519 note verifier: the key name, its key ID and the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `name`, refusing names a note line could not carry and weak keys.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_string()));
        }
        let key = VerifyingKey::from_bytes(&public_key).map_err(|_| NoteError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(NoteError::InvalidPublicKey);
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            key_id: key_id(name, &public_key),
            public_key: key,
        })
    }

    /// The verifier matching a signing key.
    pub fn from_signing_key(name: &str, key: &SigningKey) -> Result<Self, NoteError> {
        Self::new(name, key.verifying_key().to_bytes())
    }

    /// The verifier key string: `<name>+<hex key ID>+<base64(0x01 || public key)>`.
    pub fn vkey(&self) -> String {
        let mut key = Vec::with_capacity(33);
        key.push(ALG_ED25519);
        key.extend_from_slice(self.public_key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            B64.encode(key)
        )
    }

    /// Parses a verifier key string, checking that its key ID matches its name and key.
    pub fn parse_vkey(vkey: &str) -> Result<Self, NoteError> {
        // The name cannot hold '+', the key ID is hex, and the base64 key may hold '+':
        // so split twice from the left.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::InvalidVerifierKey("expected name+id+key"));
        };
        if id_hex.len() != 8 {
            return Err(NoteError::InvalidVerifierKey("key ID is not 8 hex digits"));
        }
        let id: [u8; 4] = hex::decode(id_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(NoteError::InvalidVerifierKey("key ID is not 8 hex digits"))?;
        let key = B64
            .decode(key_b64)
            .map_err(|_| NoteError::InvalidVerifierKey("key is not base64"))?;
        let (alg, public) = key
            .split_first()
            .ok_or(NoteError::InvalidVerifierKey("empty key"))?;
        if *alg != ALG_ED25519 {
            return Err(NoteError::InvalidVerifierKey("not an Ed25519 key"));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::InvalidVerifierKey("Ed25519 key is not 32 bytes"))?;
        let verifier = Self::new(name, public)?;
        if verifier.key_id != id {
            return Err(NoteError::InvalidVerifierKey(
                "key ID does not match the name and key",
            ));
        }
        Ok(verifier)
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.vkey())
    }
}

impl FromStr for NoteVerifier {
    type Err = NoteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_vkey(s)
    }
}

/// Signs `text` (non-empty, newline-terminated, no blank lines or control characters) and
/// returns the note with one signature line.
fn sign_note(text: &str, key_name: &str, key: &SigningKey) -> Result<String, NoteError> {
    if !is_valid_key_name(key_name) {
        return Err(NoteError::InvalidKeyName(key_name.to_string()));
    }
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed("text must end with a newline"));
    }
    if text.starts_with('\n') || text.contains("\n\n") {
        return Err(NoteError::Malformed("text must not contain blank lines"));
    }
    if has_forbidden_control(text) {
        return Err(NoteError::Malformed("text contains a control character"));
    }
    let public = key.verifying_key().to_bytes();
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&key_id(key_name, &public));
    blob.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
    Ok(format!(
        "{text}\n{SIG_PREFIX}{key_name} {}\n",
        B64.encode(blob)
    ))
}

/// Verifies a signed note and returns its text. Lines by unknown keys are skipped; at least
/// one line by a known key is required, and any known key's line must verify.
fn open_note<'a>(note: &'a str, verifiers: &[NoteVerifier]) -> Result<&'a str, NoteError> {
    if note.len() > MAX_NOTE_SIZE {
        return Err(NoteError::TooLarge {
            size: note.len(),
            max: MAX_NOTE_SIZE,
        });
    }
    if has_forbidden_control(note) {
        return Err(NoteError::Malformed("control character"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    let sigs = sigs
        .strip_suffix('\n')
        .filter(|s| !s.is_empty())
        .ok_or(NoteError::Malformed(
            "signature block must end with a newline",
        ))?;
    if sigs.split('\n').nth(MAX_SIGNATURES).is_some() {
        return Err(NoteError::TooManySignatures {
            max: MAX_SIGNATURES,
        });
    }

    // The signature each known key was verified with. Ed25519 signatures checked strictly
    // are unique per key and text, so only byte-identical repeats can be skipped: any
    // other line claiming a known key is checked, and is bad.
    let mut checked: Vec<Option<Signature>> = vec![None; verifiers.len()];
    let mut verified = false;
    for line in sigs.split('\n') {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed(
            "signature line must start with an em dash",
        ))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line has no signature"))?;
        if !is_valid_key_name(name) || b64.is_empty() {
            return Err(NoteError::Malformed("bad signature line"));
        }
        let blob = B64
            .decode(b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        let (id, sig) = blob.split_at(4);
        let Some(at) = verifiers
            .iter()
            .position(|v| v.name == name && v.key_id.as_slice() == id)
        else {
            continue;
        };
        let bad = || NoteError::BadSignature {
            name: name.to_string(),
        };
        let sig = Signature::from_slice(sig).map_err(|_| bad())?;
        let slot = checked.get_mut(at).ok_or_else(bad)?;
        if slot.as_ref() == Some(&sig) {
            continue;
        }
        verifiers[at]
            .public_key
            .verify_strict(text.as_bytes(), &sig)
            .map_err(|_| bad())?;
        *slot = Some(sig);
        verified = true;
    }
    if !verified {
        return Err(NoteError::NoKnownSignature);
    }
    Ok(text)
}

/// A tree head of a log: its origin (the log's name), size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Extra body lines after the root, each non-empty.
    pub extensions: Vec<String>,
}

fn parse_size(line: &str) -> Result<u64, NoteError> {
    let bad = NoteError::MalformedCheckpoint("tree size is not a canonical decimal");
    if line.is_empty()
        || !line.bytes().all(|b| b.is_ascii_digit())
        || (line.len() > 1 && line.starts_with('0'))
    {
        return Err(bad);
    }
    line.parse().map_err(|_| bad)
}

impl Checkpoint {
    pub fn new(origin: &str, size: u64, root: Hash) -> Self {
        Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The signed text: origin, size, base64 root, extension lines, each newline-terminated.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        body
    }

    fn check(&self) -> Result<(), NoteError> {
        if self.origin.is_empty() || self.origin.contains('\n') {
            return Err(NoteError::MalformedCheckpoint(
                "origin must be one non-empty line",
            ));
        }
        if self
            .extensions
            .iter()
            .any(|l| l.is_empty() || l.contains('\n'))
        {
            return Err(NoteError::MalformedCheckpoint(
                "extensions must be non-empty single lines",
            ));
        }
        Ok(())
    }

    /// The signed note of this checkpoint. Fails on an origin or extension that would not
    /// read back as the same checkpoint, and on a key name a note cannot carry.
    pub fn sign(&self, key_name: &str, signing_key: &SigningKey) -> Result<String, NoteError> {
        self.check()?;
        sign_note(&self.body(), key_name, signing_key)
    }

    /// Parses the text of a checkpoint note, which [`open`] has verified. Public so that
    /// the body parser can be fuzzed on its own, without a signature in front of it.
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let content = text
            .strip_suffix('\n')
            .ok_or(NoteError::MalformedCheckpoint(
                "body must end with a newline",
            ))?;
        let mut lines = content.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(NoteError::MalformedCheckpoint("empty origin"));
        }
        let size = parse_size(
            lines
                .next()
                .ok_or(NoteError::MalformedCheckpoint("no tree size"))?,
        )?;
        let root = B64
            .decode(
                lines
                    .next()
                    .ok_or(NoteError::MalformedCheckpoint("no root hash"))?,
            )
            .ok()
            .and_then(|r| Hash::try_from(r.as_slice()).ok())
            .ok_or(NoteError::MalformedCheckpoint(
                "root hash is not 32 bytes of base64",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(NoteError::MalformedCheckpoint("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }
}

/// Verifies a checkpoint note against `verifiers` and parses it.
pub fn open(note: &str, verifiers: &[NoteVerifier]) -> Result<Checkpoint, NoteError> {
    let text = open_note(note, verifiers)?;
    Checkpoint::parse_body(text)
}

/// [`open`] for raw bytes off the wire: the size is checked before anything is decoded.
pub fn open_bytes(note: &[u8], verifiers: &[NoteVerifier]) -> Result<Checkpoint, NoteError> {
    if note.len() > MAX_NOTE_SIZE {
        return Err(NoteError::TooLarge {
            size: note.len(),
            max: MAX_NOTE_SIZE,
        });
    }
    let note = std::str::from_utf8(note).map_err(|_| NoteError::NotUtf8)?;
    open(note, verifiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn sample() -> Checkpoint {
        let mut root = [0u8; 32];
        for (i, b) in root.iter_mut().enumerate() {
            *b = i as u8;
        }
        Checkpoint::new("visibility.fedgate.example/log", 1234, root)
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let v = NoteVerifier::from_signing_key("visibility.fedgate.example", &k).unwrap();
        let mut cp = sample();
        let note = cp.sign("visibility.fedgate.example", &k).unwrap();
        assert_eq!(open(&note, std::slice::from_ref(&v)).unwrap(), cp);
        assert_eq!(
            open_bytes(note.as_bytes(), std::slice::from_ref(&v)).unwrap(),
            cp
        );

        cp.extensions = vec!["timestamp 1700000000".into(), "x y".into()];
        let note = cp.sign("visibility.fedgate.example", &k).unwrap();
        assert_eq!(open(&note, std::slice::from_ref(&v)).unwrap(), cp);

        // Size 0 and the largest size read back.
        for size in [0, u64::MAX] {
            let cp = Checkpoint::new("o", size, [9; 32]);
            let note = cp.sign("visibility.fedgate.example", &k).unwrap();
            assert_eq!(open(&note, std::slice::from_ref(&v)).unwrap(), cp);
        }
    }

    #[test]
    fn exact_format() {
        let k = key(2);
        let cp = sample();
        let body =
            "visibility.fedgate.example/log\n1234\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
        assert_eq!(cp.body(), body);
        let note = cp.sign("log-key", &k).unwrap();
        let (text, sig_line) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{text}\n"), body);
        let sig_line = sig_line.strip_suffix('\n').unwrap();
        let b64 = sig_line.strip_prefix("\u{2014} log-key ").unwrap();
        let blob = B64.decode(b64).unwrap();
        assert_eq!(blob.len(), 68);

        // Key ID computed from the formula, not taken from a verifier.
        let public = k.verifying_key().to_bytes();
        let mut preimage = b"log-key\n\x01".to_vec();
        preimage.extend_from_slice(&public);
        assert_eq!(blob[..4], Sha256::digest(&preimage)[..4]);
        let sig = Signature::from_slice(&blob[4..]).unwrap();
        k.verifying_key()
            .verify_strict(body.as_bytes(), &sig)
            .unwrap();
    }

    /// The signed-note example of the Go reference implementation (golang.org/x/mod/sumdb/note).
    #[test]
    fn known_answer_from_the_reference_implementation() {
        let skey = B64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap();
        assert_eq!(skey[0], ALG_ED25519);
        let k = SigningKey::from_bytes(&skey[1..].try_into().unwrap());
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let v = NoteVerifier::from_signing_key("PeterNeumann", &k).unwrap();
        assert_eq!(v.vkey(), vkey);
        assert_eq!(v.key_id, [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(NoteVerifier::parse_vkey(vkey).unwrap(), v);
        assert_eq!(vkey.parse::<NoteVerifier>().unwrap().to_string(), vkey);

        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let want = format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        assert_eq!(sign_note(text, "PeterNeumann", &k).unwrap(), want);
        assert_eq!(open_note(&want, &[v]).unwrap(), text);
    }

    #[test]
    fn vkey_parsing_is_strict() {
        let v = NoteVerifier::from_signing_key("log", &key(3)).unwrap();
        let good = v.vkey();
        assert_eq!(NoteVerifier::parse_vkey(&good).unwrap(), v);
        let (name, rest) = good.split_once('+').unwrap();
        let (id, b64) = rest.split_once('+').unwrap();
        for bad in [
            String::new(),
            "log".into(),
            format!("{name}+{id}"),
            format!("other+{id}+{b64}"),
            format!("{name}+00000000+{b64}"),
            format!("{name}+{}+{b64}", &id[..7]),
            format!("{name}+{id}0+{b64}"),
            format!("{name}+zzzzzzzz+{b64}"),
            format!("{name}+{id}+{}", &b64[..b64.len() - 4]),
            format!("{name}+{id}+{}", B64.encode([2u8; 33])),
            format!("{name}+{id}+"),
            format!("a b+{id}+{b64}"),
            format!("+{id}+{b64}"),
        ] {
            assert!(NoteVerifier::parse_vkey(&bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            NoteVerifier::new("has space", [1; 32]),
            Err(NoteError::InvalidKeyName(_))
        ));
        assert!(matches!(
            NoteVerifier::new("a+b", [1; 32]),
            Err(NoteError::InvalidKeyName(_))
        ));
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            NoteVerifier::new("log", identity),
            Err(NoteError::InvalidPublicKey)
        );
    }

    #[test]
    fn tampering_fails() {
        let k = key(4);
        let v = NoteVerifier::from_signing_key("log", &k).unwrap();
        let cp = sample();
        let note = cp.sign("log", &k).unwrap();
        let root_b64 = B64.encode(cp.root);
        let mut other_root = cp.root;
        other_root[0] ^= 1;
        for tampered in [
            note.replace("\n1234\n", "\n1235\n"),
            note.replace(&root_b64, &B64.encode(other_root)),
            note.replace(
                "visibility.fedgate.example/log",
                "visibility.fedgate.example/lag",
            ),
        ] {
            assert_ne!(tampered, note);
            assert!(
                matches!(
                    open(&tampered, std::slice::from_ref(&v)),
                    Err(NoteError::BadSignature { .. })
                ),
                "{tampered}"
            );
        }
        // A signature by another key under the same name and ID does not verify.
        let forged = Checkpoint::new("visibility.fedgate.example/log", 9999, [0; 32])
            .sign("log", &key(5))
            .unwrap();
        let (_, sig5) = forged.rsplit_once(' ').unwrap();
        let (_, id4) = note.rsplit_once(' ').unwrap();
        let mut blob = B64.decode(sig5.trim_end()).unwrap();
        blob[..4].copy_from_slice(&B64.decode(id4.trim_end()).unwrap()[..4]);
        let forged = format!(
            "{}\u{2014} log {}\n",
            forged.split_once("\u{2014}").unwrap().0,
            B64.encode(&blob)
        );
        assert!(matches!(
            open(&forged, std::slice::from_ref(&v)),
            Err(NoteError::BadSignature { .. })
        ));
        // A good line followed by a different line claiming the same key.
        let second = format!("{note}\u{2014} log {}\n", B64.encode(&blob));
        assert!(matches!(
            open(&second, std::slice::from_ref(&v)),
            Err(NoteError::BadSignature { .. })
        ));
        // The same good line twice is fine.
        let twice = format!("{note}{}", note.split_once("\n\n").unwrap().1);
        assert_eq!(open(&twice, std::slice::from_ref(&v)).unwrap(), cp);
        // A truncated signature by a known key is a bad signature, not an unknown one.
        let short = format!("{}\n\u{2014} log {}\n", cp.body(), B64.encode(&blob[..40]));
        assert!(matches!(
            open(&short, &[v]),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn signers_known_and_unknown() {
        let (k1, k2, k3) = (key(6), key(7), key(8));
        let v1 = NoteVerifier::from_signing_key("log", &k1).unwrap();
        let v2 = NoteVerifier::from_signing_key("witness", &k2).unwrap();
        let cp = sample();
        let note = cp.sign("log", &k1).unwrap();

        // Only an unknown signer.
        assert_eq!(
            open(&note, std::slice::from_ref(&v2)),
            Err(NoteError::NoKnownSignature)
        );
        assert_eq!(open(&note, &[]), Err(NoteError::NoKnownSignature));
        // Same name, other key: a different key ID, so an unknown signer.
        let v1_other = NoteVerifier::from_signing_key("log", &k3).unwrap();
        assert_eq!(open(&note, &[v1_other]), Err(NoteError::NoKnownSignature));

        // Cosigned: an unknown line first is skipped, the known one verifies.
        let witness_line = cp.sign("someone-else", &k3).unwrap();
        let witness_line = witness_line.split_once("\n\n").unwrap().1;
        let cosigned = format!("{note}{witness_line}");
        assert_eq!(open(&cosigned, std::slice::from_ref(&v1)).unwrap(), cp);
        let cosigned = format!(
            "{}\n{witness_line}{}",
            cp.body(),
            note.split_once("\n\n").unwrap().1
        );
        assert_eq!(open(&cosigned, &[v1.clone(), v2]).unwrap(), cp);
    }

    #[test]
    fn too_many_signature_lines() {
        let k = key(9);
        let v = NoteVerifier::from_signing_key("log", &k).unwrap();
        let cp = sample();
        let note = cp.sign("log", &k).unwrap();
        let line = note.split_once("\n\n").unwrap().1;
        let unknown = cp.sign("other", &key(10)).unwrap();
        let unknown = unknown.split_once("\n\n").unwrap().1;

        let with = |extra: usize| format!("{note}{}", unknown.repeat(extra));
        assert_eq!(
            open(&with(MAX_SIGNATURES - 1), std::slice::from_ref(&v)).unwrap(),
            cp
        );
        assert_eq!(
            open(&with(MAX_SIGNATURES), std::slice::from_ref(&v)),
            Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES
            })
        );
        // Repeats of the known line count too.
        let repeated = format!("{}\n{}", cp.body(), line.repeat(MAX_SIGNATURES + 1));
        assert!(repeated.len() < MAX_NOTE_SIZE);
        assert!(matches!(
            open(&repeated, &[v]),
            Err(NoteError::TooManySignatures { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let k = key(11);
        let v = NoteVerifier::from_signing_key("log", &k).unwrap();
        let vs = [v];
        let body = sample().body();
        let big = "a".repeat(MAX_NOTE_SIZE + 1);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"\n".to_vec(),
            b"\n\n".to_vec(),
            b"\n\n\n".to_vec(),
            vec![0xff, 0xfe, b'\n', b'\n'],
            b"origin\n1\nAAAA\n\n\xe2\x80\x94 log AAAA\n".to_vec(),
            format!("{body}\n").into_bytes(),
            format!("{body}\n\u{2014} log\n").into_bytes(),
            format!("{body}\n\u{2014} log \n").into_bytes(),
            format!("{body}\n\u{2014} log !!!!\n").into_bytes(),
            format!("{body}\n- log AAAAAAAAAAAAAAAA\n").into_bytes(),
            format!("{body}\n\u{2014} log AAAAAAAAAAAAAAAA").into_bytes(),
            format!("{body}\r\n\u{2014} log AAAAAAAAAAAAAAAA\n").into_bytes(),
            big.into_bytes(),
        ];
        for case in cases {
            assert!(open_bytes(&case, &vs).is_err(), "{case:?}");
        }
        assert_eq!(open_bytes(&[0xff; 10], &vs), Err(NoteError::NotUtf8));

        // Bodies that are signed but are not checkpoints.
        for text in [
            "only-origin\n",
            "origin\n01\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "origin\n+1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "origin\n-1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "origin\n18446744073709551616\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "origin\n1 \nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "origin\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",
            "origin\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n",
            "origin\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=AA==\n",
            "origin\n1\n",
        ] {
            let note = sign_note(text, "log", &k).unwrap();
            assert!(
                matches!(open(&note, &vs), Err(NoteError::MalformedCheckpoint(_))),
                "{text:?}"
            );
        }
        // Blank lines cannot be signed by sign_note, but a hand-made note may carry them.
        for text in [
            "origin\n\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "origin\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\next\n",
            "\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            "",
        ] {
            assert!(Checkpoint::parse_body(text).is_err(), "{text:?}");
        }
        // Checkpoints that would not read back are refused when signing.
        let mut cp = sample();
        cp.origin = String::new();
        assert!(cp.sign("log", &k).is_err());
        cp.origin = "two\nlines".into();
        assert!(cp.sign("log", &k).is_err());
        cp.origin = "tab\there".into();
        assert!(cp.sign("log", &k).is_err());
        cp = sample();
        cp.extensions = vec![String::new()];
        assert!(cp.sign("log", &k).is_err());
        assert!(sample().sign("bad name", &k).is_err());
        assert!(sample().sign("", &k).is_err());
    }

    #[test]
    fn mutated_notes_never_open_and_never_panic() {
        let k = key(12);
        let v = NoteVerifier::from_signing_key("log", &k).unwrap();
        let vs = [v];
        let mut cp = sample();
        cp.extensions = vec!["ext".into()];
        let note = cp.sign("log", &k).unwrap().into_bytes();
        assert!(open_bytes(&note, &vs).is_ok());

        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut tried = 0;
        // Every byte flipped, deleted and duplicated, then random multi-byte mutations.
        for i in 0..note.len() {
            // The lowest bit changes an ASCII character, the highest breaks UTF-8 or
            // turns a multi-byte sequence into another.
            for bit in [0, 7] {
                let mut m = note.clone();
                m[i] ^= 1 << bit;
                assert!(open_bytes(&m, &vs).is_err(), "flip {i}.{bit}");
                tried += 1;
            }
            let mut m = note.clone();
            m.remove(i);
            assert!(open_bytes(&m, &vs).is_err(), "delete {i}");
            let mut m = note.clone();
            m.insert(i, note[i]);
            assert!(open_bytes(&m, &vs).is_err(), "duplicate {i}");
            tried += 2;
        }
        for _ in 0..500 {
            let mut m = note.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % m.len() as u64) as usize;
                match next() % 3 {
                    0 => m[at] = next() as u8,
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, next() as u8),
                }
                if m.is_empty() {
                    break;
                }
            }
            if m != note {
                assert!(open_bytes(&m, &vs).is_err());
            }
            tried += 1;
        }
        assert!(tried > 1000);
    }
}
