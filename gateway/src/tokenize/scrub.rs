//! Free text scrubbed of the patient's identifying values, in every form they take, and of
//! generic identifier shapes as a second line.
//!
//! Each string is matched through two folded copies, each with a map back to the bytes of
//! the original:
//! - the *text view*: compatibility decomposition (NFKD) with the combining marks removed,
//!   lower case, runs of whitespace as one space, HTML character references decoded. The
//!   patient's names, address lines, cities and e-mail addresses are found here by one
//!   Aho-Corasick automaton, and dates and generic shapes by regular expressions.
//! - the *compact view*: the letters and digits of the text view, separators (space, `-`,
//!   `.`, `(`, `)`, `/`, `+`, `_`) left out, so that an identifier number is found whatever
//!   its separators (`999770001`, `999-77-0001`, `(555) 770-0001`, `+1 555 770 0001`).
//!
//! A match counts only on word boundaries of the text view (no letter against a letter nor
//! digit against a digit at either end), so that `Luz` is not found in `Luzón` nor `00000`
//! in `100000`. Every span found is replaced by [`REDACTED`].
//!
//! The automata are built once per set of patient values (so once per patient, not per
//! string) and kept, bounded, for the next response about the same patient.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use chrono::{Datelike, NaiveDate};
use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use super::{PSEUDONYM_PREFIX, REDACTED, TOKEN_PREFIX};

/// Strings this module produced: not scrubbed (a short secret could match inside one).
pub(super) fn is_generated(s: &str) -> bool {
    let rest = s
        .strip_prefix(TOKEN_PREFIX)
        .or_else(|| s.strip_prefix(PSEUDONYM_PREFIX));
    rest.is_some_and(|r| {
        r.len() >= 22
            && r.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    })
}

// ---------------------------------------------------------------------------------------
// Folded views
// ---------------------------------------------------------------------------------------

/// A folded copy of a string: `text` and, for each of its bytes, the byte range of the
/// original it came from (none kept when each byte came from the byte at its own offset).
struct View {
    text: String,
    /// `None`: byte `i` of `text` came from byte `i` of the original.
    spans: Option<Vec<(usize, usize)>>,
}

impl View {
    fn with_capacity(n: usize) -> Self {
        View {
            text: String::with_capacity(n),
            spans: Some(Vec::with_capacity(n)),
        }
    }

    fn push(&mut self, c: char, span: (usize, usize)) {
        self.text.push(c);
        if let Some(spans) = &mut self.spans {
            for _ in 0..c.len_utf8() {
                spans.push(span);
            }
        }
    }

    /// The original range of the view's bytes `start..end`.
    fn original(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        let last = end.checked_sub(1)?;
        match &self.spans {
            None => (start < self.text.len() && last < self.text.len()).then_some((start, end)),
            Some(spans) => Some((spans.get(start)?.0, spans.get(last)?.1)),
        }
    }
}

/// Whether `fold` maps `s` byte for byte: ASCII with no character reference and no
/// whitespace but single spaces. Most strings of a record are (codes, displays, notes).
fn folds_in_place(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b.is_ascii()
            && b != b'&'
            && !(b.is_ascii_whitespace() && b != b' ')
            && !(b == b' ' && i > 0 && bytes[i - 1] == b' ')
            // Whitespace to `char::is_whitespace`, not to `u8::is_ascii_whitespace`.
            && b != 0x0b
            // Folded to an apostrophe (`fold_special`).
            && b != b'`'
    })
}

/// `fold` of a string for which [`folds_in_place`] holds, without its per-byte spans.
fn fold_ascii(s: &str) -> (View, View) {
    let text = View {
        text: s.to_ascii_lowercase(),
        spans: None,
    };
    // Byte by byte: every byte is a character here, so the compact view is built without
    // encoding characters (the per-character `View::push` cost more than the matching).
    let mut compact = Vec::with_capacity(s.len());
    let mut spans = Vec::with_capacity(s.len());
    for (at, &b) in text.text.as_bytes().iter().enumerate() {
        let kept = if b.is_ascii_alphanumeric() {
            b
        } else if !is_separator(char::from(b)) {
            b'|'
        } else {
            continue;
        };
        compact.push(kept);
        spans.push((at, at + 1));
    }
    let compact = View {
        // ASCII bytes of ASCII text: always UTF-8.
        text: String::from_utf8(compact).unwrap_or_default(),
        spans: Some(spans),
    };
    (text, compact)
}

