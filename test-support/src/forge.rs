//! Signed documents as a signer whose software writes hostile JSON would produce them:
//! exactly the given bytes, with a valid signature.

use federation::keys::KeyPair;

/// A compact JWS over exactly these header and payload bytes, signed by `key` (Ed25519):
/// what a signer whose software writes hostile JSON produces, with a valid signature.
pub fn sign_raw_jws(header: &[u8], payload: &[u8], key: &KeyPair) -> String {
    use ed25519_dalek::Signer;
    use federation::b64;
    let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
    let signature = key.ed25519_signing_key().unwrap().sign(input.as_bytes());
    format!("{input}.{}", b64::encode(&signature.to_bytes()))
}

/// The header and payload bytes of a compact JWS.
pub fn jws_parts(jws: &str) -> (Vec<u8>, Vec<u8>) {
    use federation::b64;
    let mut parts = jws.split('.');
    let header = b64::decode(parts.next().unwrap()).unwrap();
    let payload = b64::decode(parts.next().unwrap()).unwrap();
    (header, payload)
}

/// `doc` (a serialized JSON object) made ambiguous in the four ways the strict reader
/// refuses: `key` given twice (first with the JSON text `first`, then its own value),
/// invalid UTF-8, a lone surrogate escape, nesting beyond the limit.
pub fn hostile_json(doc: &[u8], key: &str, first: &str) -> Vec<(&'static str, Vec<u8>)> {
    let text = std::str::from_utf8(doc).unwrap();
    let needle = format!("\"{key}\":");
    let at = text.find(&needle).expect("the key to duplicate");
    let duplicate = format!("{}{needle}{first},{}", &text[..at], &text[at..]);
    let member = |value: &[u8]| {
        let mut out = b"{\"note\":".to_vec();
        out.extend_from_slice(value);
        out.push(b',');
        out.extend_from_slice(&doc[1..]);
        out
    };
    let deep = format!("{}{}", "[".repeat(80), "]".repeat(80));
    vec![
        ("duplicate key", duplicate.into_bytes()),
        ("invalid UTF-8", member(b"\"\xff\xfe\"")),
        ("lone surrogate", member(br#""\ud800""#)),
        ("too deep", member(deep.as_bytes())),
    ]
}
