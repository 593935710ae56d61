//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus smoke tests that `cargo test` runs (`tests/fuzz_smoke.rs`), plus the seeded
//! mutator and runner those tests use.
//!
//! Each body takes arbitrary bytes and drives one parser that reads input from outside the
//! process, as the service that owns it would. It panics only where an invariant of the
//! code under test does not hold; every other panic is a bug in that code. A body returns
//! whether the input was accepted, so that a test can check that real inputs still are.
//!
//! The fixtures (keys, challenge, verifier DID, governance) are fixed so that the
//! committed seed corpus under `fuzz/corpus/<target>/` stays valid: seeds
//! signed with these keys keep verifying. Nothing here touches the network: did:key is
//! resolved locally, no did:web is in the allow-map, and no status list origin is
//! registered.

pub mod gateway;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde_json::Value;

use federation::checkpoint::{self, Checkpoint, NoteVerifier};
use federation::credentials::{self, CredentialKind, PresentationBinding};
use federation::did::{DidResolver, Relationship};
use federation::jose::{self, JoseError};
use federation::registry::{Governance, Manifest, Registry, SignedManifest, MAX_MANIFEST_BYTES};
use federation::status::{Bitstring, StatusCache};
use federation::trust::TrustSource;
use federation::verify::{Check, Verifier, VerifyError, MAX_EMBEDDED_CREDENTIALS};

/// The challenge every presentation seed answers.
pub const CHALLENGE: &str = "fuzz-challenge-5c0b7e21";
/// The DID of the verifier presentations are bound to (their `aud` / `proof.domain`).
const VERIFIER_DID: &str = "did:web:gateway.fuzz.example";
/// The visibility log's name: the checkpoint origin and the note key name.
pub const LOG_NAME: &str = "did:web:visibility.fuzz.example";
/// Seed of the log's Ed25519 checkpoint key.
const LOG_KEY_SEED: [u8; 32] = [0x4c; 32];
/// Seeds of the three Ed25519 governance keys; two signatures are required.
pub const GOVERNANCE_SEEDS: [[u8; 32]; 3] = [[0x61; 32], [0x62; 32], [0x63; 32]];
const GOVERNANCE_THRESHOLD: u32 = 2;

/// The binding a presentation seed is made for.
pub fn binding() -> PresentationBinding {
    PresentationBinding {
        challenge: CHALLENGE.to_string(),
        domain: VERIFIER_DID.to_string(),
    }
}

pub fn log_signing_key() -> SigningKey {
    SigningKey::from_bytes(&LOG_KEY_SEED)
}

/// The did:key verification method of the Ed25519 key with this seed
/// (`did:key:z6Mk…#z6Mk…`: multicodec 0xed01 and the public key, base58btc).
pub fn did_key_method(seed: &[u8; 32]) -> String {
    let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(&public);
    let id = multibase::encode(multibase::Base::Base58Btc, bytes);
    format!("did:key:{id}#{id}")
}

/// The pinned governance manifests are verified against.
pub fn governance() -> Governance {
    Governance {
        threshold: GOVERNANCE_THRESHOLD,
        keys: GOVERNANCE_SEEDS.iter().map(did_key_method).collect(),
    }
}

/// Trusts every issuer: which issuers are trusted is configuration, and trusting all lets
/// the fuzzer reach the checks that come after trust (status, holder binding).
struct TrustAll;

impl TrustSource for TrustAll {
    fn is_trusted(&self, _kind: CredentialKind, _issuer: &str) -> bool {
        true
    }
}

/// What the bodies share, built once per process.
struct Harness {
    resolver: Arc<DidResolver>,
    verifier: Verifier,
    log: NoteVerifier,
    governance: Governance,
}

thread_local! {
    /// One runtime per thread, so that test threads running bodies side by side do not
    /// queue on one runtime.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        // Depends on nothing from the input: without a runtime the fuzzer cannot run.
        .unwrap_or_else(|e| panic!("fuzz harness: no tokio runtime: {e}"));
}