/// Separators an identifier number may be written with.
fn is_separator(c: char) -> bool {
    c == ' ' || matches!(c, '-' | '.' | '(' | ')' | '/' | '+' | '_')
}

/// Letters without a decomposition that are still a base letter with a mark, the letters
/// whose case folding is more than one character, and the typographic dashes and
/// apostrophes people (and word processors) write for `-` and `'`.
fn fold_special(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{2010}' | '\u{2011}' | '\u{2012}' | '\u{2013}' | '\u{2014}' | '\u{2212}' => "-",
        '\u{2018}' | '\u{2019}' | '\u{02bc}' | '`' | '\u{00b4}' => "'",
        'ß' | 'ẞ' => "ss",
        'ø' | 'Ø' => "o",
        'ł' | 'Ł' => "l",
        'đ' | 'Đ' | 'ð' | 'Ð' => "d",
        'ħ' | 'Ħ' => "h",
        'ı' => "i",
        'æ' | 'Æ' => "ae",
        'œ' | 'Œ' => "oe",
        'þ' | 'Þ' => "th",
        _ => return None,
    })
}

/// The character an HTML character reference at the start of `s` stands for, with its
/// length: numeric references, the usual named ones and the Latin letters with a mark
/// (`&ntilde;` is `n` once folded).
fn html_reference(s: &str) -> Option<(char, usize)> {
    let (end, _) = s.char_indices().take(12).find(|&(_, c)| c == ';')?;
    let body = &s[1..end];
    let c = if let Some(num) = body.strip_prefix('#') {
        let n = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        char::from_u32(n)?
    } else {
        match body {
            "nbsp" | "ensp" | "emsp" | "thinsp" => ' ',
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "szlig" => 'ß',
            "oslash" => 'ø',
            "Oslash" => 'Ø',
            "aelig" => 'æ',
            "AElig" => 'Æ',
            _ => {
                let mut chars = body.chars();
                let base = chars.next().filter(char::is_ascii_alphabetic)?;
                let mark = chars.as_str();
                if !matches!(
                    mark,
                    "acute" | "grave" | "tilde" | "uml" | "circ" | "cedil" | "ring" | "caron"
                ) {
                    return None;
                }
                base
            }
        }
    };
    Some((c, end + 1))
}

/// The text view of `s` and its compact view (whose spans are byte ranges of the text
/// view, not of the original).
fn fold(s: &str) -> (View, View) {
    if folds_in_place(s) {
        return fold_ascii(s);
    }
    fold_general(s)
}

fn fold_general(s: &str) -> (View, View) {
    let mut text = View::with_capacity(s.len());
    let mut compact = View::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let (c, len) = match rest.chars().next() {
            Some('&') => html_reference(rest).unwrap_or(('&', 1)),
            Some(c) => (c, c.len_utf8()),
            None => break,
        };
        let span = (i, i + len);
        i += len;
        if c.is_whitespace() {
            if text.text.ends_with(' ') {
                if let Some(last) = text.spans.as_mut().and_then(|s| s.last_mut()) {
                    last.1 = span.1;
                }
            } else {
                text.push(' ', span);
            }
            continue;
        }
        let mut out = |f: char| {
            for l in f.to_lowercase() {
                let at = text.text.len();
                text.push(l, span);
                if l.is_alphanumeric() {
                    compact.push(l, (at, text.text.len()));
                } else if !is_separator(l) {
                    compact.push('|', (at, text.text.len()));
                }
            }
        };
        match fold_special(c) {
            Some(s) => s.chars().for_each(&mut out),
            // ASCII has no compatibility decomposition and no combining mark.
            None if c.is_ascii() => out(c),
            None => decompose_compatible(c, |d| {
                if !is_combining_mark(d) {
                    match fold_special(d) {
                        Some(s) => s.chars().for_each(&mut out),
                        None => out(d),
                    }
                }
            }),
        }
    }
    (text, compact)
}

/// The text view of a value, trimmed.
fn fold_text(s: &str) -> String {
    fold(s).0.text.trim().to_string()
}

