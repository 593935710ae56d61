//! Generated patients (the `synth` crate) through the shipped policies and the tokenizer:
//! whatever identifier class a decision does not reveal leaves in no written form, from any
//! string field, narrative or text attachment; what cannot be scanned is withheld and
//! reported; clinical content stays.
//!
//! Besides what the generator writes (an intake note with every form, forms in notes,
//! conclusions and attachments), each test record gets the forms copied into every string
//! field of a sample of its resources, and one document with an attachment of each
//! scannable content type holding every form.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Datelike, Utc};
use gateway::policy::{sample_input, PolicyHolder, PolicyOptions};
use gateway::tokenize::{apply, Action, IdentifierClass, Obligations, TokenizeContext, Tokenized};
use gateway::vault::Vault;
use regex::Regex;
use serde_json::{json, Value};
use synth::{Generator, Identity, Options};
use unicode_normalization::UnicodeNormalization;

const KEY: [u8; 32] = [7u8; 32];
const RECIPIENT: &str = "did:web:clinic-c.example";

/// Types about the organization and its staff: the tokenizer keeps their text (a city or a
/// family name shared with the hospital's staff is not the patient's).
const SHARED: [&str; 4] = [
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
];

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The obligations of the shipped policies for TREAT, ETREAT (break-glass) and HPAYMT, and
/// the fail-closed default (nothing revealed: names too).
fn decisions() -> Vec<(&'static str, &'static str, Obligations)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let holder = PolicyHolder::with_options(
        &dir,
        PolicyOptions {
            time_limit: Duration::from_secs(5),
            ..PolicyOptions::default()
        },
    );
    let treat = holder.evaluate("clinical", &sample_input("clinical"));
    let mut etreat_input = sample_input("clinical");
    etreat_input.consents.clear();
    etreat_input.request.purpose = "ETREAT".into();
    etreat_input.request.justification = "patient unconscious after a road accident".into();
    let etreat = holder.evaluate("clinical", &etreat_input);
    let hpaymt = holder.evaluate("billing", &sample_input("billing"));
    for (name, d) in [("TREAT", &treat), ("ETREAT", &etreat), ("HPAYMT", &hpaymt)] {
        assert!(d.allow, "{name}: {:?}", d.reasons);
    }
    assert!(etreat.break_glass);
    vec![
        ("TREAT", "clinical", treat.obligations),
        ("ETREAT", "clinical", etreat.obligations),
        ("HPAYMT", "billing", hpaymt.obligations),
        ("default", "clinical", Obligations::default()),
    ]
}

/// A written form of an identifier and its tokenizer class.
#[derive(Debug, Clone)]
struct Form {
    class: IdentifierClass,
    text: String,
}

fn class_of(synth_class: &str) -> IdentifierClass {
    match synth_class {
        "name" => IdentifierClass::Name,
        "ssn" => IdentifierClass::Ssn,
        "mrn" => IdentifierClass::Mrn,
        "passport" => IdentifierClass::Passport,
        "drivers_license" => IdentifierClass::DriversLicense,
        "phone" | "email" => IdentifierClass::Telecom,
        "address" => IdentifierClass::Address,
        "birth_date" => IdentifierClass::BirthDate,
        other => panic!("unknown form class {other}"),
    }
}

/// The generator's forms, and more that people write: other separators, the city and
/// postal code, day-first and spelled-out dates, an address with its whitespace broken.
fn forms(who: &Identity) -> Vec<Form> {
    let mut out: Vec<Form> = who
        .forms()
        .into_iter()
        .map(|f| Form {
            class: class_of(f.class),
            text: f.text,
        })
        .collect();
    let ssn: String = who.ssn.chars().filter(char::is_ascii_digit).collect();
    let phone: String = who.phone.chars().filter(char::is_ascii_digit).collect();
    let b = who.birth_date;
    let (y, m, d) = (b.year(), b.month(), b.day());
    let month = b.format("%B").to_string();
    let mut add = |class, text: String| out.push(Form { class, text });
    use IdentifierClass::*;
    add(Ssn, format!("{}.{}.{}", &ssn[..3], &ssn[3..5], &ssn[5..]));
    add(
        Telecom,
        format!("{} {} {}", &phone[..3], &phone[3..6], &phone[6..]),
    );
    add(Telecom, format!("+1{phone}"));
    add(
        Telecom,
        format!("1-{}-{}-{}", &phone[..3], &phone[3..6], &phone[6..]),
    );
    add(Address, who.city.clone());
    add(Address, who.city.to_uppercase());
    add(Address, who.postal_code.clone());
    add(Address, who.line.replacen(' ', "  \n ", 1).to_uppercase());
    add(BirthDate, format!("{d}.{m}.{y}"));
    add(BirthDate, format!("{m}/{d}/{:02}", y % 100));
    add(BirthDate, format!("{month} {d}th, {y}"));
    add(BirthDate, format!("{d} {month} {y}"));
    add(
        BirthDate,
        format!("{d:02}-{}-{y}", month[..3].to_uppercase()),
    );
    add(Name, who.family.to_uppercase());
    if who.middle.chars().count() >= 2 {
        add(Name, who.middle.clone());
    }
    out
}

