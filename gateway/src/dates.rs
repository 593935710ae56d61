//! The `shift_dates` obligation: every date and dateTime of an answer moved by one offset
//! per patient and recipient, for domains where the birth date is not revealed.
//!
//! Why: a tokenized birth date protects little while a condition recorded at birth
//! carries the same day and time, and exact dates of visits link a record to other
//! sources. Why one offset: intervals stay true (age at onset, days between doses), which
//! is what care needs; only the calendar moves. The offset is a keyed hash of the gateway
//! secret, the patient and the recipient organization, between 1 and 365 days either way,
//! never 0: stable for that pair (pages and later requests agree), different for another
//! recipient (two recipients cannot line their copies up), unknowable without the secret.
//!
//! What moves: every string that is wholly a FHIR `date`, `dateTime` or `instant`
//! (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a full time with zone), whatever the element,
//! keeping its precision (a year or month is shifted from its middle); and the full dates
//! written inside free text and text attachments (`2025-01-03`, `1/3/2025`, `01/03/25`,
//! `January 3, 2025`), or a note dated in clear would give the offset away. What does not:
//! `birthDate`, which its own identifier class governs (tokenized, generalized or
//! revealed); identifiers and codes (their elements are skipped); day-first dates in text
//! (`03.01.2025`), which cannot be told from month-first ones.

use std::sync::LazyLock;

use base64::Engine as _;
use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate};
use regex::{Captures, Regex};
use serde_json::{Map, Value};

use crate::vault::hmac_sha256;

/// Elements never shifted: governed by an identifier class, or not dates at all.
const SKIPPED: [&str; 9] = [
    "birthDate",
    // base64 (attachments, handled whole) or SampledData's numbers
    "data",
    "id",
    "reference",
    "code",
    "system",
    "value",
    "version",
    "url",
];

/// The offset of `patient_id`'s dates for `recipient`, in days: ±1..=365.
pub fn offset_days(secret: &[u8; 32], patient_id: &str, recipient: &str) -> i64 {
    let mac = hmac_sha256(
        secret,
        &[
            b"fedgate/shift-dates/v1",
            patient_id.as_bytes(),
            recipient.as_bytes(),
        ],
    );
    let n = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let days = i64::from(n % 365) + 1;
    if mac[4] & 1 == 0 {
        days
    } else {
        -days
    }
}

/// Shifts every date of `resources` by `days` (see the module documentation); returns how
/// many values moved.
pub fn shift(resources: &mut [Value], days: i64) -> usize {
    let mut moved = 0;
    for r in resources.iter_mut() {
        if let Value::Object(o) = r {
            shift_object(o, days, &mut moved);
        }
    }
    moved
}

fn shift_object(o: &mut Map<String, Value>, days: i64, moved: &mut usize) {
    shift_attachment(o, days, moved);
    for (k, v) in o.iter_mut() {
        if SKIPPED.contains(&k.as_str()) || k == "identifier" {
            continue;
        }
        shift_value(v, days, moved);
    }
}

fn shift_value(v: &mut Value, days: i64, moved: &mut usize) {
    match v {
        Value::String(s) => {
            if let Some(shifted) = shift_text(s, days).or_else(|| shift_in_text(s, days)) {
                *s = shifted;
                *moved += 1;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| shift_value(i, days, moved)),
        Value::Object(o) => shift_object(o, days, moved),
        _ => {}
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Full dates written in free text: ISO (with an optional time), US numeric, spelled out.
static IN_TEXT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        \b(?P<iy>\d{4})-(?P<im>\d{2})-(?P<id>\d{2})\b
        | \b(?P<um>\d{1,2})/(?P<ud>\d{1,2})/(?P<uy>\d{4}|\d{2})\b
        | \b(?P<sm>January|February|March|April|May|June|July|August|September|October|November|December)
          \s+(?P<sd>\d{1,2}),\s*(?P<sy>\d{4})\b",
    )
    .ok()
});