/// Whether `a` and `b` are letters or digits of the same kind (no word boundary between).
fn joined(a: char, b: char) -> bool {
    a.is_alphanumeric() && b.is_alphanumeric() && a.is_numeric() == b.is_numeric()
}

/// Whether `view[start..end]` stands on word boundaries.
fn on_boundaries(view: &str, start: usize, end: usize) -> bool {
    let (Some(inner), Some(before), Some(after)) =
        (view.get(start..end), view.get(..start), view.get(end..))
    else {
        return false;
    };
    let (Some(first), Some(last)) = (inner.chars().next(), inner.chars().next_back()) else {
        return false;
    };
    let prev_ok = before.chars().next_back().is_none_or(|p| !joined(p, first));
    let next_ok = after.chars().next().is_none_or(|n| !joined(last, n));
    prev_ok && next_ok
}

/// Whether a generic shape at `view[start..end]` stands alone: not inside a longer code,
/// decimal, OID or UUID.
fn stands_alone(view: &str, start: usize, end: usize) -> bool {
    let before = view.get(..start).and_then(|b| b.chars().next_back());
    let mut after = view.get(end..).map(str::chars).into_iter().flatten();
    let next = after.next();
    let next2 = after.next();
    let prev_ok = before.is_none_or(|p| !(p.is_alphanumeric() || matches!(p, '-' | '.' | '_')));
    let next_ok = match next {
        None => true,
        Some('.') => !next2.is_some_and(|c| c.is_alphanumeric()),
        Some(n) => !(n.is_alphanumeric() || matches!(n, '-' | '_')),
    };
    prev_ok && next_ok
}

// ---------------------------------------------------------------------------------------
// The patient's values
// ---------------------------------------------------------------------------------------

/// Words of a name that are particles rather than names when they are part of a longer one.
const NAME_PARTICLES: [&str; 16] = [
    "de", "del", "la", "las", "los", "da", "das", "do", "dos", "di", "du", "van", "von", "der",
    "den", "le",
];

/// The identifying values to scrub, in their folded forms.
#[derive(Default)]
pub(super) struct Secrets {
    /// Matched in the text view.
    words: HashSet<String>,
    /// Matched in the compact view.
    compact: HashSet<String>,
    births: Vec<NaiveDate>,
}

impl Secrets {
    fn text_value(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    fn add_word(&mut self, s: &str) {
        let folded = fold_text(s);
        // Single letters (initials) would blank out every such letter in free text.
        if folded.chars().count() >= 2 {
            self.words.insert(folded);
        }
    }

    /// The compact form of a number-like value (at least 6 digits, letters and separators
    /// only besides). Shorter numbers are matched as written only: with any separators,
    /// a 5-digit postal code would be found in a LOINC code such as `8480-6`.
    fn add_compact(&mut self, s: &str) {
        let compact = fold(s).1.text;
        if !compact.contains('|') && compact.chars().filter(char::is_ascii_digit).count() >= 6 {
            self.compact.insert(compact);
        }
    }

    /// A name: the whole value and each of its parts.
    pub(super) fn name(&mut self, v: Option<&Value>) {
        let Some(s) = Self::text_value(v) else {
            return;
        };
        self.add_word(s);
        let folded = fold_text(s);
        let parts: Vec<&str> = folded
            .split(|c: char| c.is_whitespace() || matches!(c, '-' | ',' | '.'))
            .filter(|p| p.chars().count() >= 2)
            .collect();
        if parts.len() > 1 {
            for p in parts {
                if !NAME_PARTICLES.contains(&p) {
                    self.words.insert(p.to_string());
                }
            }
        }
    }

    /// A value written as it is (address line, city, e-mail), or a number in any writing.
    pub(super) fn value(&mut self, v: Option<&Value>) {
        let Some(s) = Self::text_value(v) else {
            return;
        };
        self.add_word(s);
        self.add_compact(s);
    }

    /// A phone number, also with or without the North American country code.
    pub(super) fn phone(&mut self, v: Option<&Value>) {
        let Some(s) = Self::text_value(v) else {
            return;
        };
        self.value(v);
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        match digits.len() {
            10 => self.add_compact(&format!("1{digits}")),
            11 if digits.starts_with('1') => self.add_compact(&digits[1..]),
            _ => {}
        }
    }

    /// A postal code; a ZIP+4 also as its five digits (as a word).
    pub(super) fn postal_code(&mut self, v: Option<&Value>) {
        let Some(s) = Self::text_value(v) else {
            return;
        };
        self.value(v);
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        if digits.len() == 9 && s.len() <= 10 {
            self.add_word(&digits[..5]);
        }
    }

    /// A birth date (`YYYY-MM-DD`, possibly with a time): found in any date writing.
    pub(super) fn birth_date(&mut self, v: Option<&Value>) {
        let Some(date) = Self::text_value(v)
            .and_then(|s| s.get(..10))
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        else {
            return;
        };
        let (y, m, d) = (date.year(), date.month(), date.day());
        let yy = y.rem_euclid(100);
        for form in [
            format!("{y:04}{m:02}{d:02}"),
            format!("{m:02}{d:02}{y:04}"),
            format!("{d:02}{m:02}{y:04}"),
            format!("{m:02}{d:02}{yy:02}"),
            format!("{d:02}{m:02}{yy:02}"),
        ] {
            self.compact.insert(form);
        }
        if !self.births.contains(&date) {
            self.births.push(date);
        }
    }
}

/// Which generic shapes are scrubbed: those whose class is not revealed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Generic {
    pub ssn: bool,
    pub telecom: bool,
    pub urls: bool,
}