/// Runs `future` to completion on this thread's runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // The HTTP client inside the resolver and the status cache is built in a runtime's
        // context; it is never used, since nothing here is fetched.
        let handle = RUNTIME.with(|runtime| runtime.handle().clone());
        let _entered = handle.enter();
        let resolver = Arc::new(DidResolver::new(false));
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            Duration::from_secs(60),
            false,
        ));
        let verifier = Verifier::new(resolver.clone(), Arc::new(TrustAll), status);
        // A fixed, valid key and name: this cannot fail.
        let log = NoteVerifier::from_signing_key(LOG_NAME, &log_signing_key())
            .unwrap_or_else(|e| panic!("fuzz harness: log key: {e}"));
        Harness {
            resolver,
            verifier,
            log,
            governance: governance(),
        }
    })
}

/// A presentation or credential as a service receives it: a JSON value (the `presentation`
/// member of a request, an object or a string), or a bare compact JWS.
fn json_or_compact(data: &[u8]) -> Option<Value> {
    match federation::json::parse_strict(data) {
        Ok(value) => Some(value),
        Err(_) => std::str::from_utf8(data)
            .ok()
            .map(|s| Value::String(s.to_string())),
    }
}

/// What a fuzz body says of one input: accepted, or rejected with the reason.
pub type Outcome = anyhow::Result<()>;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The pipeline runs Data Integrity verification on the blocking pool, which turns a panic
/// there into an error; it is still a panic on input, and a bug.
fn no_panic_in_task(e: VerifyError) -> anyhow::Error {
    assert!(
        !e.detail.starts_with("verification aborted"),
        "a verification task panicked: {e}"
    );
    err(e)
}

/// A presentation through the whole pipeline, as a gateway verifies `POST /v1/exchange/*`:
/// the claimed challenge is read first, then the presentation and every embedded
/// credential are verified.
pub fn presentation(data: &[u8]) -> anyhow::Result<()> {
    let input = json_or_compact(data).ok_or_else(|| err("neither JSON nor UTF-8"))?;
    let claimed = federation::verify::claimed_challenge(&input);
    let h = harness();
    let verified = block_on(h.verifier.verify_presentation(&input, &binding()));
    // Reading the challenge makes the checks verification makes first, so a refusal there
    // is verification's own refusal, under the same check: a forged header is never
    // reported as a replay.
    if let Err(early) = &claimed {
        if early.check != Check::Challenge {
            assert_eq!(
                verified.as_ref().err(),
                Some(early),
                "reading the challenge and verifying disagree"
            );
        }
    }
    let vp = verified.map_err(no_panic_in_task)?;
    assert_eq!(
        claimed.as_ref().ok().map(String::as_str),
        Some(CHALLENGE),
        "an accepted presentation answers the verifier's challenge"
    );
    assert!(
        (1..=MAX_EMBEDDED_CREDENTIALS).contains(&vp.credentials.len()),
        "an accepted presentation carries 1 to {MAX_EMBEDDED_CREDENTIALS} credentials"
    );
    assert!(vp.holder.starts_with("did:"), "the holder is a DID");
    for vc in &vp.credentials {
        assert!(vc.checks.contains(&Check::Proof) && vc.checks.contains(&Check::Schema));
    }
    Ok(())
}

/// One credential as it travels (a `vc+jwt`, an enveloped JWT or a Data Integrity
/// document), through the credential pipeline.
pub fn credential(data: &[u8]) -> anyhow::Result<()> {
    let input = json_or_compact(data).ok_or_else(|| err("neither JSON nor UTF-8"))?;
    let claimed_kind = CredentialKind::of_credential(&input);
    let enveloped = credentials::unwrap_enveloped(&input).is_some();
    let h = harness();
    let vc = block_on(h.verifier.verify_credential(&input)).map_err(no_panic_in_task)?;
    assert!(vc.issuer.starts_with("did:"), "the issuer is a DID");
    if input.is_object() && !enveloped {
        // A Data Integrity credential is verified as it reads.
        assert_eq!(
            claimed_kind,
            Ok(vc.kind),
            "the verified kind is the one claimed"
        );
    }
    Ok(())
}