/// `s` with the full dates written in it shifted by `days`, when there are any.
pub fn shift_in_text(s: &str, days: i64) -> Option<String> {
    let re = IN_TEXT.as_ref()?;
    if !re.is_match(s) {
        return None;
    }
    let by = Duration::days(days);
    let out = re.replace_all(s, |c: &Captures| {
        let num = |n: &str| c.name(n).and_then(|m| m.as_str().parse::<u32>().ok());
        let whole = c.get(0).map_or("", |m| m.as_str()).to_string();
        if let (Some(y), Some(m), Some(d)) = (num("iy"), num("im"), num("id")) {
            return date(y, m, d).map_or(whole, |t| (t + by).format("%Y-%m-%d").to_string());
        }
        if let (Some(y), Some(m), Some(d)) = (c.name("uy"), num("um"), num("ud")) {
            let two = y.as_str().len() == 2;
            let Ok(mut year) = y.as_str().parse::<u32>() else {
                return whole;
            };
            if two {
                // Two-digit years: the century that puts the date at most a year ahead.
                year += if year <= 30 { 2000 } else { 1900 };
            }
            return date(year, m, d).map_or(whole, |t| {
                let t = t + by;
                if two {
                    format!("{:02}/{:02}/{:02}", t.month(), t.day(), t.year() % 100)
                } else {
                    format!("{}/{}/{}", t.month(), t.day(), t.year())
                }
            });
        }
        let month = c
            .name("sm")
            .and_then(|m| MONTHS.iter().position(|n| *n == m.as_str()))
            .and_then(|i| u32::try_from(i + 1).ok());
        if let (Some(m), Some(d), Some(y)) = (month, num("sd"), num("sy")) {
            return date(y, m, d).map_or(whole, |t| {
                let t = t + by;
                format!("{} {}, {}", MONTHS[t.month0() as usize], t.day(), t.year())
            });
        }
        whole
    });
    (out != s).then(|| out.into_owned())
}

fn date(y: u32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d)
}