impl Generic {
    fn any(self) -> bool {
        self.ssn || self.telecom || self.urls
    }
}

// ---------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------

const MONTH: &str = r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)";

#[allow(clippy::expect_used)] // constant patterns, covered by the tests
fn pattern(p: &str) -> Regex {
    Regex::new(p).expect("constant pattern")
}

/// `a/b/c`, `a-b-c`, `a.b.c` with one to four digits each.
static NUMERIC_DATE: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(\d{1,4})[./-](\d{1,2})[./-](\d{1,4})"));
/// `February 14, 1931`, `feb. 14th 1931`, `FEB-14-31`.
static MONTH_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    pattern(&format!(
        r"\b{MONTH}\.?[\s,/-]*(\d{{1,2}})(?:st|nd|rd|th)?[\s,./-]+'?(\d{{4}}|\d{{2}})\b"
    ))
});
/// `14 February 1931`, `14th of feb. 1931`, `14-FEB-1931`.
static DAY_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    pattern(&format!(
        r"\b(\d{{1,2}})(?:st|nd|rd|th)?[\s./-]*(?:of\s+)?{MONTH}\.?[\s,./-]*'?(\d{{4}}|\d{{2}})\b"
    ))
});
static SSN: LazyLock<Regex> = LazyLock::new(|| pattern(r"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}"));
/// A nine-digit number after an SSN label.
static LABELLED_SSN: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"(?:\bssn|\bsocial security(?: number| no\.?)?|\bss#)[\s:#.-]*(\d{9}|\d{3}[ .]\d{2}[ .]\d{4})",
    )
});
/// North American numbers with separators, and `+` international numbers.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}|\+\d{1,3}(?:[ .-]?\d{2,5}){2,5}",
    )
});
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}"));
static URL: LazyLock<Regex> =
    LazyLock::new(|| pattern(r#"(?:https?|ftp)://[^\s<>"'()\[\]{}|\\^`]+"#));

fn month_number(name: &str) -> Option<u32> {
    let m = match name.get(..3)? {
        "jan" => 1,
        "feb" => 2,
        "mar" => 3,
        "apr" => 4,
        "may" => 5,
        "jun" => 6,
        "jul" => 7,
        "aug" => 8,
        "sep" => 9,
        "oct" => 10,
        "nov" => 11,
        "dec" => 12,
        _ => return None,
    };
    Some(m)
}

/// Whether the written year `y` (two or four digits) may be the year of `date`.
fn year_is(y: &str, date: NaiveDate) -> bool {
    match (y.len(), y.parse::<i32>()) {
        (4, Ok(y)) => y == date.year(),
        (2, Ok(y)) => y == date.year().rem_euclid(100),
        _ => false,
    }
}

fn day_month_is(d: &str, m: u32, date: NaiveDate) -> bool {
    d.parse::<u32>().is_ok_and(|d| d == date.day()) && m == date.month()
}

/// Whether a numeric date `a.b.c` is `date` in ISO, US (M/D/Y) or day-first (D/M/Y) order.
fn numeric_date_is(a: &str, b: &str, c: &str, date: NaiveDate) -> bool {
    let num = |s: &str| s.parse::<u32>().ok();
    if a.len() == 4 {
        return c.len() <= 2
            && year_is(a, date)
            && num(b) == Some(date.month())
            && num(c) == Some(date.day());
    }
    if a.len() > 2 || !year_is(c, date) {
        return false;
    }
    let (Some(a), Some(b)) = (num(a), num(b)) else {
        return false;
    };
    (a, b) == (date.month(), date.day()) || (a, b) == (date.day(), date.month())
}

/// Whether a URL carries something that looks like an identifier in its path or query: a
/// value with six digits or more, an e-mail address, or a parameter naming a person's
/// identifier.
fn url_has_identifier(url: &str) -> bool {
    let after_host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.find(['/', '?', '#']).map(|i| &rest[i..]))
        .unwrap_or("");
    let mut params = after_host.split(['/', '?', '&', ';', '#']);
    params.any(|piece| {
        let (name, value) = piece.split_once('=').unwrap_or(("", piece));
        let digits = value.chars().filter(char::is_ascii_digit).count();
        let named = matches!(
            name,
            "ssn"
                | "mrn"
                | "dob"
                | "birthdate"
                | "birth_date"
                | "patient"
                | "name"
                | "family"
                | "given"
                | "phone"
                | "email"
                | "identifier"
                | "address"
        );
        digits >= 6 || value.contains('@') || value.contains("%40") || (named && !value.is_empty())
    })
}

// ---------------------------------------------------------------------------------------
// The scrubber
// ---------------------------------------------------------------------------------------

/// The patient's values and the generic shapes to remove from the strings of one response.
pub(super) struct Scrubber {
    words: Option<AhoCorasick>,
    compact: Option<AhoCorasick>,
    births: Vec<NaiveDate>,
    generic: Generic,
    /// Short strings already scrubbed in this tokenization, with or without the generic
    /// shapes, and what became of them. FHIR repeats its short strings (a category's
    /// display, a code and its display, a status in every resource of a type), and
    /// [`Scrubber::scrub`] is a function of its input: an answer is the same every time.
    /// One scrubber serves one tokenization, so nothing here outlives the answer.
    seen: RefCell<[HashMap<String, Option<String>>; 2]>,
}

/// Strings longer than this are scrubbed anew each time (they seldom repeat, and a note
/// kept twice would only take memory).
const SEEN_MAX_BYTES: usize = 128;
/// Distinct strings remembered per scrubber.
const SEEN_MAX_ENTRIES: usize = 4096;

/// Automata already built, by the digest of their sorted patterns. The same patient's values
/// give the same automaton, and building it was most of what scrubbing a small answer cost
/// (3 % of the gateway's CPU per exchange even as a contiguous NFA). Bounded; it holds
/// values the record store holds anyway, and nothing leaves the process.
static AUTOMATA: LazyLock<federation::cache::Generations<AhoCorasick>> =
    LazyLock::new(|| federation::cache::Generations::new(256));

/// The automaton of `set`, from [`AUTOMATA`] or built (and remembered).
fn automaton(set: HashSet<String>) -> Option<AhoCorasick> {
    let mut patterns: Vec<String> = set.into_iter().collect();
    if patterns.is_empty() {
        return None;
    }
    patterns.sort();
    let mut h = Sha256::new();
    for p in &patterns {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let key: [u8; 32] = h.finalize().into();
    if let Some(ac) = AUTOMATA.get(&key, |_| true) {
        return Some(ac);
    }
    // Both views are folded to lower case: the automaton matches bytes as they are. A
    // contiguous NFA, not the DFA the builder picks for a few patterns: building a DFA
    // cost more than all the searches one response runs.
    let ac = AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::ContiguousNFA))
        .match_kind(MatchKind::Standard)
        .build(&patterns)
        .ok()?;
    AUTOMATA.insert(key, ac.clone());
    Some(ac)
}

