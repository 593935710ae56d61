//! base64url without padding (RFC 4648 §5), the one encoding of JOSE (RFC 7515 §2): JWS
//! segments, JWK members, the signed manifest, status lists, tokens. One engine for the
//! whole federation, so that every reader refuses the same inputs (padding, the standard
//! alphabet, non-zero trailing bits).

use base64::Engine as _;

use base64::DecodeError;

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `bytes` in base64url, without padding.
pub fn encode(bytes: &[u8]) -> String {
    ENGINE.encode(bytes)
}

/// The bytes of base64url text without padding; anything else is an error.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    ENGINE.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_uses_the_url_alphabet_without_padding() {
        let bytes = [0xfb, 0xff, 0xbf, 0x00, 0x01];
        let text = encode(&bytes);
        assert_eq!(text, "-_-_AAE");
        assert_eq!(decode(&text).unwrap(), bytes);
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn refuses_padding_the_standard_alphabet_and_trailing_bits() {
        assert!(decode("AA==").is_err(), "padding");
        assert!(decode("+/+/").is_err(), "standard alphabet");
        assert!(decode("AB").is_err(), "non-zero trailing bits");
        assert!(decode("A").is_err(), "impossible length");
        assert!(decode("AA AA").is_err(), "whitespace");
    }
}