/// Text attachments (`contentType` text/*, JSON, XML; `data` in base64) with the dates
/// in them shifted; `size` follows and `hash` goes (it was the original's).
fn shift_attachment(o: &mut Map<String, Value>, days: i64, moved: &mut usize) {
    let textual = o
        .get("contentType")
        .and_then(Value::as_str)
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| {
            t.starts_with("text/")
                || t.ends_with("/json")
                || t.ends_with("+json")
                || t.ends_with("/xml")
                || t.ends_with("+xml")
        });
    if !textual {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(text) = o
        .get("data")
        .and_then(Value::as_str)
        .and_then(|d| b64.decode(d).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
    else {
        return;
    };
    if let Some(shifted) = shift_in_text(&text, days) {
        o.insert("size".into(), Value::from(shifted.len()));
        o.insert("data".into(), Value::String(b64.encode(shifted.as_bytes())));
        o.remove("hash");
        *moved += 1;
    }
}

/// `s` shifted by `days` when it is wholly a FHIR date, dateTime or instant.
pub fn shift_text(s: &str, days: i64) -> Option<String> {
    let by = Duration::days(days);
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    match b.len() {
        4 if digits(0..4) => {
            let y: i32 = s.parse().ok()?;
            let mid = NaiveDate::from_ymd_opt(y, 7, 2)? + by;
            Some(format!("{:04}", mid.year()))
        }
        7 if digits(0..4) && b[4] == b'-' && digits(5..7) => {
            let d = NaiveDate::parse_from_str(&format!("{s}-15"), "%Y-%m-%d").ok()? + by;
            Some(d.format("%Y-%m").to_string())
        }
        10 if digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10) => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()? + by;
            Some(d.format("%Y-%m-%d").to_string())
        }
        n if n > 10 && digits(0..4) && b[10] == b'T' => {
            let t: DateTime<FixedOffset> = DateTime::parse_from_rfc3339(s).ok()?;
            let shifted = t + by;
            // Keep the original's form: its fraction digits and its zone notation.
            let date = shifted.format("%Y-%m-%d").to_string();
            Some(format!("{date}{}", &s[10..]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn offsets_are_stable_per_pair_never_zero_and_spread() {
        let secret = [7u8; 32];
        let a = offset_days(&secret, "p1", "did:web:a");
        assert_eq!(a, offset_days(&secret, "p1", "did:web:a"));
        let mut distinct = std::collections::HashSet::new();
        let mut negative = 0;
        for i in 0..500 {
            let d = offset_days(&secret, &format!("p{i}"), "did:web:a");
            assert!((1..=365).contains(&d.abs()), "{d}");
            distinct.insert(d);
            negative += usize::from(d < 0);
        }
        assert!(distinct.len() > 250, "{}", distinct.len());
        assert!((150..=350).contains(&negative), "{negative}");
        let other: Vec<i64> = (0..20)
            .map(|i| offset_days(&secret, &format!("p{i}"), "did:web:b"))
            .collect();
        let same: Vec<i64> = (0..20)
            .map(|i| offset_days(&secret, &format!("p{i}"), "did:web:a"))
            .collect();
        assert_ne!(other, same, "another recipient, other offsets");
        assert_ne!(a, offset_days(&[8u8; 32], "p1", "did:web:a"));
    }

    #[test]
    fn every_precision_moves_and_keeps_its_form() {
        assert_eq!(shift_text("1931-02-14", 10).as_deref(), Some("1931-02-24"));
        assert_eq!(shift_text("1931-02-14", -45).as_deref(), Some("1930-12-31"));
        assert_eq!(
            shift_text("2025-01-03T06:55:38.276788+00:00", 30).as_deref(),
            Some("2025-02-02T06:55:38.276788+00:00")
        );
        assert_eq!(
            shift_text("2025-01-03T06:55:38Z", -3).as_deref(),
            Some("2024-12-31T06:55:38Z")
        );
        assert_eq!(shift_text("2025-03", 20).as_deref(), Some("2025-04"));
        assert_eq!(shift_text("2025", 200).as_deref(), Some("2026"));
        for not_a_date in [
            "500 mg",
            "2025-13-01",
            "20250103",
            "1931-02-14 in a note",
            "12345",
            "4548-4",
        ] {
            assert_eq!(shift_text(not_a_date, 10), None, "{not_a_date}");
        }
    }

    #[test]
    fn dates_written_in_text_and_attachments_move() {
        let text = "Seen 2025-01-03, again 1/5/2025 and 01/07/25; next on February 14, 2025. Dose 500 mg, LOINC 4548-4, ratio 1/2.";
        assert_eq!(
            shift_in_text(text, 10).as_deref(),
            Some("Seen 2025-01-13, again 1/15/2025 and 01/17/25; next on February 24, 2025. Dose 500 mg, LOINC 4548-4, ratio 1/2.")
        );
        assert_eq!(shift_in_text("no dates, 13/45/2020 either", 10), None);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut r = vec![
            json!({"resourceType": "DocumentReference", "content": [{"attachment": {
            "contentType": "text/plain; charset=utf-8", "data": b64.encode("Note of 2025-01-03"),
            "size": 18, "hash": "x"}}, {"attachment": {"contentType": "application/pdf", "data": b64.encode("%PDF 2025-01-03")}}]}),
        ];
        shift(&mut r, -3);
        let a = &r[0]["content"][0]["attachment"];
        assert_eq!(
            b64.decode(a["data"].as_str().unwrap()).unwrap(),
            b"Note of 2024-12-31"
        );
        assert_eq!(a["size"], 18);
        assert!(a.get("hash").is_none());
        let pdf = &r[0]["content"][1]["attachment"];
        assert_eq!(
            b64.decode(pdf["data"].as_str().unwrap()).unwrap(),
            b"%PDF 2025-01-03"
        );
    }

    #[test]
    fn dates_everywhere_but_the_birth_date_and_identifiers_move() {
        let mut resources = vec![
            json!({"resourceType": "Patient", "id": "2020-01-01", "birthDate": "1931",
                   "deceasedDateTime": "2024-05-01T04:20:00+00:00",
                   "identifier": [{"value": "2020-01-01", "period": {"start": "2020-01-01"}}]}),
            json!({"resourceType": "Condition", "onsetDateTime": "1931-02-14T08:13:00+00:00",
                   "recordedDate": "1931-02-14", "note": [{"text": "seen 1931-02-14"}],
                   "code": {"coding": [{"code": "2020"}]}}),
        ];
        let moved = shift(&mut resources, 100);
        assert_eq!(moved, 4);
        assert_eq!(resources[0]["birthDate"], "1931");
        assert_eq!(resources[0]["id"], "2020-01-01");
        assert_eq!(
            resources[0]["identifier"][0]["period"]["start"],
            "2020-01-01"
        );
        assert_eq!(
            resources[0]["deceasedDateTime"],
            "2024-08-09T04:20:00+00:00"
        );
        assert_eq!(resources[1]["onsetDateTime"], "1931-05-25T08:13:00+00:00");
        assert_eq!(resources[1]["recordedDate"], "1931-05-25");
        assert_eq!(resources[1]["note"][0]["text"], "seen 1931-05-25");
        assert_eq!(resources[1]["code"]["coding"][0]["code"], "2020");
    }
}