impl Scrubber {
    pub(super) fn new(secrets: Secrets, generic: Generic) -> Self {
        Scrubber {
            words: automaton(secrets.words),
            compact: automaton(secrets.compact),
            births: secrets.births,
            generic,
            seen: RefCell::default(),
        }
    }

    /// Whether the date (or date-time) `s` falls on a birth date that is not revealed.
    pub(super) fn is_birth_date(&self, s: &str) -> bool {
        !self.births.is_empty()
            && s.get(..10)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .is_some_and(|d| self.births.contains(&d))
    }

    fn has_patient_values(&self) -> bool {
        self.words.is_some() || self.compact.is_some() || !self.births.is_empty()
    }

    /// `text` with every value of the patient found in it replaced by [`REDACTED`], and,
    /// with `generic`, every generic shape too; `None` when nothing was found.
    pub(super) fn scrub(&self, text: &str, generic: bool) -> Option<String> {
        let generic = generic && self.generic.any();
        if text.is_empty() || is_generated(text) || !(generic || self.has_patient_values()) {
            return None;
        }
        if text.len() > SEEN_MAX_BYTES {
            return self.scrub_anew(text, generic);
        }
        if let Some(known) = self.seen.borrow()[usize::from(generic)].get(text) {
            return known.clone();
        }
        let scrubbed = self.scrub_anew(text, generic);
        let mut seen = self.seen.borrow_mut();
        let seen = &mut seen[usize::from(generic)];
        if seen.len() < SEEN_MAX_ENTRIES {
            seen.insert(text.to_string(), scrubbed.clone());
        }
        scrubbed
    }