/// A compact JWS: split and decoded with the header rules, and its signature checked
/// against the did:key its `kid` names. A status list's `encodedList` is inflated, as a
/// verifier does with every list it fetches.
pub fn jwt(data: &[u8]) -> anyhow::Result<()> {
    let text = std::str::from_utf8(data).map_err(err)?;
    let decoded = jose::decode(text).map_err(err)?;
    // The size limit is inclusive and checked before anything is parsed.
    let at_limit = jose::decode_with_limit(text, text.len()).map_err(err)?;
    assert_eq!(at_limit.digest(), decoded.digest());
    assert_eq!(
        jose::decode_with_limit(text, text.len() - 1).map(|d| d.digest()),
        Err(JoseError::TooLarge)
    );
    assert!(decoded.payload.is_object(), "the payload is an object");
    assert!(decoded.kid.starts_with("did:") && decoded.kid.contains('#'));
    if let Some(list) = decoded.payload["credentialSubject"]["encodedList"].as_str() {
        let _ = Bitstring::decode(list);
    }
    let h = harness();
    let (key, _) = block_on(
        h.resolver
            .public_key(&decoded.kid, Relationship::AssertionMethod),
    )
    .map_err(err)?;
    decoded.verify(&key).map_err(err)
}

/// A signed federation manifest installed into a registry pinned to [`governance`], as a
/// service loads one; and the manifest parser on its own, which a fuzzer could not reach
/// through the signatures.
pub fn manifest(data: &[u8]) -> anyhow::Result<()> {
    if let Ok(m) = Manifest::from_json(data) {
        manifest_invariants(&m);
    }
    let signed = SignedManifest::from_json(data).map_err(err)?;
    if let Ok(m) = signed.unverified_manifest() {
        manifest_invariants(&m);
    }
    let h = harness();
    let registry = Registry::new(h.governance.clone(), false);
    registry.install(&signed).map_err(err)?;
    let installed = registry
        .current()
        .ok_or_else(|| err("an installed manifest is the one in force"))?;
    assert_eq!(
        signed.carries(&installed),
        Ok(true),
        "the manifest in force is the one signed"
    );
    // Every signature is by a pinned governance key, and enough distinct keys signed.
    let signers: std::collections::BTreeSet<String> = signed.signers().into_iter().collect();
    assert!(signers.iter().all(|s| h.governance.keys.contains(s)));
    assert!(signers.len() >= h.governance.threshold as usize);
    // Every member's did:web base goes into the resolver's allow-map.
    let _ = registry.web_allow_map();
    Ok(())
}

fn manifest_invariants(m: &Manifest) {
    let strict = m.validate(false);
    let lenient = m.validate(true);
    assert!(
        strict.is_err() || lenient.is_ok(),
        "a manifest valid for production is valid in dev mode"
    );
    // The signed form reads back as the same manifest.
    if let Ok(bytes) = m.canonical_bytes() {
        if bytes.len() <= MAX_MANIFEST_BYTES {
            assert_eq!(Manifest::from_json(&bytes).as_ref(), Ok(m));
        }
    }
}

/// A checkpoint note opened with the log's key, as a gateway reads the log's signed tree
/// heads; and the note's text through the checkpoint body parser on its own, which a
/// fuzzer could not reach through the signature.
pub fn checkpoint(data: &[u8]) -> anyhow::Result<()> {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = NoteVerifier::parse_vkey(text);
        let body = match text.split_once("\n\n") {
            Some((head, _)) => format!("{head}\n"),
            None => text.to_string(),
        };
        if let Ok(cp) = Checkpoint::parse_body(&body) {
            assert_eq!(cp.body(), body, "a checkpoint reads back as it was written");
        }
    }
    let h = harness();
    let cp = checkpoint::open_bytes(data, std::slice::from_ref(&h.log)).map_err(err)?;
    assert!(
        data.starts_with(cp.body().as_bytes()),
        "an accepted note starts with its checkpoint's body"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Seeded mutation, for the smoke tests
// ---------------------------------------------------------------------------------------

/// Byte strings that often sit on a parser's decision points.
const DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{}",
    b"[]",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"9223372036854775807",
    b".",
    b"..",
    b"=",
    b"#",
    b"did:",
    b"did:key:z",
    b"did:web:",
    b"\n",
    b"\n\n",
    b"\r",
    b"\t",
    b"\\u0000",
    b"\\ud800",
    b"\xe2\x80\x94 ",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    b"\x00",
    b"+",
    b"AAAA",
    b"eyJ",
    b"urn:uuid:",
    b"Patient/",
    b"9999-12-31T23:59:59Z",
    b"0000-01-01",
    b"+262143-01-01T00:00:00Z",
];