/// The resources of a generated transaction Bundle.
fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

/// Keys whose strings are structure the tokenizer rewrites or keeps (ids, references,
/// systems, profiles, content types, attachment data).
fn structural(key: &str) -> bool {
    matches!(
        key,
        "reference" | "id" | "resourceType" | "system" | "profile" | "contentType" | "data"
    )
}

/// Appends a form to every string field of `v`, cycling through `forms`.
fn inject(v: &mut Value, forms: &[Form], next: &mut usize) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if structural(k) {
                    continue;
                }
                if let Value::String(s) = child {
                    s.push_str(&format!(" {}", forms[*next % forms.len()].text));
                    *next += 1;
                } else {
                    inject(child, forms, next);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| inject(i, forms, next)),
        _ => {}
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A document with one attachment per scannable content type, each holding every form.
fn document_of_every_text_type(patient_id: &str, forms: &[Form]) -> Value {
    let all: Vec<&str> = forms.iter().map(|f| f.text.as_str()).collect();
    let plain = format!(
        "Forms: {}\nMetformin 500 mg. LOINC 4548-4.",
        all.join(" ; ")
    );
    let html = format!(
        "<html><body>{}</body></html>",
        all.iter()
            .map(|f| format!("<p>{f}</p>"))
            .collect::<String>()
    );
    let markdown = all
        .iter()
        .map(|f| format!("* **{f}**\n"))
        .collect::<String>();
    let json_doc = serde_json::to_string(&json!({"forms": all})).unwrap();
    let xml = format!(
        "<?xml version=\"1.0\"?><note>{}</note>",
        all.iter()
            .map(|f| format!("<line>{f}</line>"))
            .collect::<String>()
    );
    let latin1: Vec<u8> = plain
        .chars()
        .filter_map(|c| u8::try_from(u32::from(c)).ok())
        .collect();
    let attachments = [
        ("text/plain", plain.as_bytes().to_vec()),
        ("text/html; charset=utf-8", html.into_bytes()),
        ("text/markdown", markdown.into_bytes()),
        ("application/json", json_doc.clone().into_bytes()),
        ("application/fhir+json", json_doc.into_bytes()),
        ("text/xml", xml.clone().into_bytes()),
        ("application/xml", xml.into_bytes()),
        ("text/plain; charset=ISO-8859-1", latin1),
    ];
    let content: Vec<Value> = attachments
        .iter()
        .map(|(ct, bytes)| {
            json!({"attachment": {"contentType": ct, "data": b64(bytes), "size": bytes.len()}})
        })
        .collect();
    json!({"resourceType": "DocumentReference", "id": "every-text-type", "status": "current",
        "subject": {"reference": format!("Patient/{patient_id}")},
        "date": "2024-03-05T10:00:00+00:00",
        "description": "Metformin 500 mg",
        "content": content})
}