    fn scrub_anew(&self, text: &str, generic: bool) -> Option<String> {
        let (view, compact) = fold(text);
        let mut found: Vec<(usize, usize)> = Vec::new();
        self.patient_values(&view, &compact, &mut found);
        if generic {
            self.generic_shapes(&view, &mut found);
        }
        if found.is_empty() {
            return None;
        }
        let spans: Vec<(usize, usize)> = found
            .into_iter()
            .filter_map(|(s, e)| view.original(s, e))
            .collect();
        Some(replace_spans(text, spans))
    }

    /// Spans (of the text view) of the patient's own values.
    fn patient_values(&self, view: &View, compact: &View, found: &mut Vec<(usize, usize)>) {
        let v = view.text.as_str();
        if let Some(ac) = &self.words {
            for m in ac.find_overlapping_iter(v) {
                if on_boundaries(v, m.start(), m.end()) {
                    found.push((m.start(), m.end()));
                }
            }
        }
        if let Some(ac) = &self.compact {
            for m in ac.find_overlapping_iter(compact.text.as_str()) {
                let Some((s, e)) = compact.original(m.start(), m.end()) else {
                    continue;
                };
                // A decimal number (`0.2139`) is a measurement, not an identifier.
                let decimal = v.get(s..e).is_some_and(|t| {
                    t.split_once('.').is_some_and(|(a, b)| {
                        !a.is_empty()
                            && !b.is_empty()
                            && a.chars().all(|c| c.is_ascii_digit())
                            && b.chars().all(|c| c.is_ascii_digit())
                    })
                });
                if !decimal && on_boundaries(v, s, e) {
                    // The bracket or plus that opens a phone number goes with it.
                    let s = if v[..s].ends_with(['(', '+']) {
                        s - 1
                    } else {
                        s
                    };
                    found.push((s, e));
                }
            }
        }
        if self.births.is_empty() || !v.bytes().any(|b| b.is_ascii_digit()) {
            return;
        }
        for c in NUMERIC_DATE.captures_iter(v) {
            let (Some(all), Some(a), Some(b), Some(y)) = (c.get(0), c.get(1), c.get(2), c.get(3))
            else {
                continue;
            };
            if on_boundaries(v, all.start(), all.end())
                && self
                    .births
                    .iter()
                    .any(|&d| numeric_date_is(a.as_str(), b.as_str(), y.as_str(), d))
            {
                found.push((all.start(), all.end()));
            }
        }
        for (re, day_group, month_group) in [(&*MONTH_FIRST, 2, 1), (&*DAY_FIRST, 1, 2)] {
            for c in re.captures_iter(v) {
                let (Some(all), Some(d), Some(m), Some(y)) =
                    (c.get(0), c.get(day_group), c.get(month_group), c.get(3))
                else {
                    continue;
                };
                let Some(m) = month_number(m.as_str()) else {
                    continue;
                };
                if self
                    .births
                    .iter()
                    .any(|&date| day_month_is(d.as_str(), m, date) && year_is(y.as_str(), date))
                {
                    found.push((all.start(), all.end()));
                }
            }
        }
    }