/// A small deterministic generator (SplitMix64): the same seed gives the same mutations on
/// every machine, so a failure reproduces.
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// `seed` with one to four stacked mutations; `others` are spliced in.
    pub fn mutate(&mut self, seed: &[u8], others: &[&[u8]]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..=self.below(4) {
            self.mutate_once(&mut out, others);
        }
        out
    }

    fn mutate_once(&mut self, out: &mut Vec<u8>, others: &[&[u8]]) {
        let len = out.len();
        match self.below(11) {
            // Flip one bit.
            0 if len > 0 => {
                let at = self.below(len);
                out[at] ^= 1 << self.below(8);
            }
            // Overwrite a byte with a random one.
            1 if len > 0 => {
                let at = self.below(len);
                out[at] = self.next() as u8;
            }
            // Delete a short range.
            2 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below(16.min(len - at));
                out.drain(at..at + n);
            }
            // Insert random bytes.
            3 => {
                let at = self.below(len + 1);
                let n = 1 + self.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            // Insert or overwrite with a dictionary token.
            4 | 5 => {
                let token = DICTIONARY[self.below(DICTIONARY.len())];
                let at = self.below(len + 1);
                let end = if self.below(2) == 0 {
                    at
                } else {
                    (at + token.len()).min(len)
                };
                out.splice(at..end, token.iter().copied());
            }
            // Duplicate a range.
            6 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below(64.min(len - at));
                let copy = out[at..at + n].to_vec();
                let to = self.below(len + 1);
                out.splice(to..to, copy);
            }
            // Truncate.
            7 => out.truncate(self.below(len + 1)),
            // Splice: this input's head, another's tail.
            8 if !others.is_empty() => {
                let other = others[self.below(others.len())];
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            // Mutate inside a base64 segment and re-encode it, so that the structure a
            // JWS or a note carries encoded is reached.
            9 => self.mutate_base64_segment(out),
            // Replace a run of digits with an edge-case number.
            _ => self.replace_number(out),
        }
    }

    fn mutate_base64_segment(&mut self, out: &mut Vec<u8>) {
        let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/');
        let mut segments = Vec::new();
        let mut start = None;
        for (i, &b) in out.iter().chain(std::iter::once(&b' ')).enumerate() {
            match (is_b64(b) || b == b'=', start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    if i - s >= 8 {
                        segments.push(s..i);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return;
        }
        let range = segments[self.below(segments.len())].clone();
        let Ok(text) = std::str::from_utf8(&out[range.clone()]) else {
            return;
        };
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let (mut decoded, url_safe) = match URL_SAFE_NO_PAD.decode(text) {
            Ok(d) => (d, true),
            Err(_) => match STANDARD.decode(text) {
                Ok(d) => (d, false),
                Err(_) => return,
            },
        };
        if decoded.is_empty() {
            return;
        }
        // One byte-level mutation of the decoded bytes, without recursing into base64.
        match self.below(4) {
            0 => {
                let at = self.below(decoded.len());
                decoded[at] ^= 1 << self.below(8);
            }
            1 => {
                let at = self.below(decoded.len());
                decoded.remove(at);
            }
            2 => {
                let token = DICTIONARY[self.below(DICTIONARY.len())];
                let at = self.below(decoded.len() + 1);
                decoded.splice(at..at, token.iter().copied());
            }
            _ => self.replace_number(&mut decoded),
        }
        let encoded = if url_safe {
            URL_SAFE_NO_PAD.encode(&decoded)
        } else {
            STANDARD.encode(&decoded)
        };
        out.splice(range, encoded.into_bytes());
    }

    fn replace_number(&mut self, out: &mut Vec<u8>) {
        const NUMBERS: [&[u8]; 9] = [
            b"0",
            b"-1",
            b"01",
            b"1.5",
            b"1e3",
            b"4294967296",
            b"9223372036854775807",
            b"18446744073709551616",
            b"99999999999999999999999999",
        ];
        let digits: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_digit()))
            .collect();
        if digits.is_empty() {
            return;
        }
        let start = digits[self.below(digits.len())];
        let end = (start..out.len())
            .find(|&i| !out[i].is_ascii_digit())
            .unwrap_or(out.len());
        let number = NUMBERS[self.below(NUMBERS.len())];
        out.splice(start..end, number.iter().copied());
    }
}