/// Every string of the output (keys excluded) and the decoded text of every attachment,
/// resources about the organization and its staff left out.
fn haystack(output: &[Value]) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Object(o) => {
                if let Some(data) = o.get("data").and_then(Value::as_str) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap();
                    let ct = o["contentType"].as_str().unwrap_or_default();
                    if ct.to_ascii_lowercase().contains("iso-8859-1") {
                        out.extend(bytes.iter().map(|&b| char::from(b)));
                    } else {
                        out.push_str(&String::from_utf8_lossy(&bytes));
                    }
                    out.push('\n');
                }
                o.values().for_each(|c| walk(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut hay = String::new();
    for r in output {
        if !SHARED.contains(&r["resourceType"].as_str().unwrap_or_default()) {
            walk(r, &mut hay);
        }
    }
    hay
}

/// Lower case, no marks, whitespace runs as one space: the comparison people make.
fn fold(s: &str) -> String {
    let folded: String = s
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where `form` still is in `hay` (folded): as written, on word boundaries, and, for a
/// number, its digits with any or no separators.
fn find(hay_folded: &str, form: &str) -> Option<String> {
    let needle = fold(form);
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    for (i, _) in hay_folded.match_indices(&needle) {
        let before = hay_folded[..i].chars().next_back();
        let after = hay_folded[i + needle.len()..].chars().next();
        if !word(before) && !word(after) {
            let from = hay_folded[..i]
                .char_indices()
                .rev()
                .nth(40)
                .map_or(0, |(j, _)| j);
            return Some(hay_folded[from..(i + needle.len())].to_string());
        }
    }
    let is_number = form
        .chars()
        .all(|c| c.is_ascii_digit() || " .-()/+".contains(c));
    let digits: Vec<String> = form
        .chars()
        .filter(char::is_ascii_digit)
        .map(String::from)
        .collect();
    if is_number && digits.len() >= 7 {
        let re = Regex::new(&format!(
            "(?:^|[^0-9]){}(?:[^0-9]|$)",
            digits.join(r"[\s.()/+-]*")
        ))
        .unwrap();
        if let Some(m) = re.find(hay_folded) {
            return Some(m.as_str().to_string());
        }
    }
    None
}

struct Run {
    vault: Vault,
    /// Holds the database's file.
    _dir: tempfile::TempDir,
}

fn run_env() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let db = gateway::db::open(dir.path()).unwrap();
    let vault = Vault::open(db.tree("vault"), KEY);
    Run { _dir: dir, vault }
}

/// What an exchange does to the record before it leaves: the tokenizer, then the date shift
/// where the decision asks for it.
fn tokenize(run: &Run, domain: &str, obligations: &Obligations, record: Vec<Value>) -> Tokenized {
    let ctx = TokenizeContext {
        recipient_org: RECIPIENT,
        domain,
        pseudonym_key: &KEY,
        vault: &run.vault,
        now: now(),
    };
    let mut o = obligations.clone();
    o.max_records = None;
    let mut out = apply(record, &o, &ctx).unwrap();
    if o.shift_dates {
        let days = gateway::dates::offset_days(&KEY, "patient", RECIPIENT);
        gateway::dates::shift(&mut out.resources, days);
    }
    out
}

/// A generated record with the forms copied into every string field of its first 40
/// resources and of every 25th (not the Patient's nor the RelatedPerson's: their fields are
/// the identifiers), plus the document of every text type.
fn record_with_forms(who: &Identity, bundle: &Value, forms: &[Form]) -> Vec<Value> {
    let mut record = resources(bundle);
    let mut next = 0;
    for (i, r) in record.iter_mut().enumerate() {
        let ty = r["resourceType"].as_str().unwrap_or_default().to_string();
        // The persons' own fields are where the identifiers come from.
        let person = ty == "Patient" || ty == "RelatedPerson";
        if (i < 40 || i % 25 == 0) && !SHARED.contains(&ty.as_str()) && !person {
            inject(r, forms, &mut next);
        }
    }
    record.push(document_of_every_text_type(&who.patient_id, forms));
    record
}

fn hidden(obligations: &Obligations, class: IdentifierClass) -> bool {
    obligations.action(class) != Action::Reveal
}

#[test]
fn no_hidden_identifier_leaves_in_any_form() {
    let checked = check_patients(
        Options {
            seed: 14,
            min_resources: 60,
            max_resources: 200,
            ..Options::default()
        },
        24,
    );
    assert!(checked > 24 * 3 * 20, "{checked}");
}

/// The same over hundreds of patients with records of real size (3,000 to 6,600
/// resources): minutes in a debug build, so run on demand
/// (`cargo test -p gateway --release --test scrub -- --ignored`).
#[test]
#[ignore = "minutes in a debug build: run on demand in release with --ignored"]
fn no_hidden_identifier_leaves_hundreds_of_large_records() {
    let checked = check_patients(Options::large(90), 200);
    assert!(checked > 200 * 3 * 20, "{checked}");
}

/// Runs `n` generated patients through every decision and checks what leaves; returns the
/// number of (form, decision) pairs checked.
fn check_patients(options: Options, n: usize) -> usize {
    let decisions = decisions();
    let run = run_env();
    let mut generator = Generator::new(options);
    let mut checked = 0usize;
    // One at a time: hundreds of large records do not fit in memory together.
    for patient in (0..n).map(|_| generator.patient()) {
        let who = &patient.identity;
        let forms = forms(who);
        let record = record_with_forms(who, &patient.bundle, &forms);
        // Every form is there to be found before the tokenizer runs.
        let before = fold(&haystack(&record));
        for form in &forms {
            assert!(find(&before, &form.text).is_some(), "{:?}", form.text);
        }
        let pdfs = record
            .iter()
            .filter(|r| r["content"][0]["attachment"]["contentType"] == "application/pdf")
            .count();
        for (purpose, domain, obligations) in &decisions {
            let out = tokenize(&run, domain, obligations, record.clone());
            let hay = fold(&haystack(&out.resources));
            for form in forms.iter().filter(|f| hidden(obligations, f.class)) {
                if let Some(context) = find(&hay, &form.text) {
                    panic!(
                        "{purpose}: {} form {:?} left in clear: ...{context}",
                        form.class.as_str(),
                        form.text
                    );
                }
                checked += 1;
            }
            // What could not be scanned was withheld, and said so.
            let not_scannable = out
                .withheld
                .iter()
                .filter(|w| w.reason == "attachment-not-scannable")
                .count();
            let redacted = out
                .withheld
                .iter()
                .filter(|w| w.reason == "attachments-redacted")
                .count();
            if obligations.action(IdentifierClass::Attachments) == Action::Keep {
                assert_eq!(not_scannable, pdfs, "{purpose}");
            } else {
                assert!(redacted > pdfs, "{purpose}");
            }
            let notes = format!("{:?}", out.withheld);
            for form in &forms {
                assert!(
                    find(&fold(&notes), &form.text).is_none(),
                    "{purpose}: a note quotes {:?}",
                    form.text
                );
            }
        }
    }
    checked
}

#[test]
fn clinical_content_stays_under_treatment() {
    let decisions = decisions();
    let (_, domain, treat) = &decisions[0];
    let run = run_env();
    let mut generator = Generator::new(Options {
        seed: 3,
        min_resources: 150,
        max_resources: 150,
        ..Options::default()
    });
    let patient = generator.patient();
    let who = &patient.identity;
    let forms = forms(who);
    // The generated record as it is (no forms copied into codes and dates), and the
    // document of every text type.
    let mut record = resources(&patient.bundle);
    record.push(document_of_every_text_type(&who.patient_id, &forms));
    let out = tokenize(&run, domain, treat, record.clone());
    let doc = out
        .resources
        .iter()
        .find(|r| r["description"] == "Metformin 500 mg")
        .unwrap();
    assert_eq!(doc["date"], "2024-03-05T10:00:00+00:00", "a visit date");
    let plain = base64::engine::general_purpose::STANDARD
        .decode(doc["content"][0]["attachment"]["data"].as_str().unwrap())
        .unwrap();
    let plain = String::from_utf8(plain).unwrap();
    assert!(
        plain.ends_with("Metformin 500 mg. LOINC 4548-4."),
        "{plain}"
    );
    assert!(plain.contains("[redacted]"));
    // Codes and their displays, quantities and dates that are not the birth date stay.
    let birth = who.birth_date.format("%Y-%m-%d").to_string();
    let codes = |rs: &[Value]| -> Vec<String> {
        rs.iter()
            .filter(|r| r["resourceType"] == "Observation")
            .map(|r| {
                format!(
                    "{} {} {}",
                    r["code"]["coding"][0]["code"],
                    r["valueQuantity"]["value"],
                    r["effectiveDateTime"]
                )
            })
            .collect()
    };
    let before: Vec<String> = codes(&record)
        .into_iter()
        .filter(|c| !c.contains(&birth))
        .collect();
    assert!(!before.is_empty());
    assert_eq!(codes(&out.resources), before);
}

#[test]
fn a_large_record_leaves_nothing_hidden() {
    let decisions = decisions();
    let (_, domain, etreat) = &decisions[1];
    let run = run_env();
    let mut generator = Generator::new(Options {
        seed: 5,
        min_resources: 5000,
        max_resources: 5000,
        ..Options::default()
    });
    let patient = generator.patient();
    let who = &patient.identity;
    let forms = forms(who);
    let record = record_with_forms(who, &patient.bundle, &forms);
    assert!(record.len() > 5000);
    let out = tokenize(&run, domain, etreat, record);
    assert!(out.resources.len() > 4000, "{}", out.resources.len());
    let hay = fold(&haystack(&out.resources));
    for form in forms.iter().filter(|f| hidden(etreat, f.class)) {
        assert_eq!(find(&hay, &form.text), None, "{:?}", form.text);
    }
    // Its speed is measured by the tokenize benchmark (gateway/benches), not here.
}