    /// Spans (of the text view) of SSN-, phone-, e-mail- and identifying-URL-shaped strings
    /// whose class is not revealed.
    fn generic_shapes(&self, view: &View, found: &mut Vec<(usize, usize)>) {
        let v = view.text.as_str();
        let has_digit = v.bytes().any(|b| b.is_ascii_digit());
        if self.generic.ssn && has_digit {
            find_alone(&SSN, v, found);
            for c in LABELLED_SSN.captures_iter(v) {
                if let Some(m) = c.get(1) {
                    found.push((m.start(), m.end()));
                }
            }
        }
        if self.generic.telecom && has_digit {
            find_alone(&PHONE, v, found);
        }
        if self.generic.telecom && v.contains('@') {
            for m in EMAIL.find_iter(v) {
                found.push((m.start(), m.end()));
            }
        }
        if self.generic.urls && v.contains("://") {
            for m in URL.find_iter(v) {
                if url_has_identifier(m.as_str()) {
                    found.push((m.start(), m.end()));
                }
            }
        }
    }
}

/// Every match of `re` in `v` that [stands alone](stands_alone) with 9 to 15 digits; a
/// match that does not is tried again one character further, so that a longer false start
/// (`21 555-770-0001` read as `1 555-770-0001`) does not hide the real one.
fn find_alone(re: &Regex, v: &str, found: &mut Vec<(usize, usize)>) {
    let mut at = 0;
    while let Some(m) = re.find_at(v, at) {
        let digits = m.as_str().chars().filter(char::is_ascii_digit).count();
        if (9..=15).contains(&digits) && stands_alone(v, m.start(), m.end()) {
            found.push((m.start(), m.end()));
            at = m.end();
        } else {
            at = m.start() + v[m.start()..].chars().next().map_or(1, char::len_utf8);
        }
    }
}

/// `text` with the byte ranges `spans` (overlapping or not) replaced by [`REDACTED`].
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut open: Option<(usize, usize)> = None;
    for (s, e) in spans {
        match open {
            Some((os, oe)) if s <= oe => open = Some((os, oe.max(e))),
            Some((os, oe)) => {
                out.push_str(&text[last..os]);
                out.push_str(REDACTED);
                last = oe;
                open = Some((s, e));
            }
            None => open = Some((s, e)),
        }
    }
    if let Some((os, oe)) = open {
        out.push_str(&text[last..os]);
        out.push_str(REDACTED);
        last = oe;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings of record-like ASCII (and, now and then, what takes the general path).
    fn strings() -> Vec<String> {
        let alphabet: Vec<char> = "aZ09 -.()/+_|:;,'\"#@?x\tX&`\u{0b}é".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..4000)
            .map(|_| {
                let len = (next() % 40) as usize;
                (0..len)
                    .map(|_| {
                        // Mostly the first 22 characters, which fold in place.
                        let pick = if next() % 10 == 0 { alphabet.len() } else { 22 };
                        alphabet[(next() % pick as u64) as usize]
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_in_place_fold_is_the_general_fold() {
        let mut in_place = 0;
        for s in strings() {
            if !folds_in_place(&s) {
                continue;
            }
            in_place += 1;
            let (text, compact) = fold_ascii(&s);
            let (g_text, g_compact) = fold_general(&s);
            assert_eq!(text.text, g_text.text, "{s:?}");
            assert_eq!(compact.text, g_compact.text, "{s:?}");
            assert_eq!(compact.spans, g_compact.spans, "{s:?}");
            for start in 0..=text.text.len() {
                for end in start..=text.text.len() + 1 {
                    assert_eq!(
                        text.original(start, end),
                        g_text.original(start, end),
                        "{s:?} {start}..{end}"
                    );
                }
            }
        }
        assert!(
            in_place > 1000,
            "only {in_place} strings took the fast path"
        );
    }

    #[test]
    fn what_folds_otherwise_takes_the_general_path() {
        for s in [
            "a  b",
            "a\tb",
            "a\nb",
            "&amp;",
            "it`s",
            "caf\u{e9}",
            "a\u{0b}b",
        ] {
            assert!(!folds_in_place(s), "{s:?}");
        }
        assert!(folds_in_place("Type 2 diabetes mellitus (disorder)"));
        assert!(folds_in_place(""));
    }
}