/// The files of a seed corpus directory, sorted by name.
fn read_corpus(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            seeds.push((name, std::fs::read(entry.path())?));
        }
    }
    seeds.sort();
    Ok(seeds)
}

/// Prints the input being run when a body panics, so that the failure reproduces (save
/// the hex as a file and run the cargo-fuzz target on it).
struct ReportOnPanic<'a> {
    target: &'a str,
    what: &'a str,
    input: &'a [u8],
}

impl Drop for ReportOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz target {} panicked on {} ({} bytes), input as hex:\n{}",
                self.target,
                self.what,
                self.input.len(),
                hex::encode(self.input)
            );
        }
    }
}

/// Runs `body` on each seed and on `per_seed` mutations of it (mutator seeded with
/// `rng_seed`, other seeds spliced in). Returns how many inputs ran. A panic in `body`
/// fails the caller after printing the input.
fn run_mutations<T>(
    target: &str,
    seeds: &[(String, Vec<u8>)],
    per_seed: usize,
    rng_seed: u64,
    mut body: impl FnMut(&[u8]) -> T,
) -> usize {
    let all: Vec<&[u8]> = seeds.iter().map(|(_, s)| s.as_slice()).collect();
    let mut mutator = Mutator::new(rng_seed);
    let mut ran = 0;
    for (name, seed) in seeds {
        for i in 0..per_seed {
            let input = mutator.mutate(seed, &all);
            let what = format!("mutation {i} of seed {name}");
            let _report = ReportOnPanic {
                target,
                what: &what,
                input: &input,
            };
            body(&input);
            ran += 1;
        }
    }
    ran
}

/// Runs `body` on one input, printing it if the body panics.
fn run_one<T>(target: &str, name: &str, input: &[u8], body: impl FnOnce(&[u8]) -> T) -> T {
    let _report = ReportOnPanic {
        target,
        what: name,
        input,
    };
    body(input)
}

/// What a seed's file name says about it: `ok-…` must be accepted, `rejected-WORD-…` must
/// be rejected with a reason that mentions WORD, and `crash-…` (an input that once made a
/// body panic) must only run to completion.
fn check_seed(target: &str, name: &str, outcome: &anyhow::Result<()>) {
    if name.starts_with("crash-") {
        return;
    }
    if name.starts_with("ok-") {
        if let Err(e) = outcome {
            panic!("{target} seed {name} is not accepted: {e}");
        }
        return;
    }
    let word = name
        .strip_prefix("rejected-")
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_else(|| {
            panic!("{target} seed {name}: name it ok-…, rejected-WORD-… or crash-…")
        });
    match outcome {
        Ok(()) => panic!("{target} seed {name} is accepted; it should be rejected"),
        Err(e) => assert!(
            e.to_string().contains(word),
            "{target} seed {name} is rejected for another reason: {e}"
        ),
    }
}

/// The smoke test of one target: every seed in `dir` gives the outcome its name states
/// (see `check_seed`), then `per_seed` mutations of each run without a panic. Returns
/// how many inputs ran.
pub fn smoke(
    target: &str,
    dir: &Path,
    per_seed: usize,
    body: impl Fn(&[u8]) -> anyhow::Result<()>,
) -> usize {
    let seeds = read_corpus(dir).unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()));
    assert!(
        seeds.iter().any(|(name, _)| name.starts_with("ok-")),
        "{target}: the corpus {} has no accepted seed",
        dir.display()
    );
    for (name, seed) in &seeds {
        let outcome = run_one(target, name, seed, &body);
        check_seed(target, name, &outcome);
    }
    // The target's name seeds the mutator: each target gets its own stream, every run
    // the same one.
    let rng_seed = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    seeds.len() + run_mutations(target, &seeds, per_seed, rng_seed, &body)
}
