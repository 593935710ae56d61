use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::classes::{classify_identifier, Action, IdentifierClass};
use super::engine::Engine;
use super::resources::{age_over_89, generalize_address};
use super::{apply, pseudonym, Obligations, TokenizeContext};
use crate::vault::Vault;

#[test]
fn precedence_and_fail_closed_default() {
    let o = Obligations {
        reveal: vec!["name".into()],
        tokenize: vec!["name".into(), "ssn".into()],
        pseudonymize: vec!["ssn".into()],
        generalize: vec!["dates".into()],
        ..Obligations::default()
    };
    assert_eq!(o.action(IdentifierClass::Name), Action::Reveal);
    assert_eq!(o.action(IdentifierClass::Ssn), Action::Tokenize);
    assert_eq!(o.action(IdentifierClass::Dates), Action::Generalize);
    assert_eq!(o.action(IdentifierClass::Mrn), Action::Redact);
    assert_eq!(o.action(IdentifierClass::PatientId), Action::Redact);
    assert_eq!(o.action(IdentifierClass::Narrative), Action::Keep);
    assert_eq!(o.action(IdentifierClass::ResourceIds), Action::Keep);
}

#[test]
fn unknown_class_fails_validation_and_unknown_field_parsing() {
    let typo = Obligations {
        reveal: vec!["nmae".into()],
        ..Obligations::default()
    };
    assert_eq!(
        typo.validate(),
        Err(crate::policy::UnknownClass("nmae".into()))
    );
    let mut doc = serde_json::to_value(Obligations::default()).unwrap();
    assert!(serde_json::from_value::<Obligations>(doc.clone()).is_ok());
    doc["revael"] = json!([]);
    assert!(serde_json::from_value::<Obligations>(doc).is_err());
    // A decision that leaves a list out is malformed, not one that names nothing.
    assert!(serde_json::from_value::<Obligations>(json!({})).is_err());
}

#[test]
fn identifier_classes() {
    let mk = |code: &str, system: &str| json!({"type": {"coding": [{"code": code}]}, "system": system, "value": "x"});
    assert_eq!(
        classify_identifier(&mk("MR", "urn:a")),
        IdentifierClass::Mrn
    );
    assert_eq!(
        classify_identifier(&mk("", "http://hl7.org/fhir/sid/us-ssn")),
        IdentifierClass::Ssn
    );
    assert_eq!(
        classify_identifier(&mk("PPN", "urn:a")),
        IdentifierClass::Passport
    );
    assert_eq!(
        classify_identifier(&mk("", "http://example.org/passportNumber")),
        IdentifierClass::Passport
    );
    assert_eq!(
        classify_identifier(&mk("DL", "urn:a")),
        IdentifierClass::DriversLicense
    );
    assert_eq!(
        classify_identifier(&json!({"value": "1"})),
        IdentifierClass::OtherIdentifiers
    );
}

#[test]
fn ages_and_zip3() {
    let now = DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(age_over_89("1936-11-29", now), Some(false));
    assert_eq!(age_over_89("1936-11-28", now), Some(true));
    assert_eq!(age_over_89("1937", now), Some(false));
    assert_eq!(age_over_89("1936", now), Some(true));
    assert_eq!(age_over_89("garbage", now), None);
    let mut a = json!({"line": ["1 Main"], "city": "X", "state": "NH", "postalCode": "03601-1234",
        "extension": [{"url": "geo"}], "text": "t", "district": "d"});
    generalize_address(a.as_object_mut().unwrap());
    assert_eq!(a, json!({"state": "NH", "postalCode": "000"}));
    let mut a = json!({"state": "MA", "postalCode": "02139"});
    generalize_address(a.as_object_mut().unwrap());
    assert_eq!(a, json!({"state": "MA", "postalCode": "021"}));
}

fn context_parts() -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::open(dir.path()).unwrap();
    let vault = Vault::open(db.tree("v"), [1u8; 32]);
    (dir, vault)
}

/// A clinical context for recipient `did:web:b`, decided now.
fn clinical_for_b<'a>(vault: &'a Vault, key: &'a [u8; 32]) -> TokenizeContext<'a> {
    TokenizeContext {
        recipient_org: "did:web:b",
        domain: "clinical",
        pseudonym_key: key,
        vault,
        now: Utc::now(),
    }
}

#[test]
fn contained_resources_keep_local_ids_and_lose_names() {
    let (_d, vault) = context_parts();
    let key = [0u8; 32];
    let ctx = clinical_for_b(&vault, &key);
    let obs = json!({"resourceType": "Observation", "id": "o1",
        "contained": [{"resourceType": "RelatedPerson", "id": "rp",
                       "name": [{"family": "Kowalczyk", "given": ["Irena"]}],
                       "telecom": [{"system": "phone", "value": "555-123-4567"}]}],
        "performer": [{"reference": "#rp", "display": "Irena Kowalczyk"}],
        "extension": [{"url": "x", "valueReference": {"reference": "Patient/zz", "display": "Kowalczyk"}}]});
    let o = Obligations {
        pseudonymize: vec!["resource-ids".into()],
        ..Obligations::default()
    };
    let out = apply(vec![obs], &o, &ctx).unwrap().resources;
    let text = serde_json::to_string(&out).unwrap();
    assert!(
        !text.contains("Kowalczyk") && !text.contains("Irena") && !text.contains("555-123"),
        "{text}"
    );
    assert_eq!(out[0]["contained"][0]["id"], "rp");
    assert_eq!(out[0]["performer"][0]["reference"], "#rp");
    assert!(out[0]["id"].as_str().unwrap().starts_with("p-"));
    assert_eq!(
        out[0]["extension"],
        json!([{"url": "x"}]),
        "patient-id redacted: the reference goes"
    );
}

#[test]
fn reference_forms() {
    let engine_ctx_key = [0u8; 32];
    let db = crate::db::temporary().unwrap();
    let vault = Vault::open(db.tree("v"), [1u8; 32]);
    let ctx = clinical_for_b(&vault, &engine_ctx_key);
    let o = Obligations::default();
    let resources = vec![json!({"resourceType": "Patient", "id": "p1"})];
    let e = Engine::new(&o, &ctx, &resources);
    assert_eq!(
        e.parse_reference("Patient/p1"),
        Some(("Patient".into(), "p1".into()))
    );
    assert_eq!(
        e.parse_reference("urn:uuid:p1"),
        Some(("Patient".into(), "p1".into()))
    );
    assert_eq!(
        e.parse_reference("https://fhir.example/r4/Observation/o1/_history/3"),
        Some(("Observation".into(), "o1".into()))
    );
    assert_eq!(e.parse_reference("Patient?identifier=a|b"), None);
    assert_eq!(e.parse_reference("urn:uuid:unknown"), None);
    assert_eq!(e.parse_reference("garbage"), None);
}

// ---------------------------------------------------------------------------------------
// Free text: the patient's values in every form, generic shapes, clinical content kept
// ---------------------------------------------------------------------------------------

mod scrubbing {
    use serde_json::{json, Value};

    use crate::tokenize::scrub::{Generic, Scrubber, Secrets};
    use crate::tokenize::REDACTED;

    const ALL: Generic = Generic {
        ssn: true,
        telecom: true,
        urls: true,
    };

    fn scrubber(build: impl FnOnce(&mut Secrets), generic: Generic) -> Scrubber {
        let mut secrets = Secrets::default();
        build(&mut secrets);
        Scrubber::new(secrets, generic)
    }

    fn v(s: &str) -> Option<&Value> {
        // Leaked for the test's lifetime: Secrets reads `Option<&Value>` like the engine.
        Some(Box::leak(Box::new(json!(s))))
    }

    fn out(s: &Scrubber, text: &str) -> String {
        s.scrub(text, true).unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn words_respect_boundaries_case_and_marks() {
        let s = scrubber(
            |x| {
                x.name(v("Della"));
                x.name(v("Luz"));
                x.name(v("Aragón"));
                x.postal_code(v("00000"));
            },
            Generic::default(),
        );
        assert_eq!(
            out(&s, "Della is here; della! DELLA."),
            "[redacted] is here; [redacted]! [redacted]."
        );
        assert_eq!(s.scrub("Dellas", true), None);
        assert_eq!(s.scrub("100000", true), None);
        assert_eq!(out(&s, "zip 00000."), "zip [redacted].");
        assert_eq!(s.scrub("Luzón", true), None, "a word inside a longer one");
        assert_eq!(out(&s, "née ARAGON x"), "née [redacted] x");
        assert_eq!(out(&s, "<p>Arag&oacute;n</p>"), "<p>[redacted]</p>");
    }

    /// Automata are kept by their patterns: a second patient whose values include the
    /// first's and one more gets its own, and the first patient's is still right.
    #[test]
    fn kept_automata_answer_only_their_own_patterns() {
        let della = |x: &mut Secrets| x.name(v("Della"));
        let both = |x: &mut Secrets| {
            x.name(v("Della"));
            x.name(v("Hettinger"));
        };
        let first = scrubber(della, Generic::default());
        let wider = scrubber(both, Generic::default());
        let again = scrubber(della, Generic::default());
        let text = "Della Hettinger seen today";
        assert_eq!(out(&first, text), "[redacted] Hettinger seen today");
        assert_eq!(out(&wider, text), "[redacted] [redacted] seen today");
        assert_eq!(out(&again, text), "[redacted] Hettinger seen today");
    }

    #[test]
    fn names_are_matched_by_part() {
        let s = scrubber(
            |x| {
                x.name(v("García-Márquez de la Vega"));
                x.name(v("José"));
            },
            Generic::default(),
        );
        let o = scrubber(|x| x.name(v("O'Brien")), Generic::default());
        assert_eq!(out(&o, "Mrs O\u{2019}BRIEN"), "Mrs [redacted]");
        assert_eq!(
            out(&s, "Seen: GARCIA, Jose; Sra. Vega called. la paz de todos"),
            "Seen: [redacted], [redacted]; Sra. [redacted] called. la paz de todos"
        );
    }

    #[test]
    fn numbers_in_any_writing() {
        let s = scrubber(
            |x| {
                x.value(v("999-77-0001"));
                x.phone(v("555-770-0001"));
            },
            Generic::default(),
        );
        for form in [
            "999770001",
            "999-77-0001",
            "999 77 0001",
            "999.77.0001",
            "(555) 770-0001",
            "555.770.0001",
            "555-770-0001",
            "5557700001",
            "+1 555 770 0001",
            "+15557700001",
            "1-555-770-0001",
        ] {
            let text = format!("ref: {form}, ok");
            assert_eq!(out(&s, &text), "ref: [redacted], ok", "{form}");
        }
        // Typographic dashes are dashes.
        assert_eq!(out(&s, "tel 555\u{2013}770\u{2013}0001"), "tel [redacted]");
        // Inside a longer number it is another number.
        assert_eq!(s.scrub("acct 19997700012", true), None);
        assert_eq!(s.scrub("55577000019", true), None);
    }

    #[test]
    fn addresses_fold_case_marks_and_whitespace() {
        let s = scrubber(
            |x| {
                x.value(v("12 Calle Nandu"));
                x.value(v("San José"));
                x.postal_code(v("02139-4307"));
            },
            Generic::default(),
        );
        assert_eq!(out(&s, "lives at 12 CALLE ÑANDÚ."), "lives at [redacted].");
        assert_eq!(
            out(&s, "12   calle\n\tñandú, SAN JOSE"),
            "[redacted], [redacted]"
        );
        assert_eq!(
            out(&s, "zip 02139 / 021394307"),
            "zip [redacted] / [redacted]"
        );
        let z = scrubber(|x| x.postal_code(v("84806")), Generic::default());
        assert_eq!(
            z.scrub("LOINC 8480-6", true),
            None,
            "a code is not a postal code"
        );
        assert_eq!(out(&z, "zip 84806"), "zip [redacted]");
        assert_eq!(
            out(&s, "Ｓａｎ　Ｊｏｓé"),
            "[redacted]",
            "full-width compatibility forms"
        );
    }

    #[test]
    fn birth_date_in_every_writing_and_other_dates_kept() {
        let s = scrubber(|x| x.birth_date(v("1931-02-14")), Generic::default());
        for form in [
            "1931-02-14",
            "1931-02-14T08:30:00Z",
            "2/14/1931",
            "02/14/1931",
            "02/14/31",
            "2-14-1931",
            "14.2.1931",
            "14.02.1931",
            "14/02/1931",
            "February 14, 1931",
            "february 14 1931",
            "Feb. 14th, 1931",
            "14 Feb 1931",
            "14th of February 1931",
            "14-FEB-1931",
            "19310214",
            "02141931",
        ] {
            let text = format!("born {form} at home");
            let got = out(&s, &text);
            assert!(
                got.starts_with("born [redacted]") && !got.contains("1931"),
                "{form}: {got}"
            );
        }
        for other in [
            "seen 2024-02-14",
            "seen 02/15/1931",
            "Feb 14, 1932",
            "14 March 1931",
            "visit on 3/4/2024",
            "1931",
        ] {
            assert_eq!(s.scrub(other, true), None, "{other}");
        }
    }

    #[test]
    fn generic_shapes_go_and_clinical_content_stays() {
        let s = scrubber(|_| {}, ALL);
        assert_eq!(
            out(&s, "SSN 123-45-6789; ssn: 123456789."),
            format!("SSN {REDACTED}; ssn: {REDACTED}.")
        );
        assert_eq!(
            out(&s, "call (617) 555-0100 or +44 20 7946 0958, x@y.org"),
            format!("call {REDACTED} or {REDACTED}, {REDACTED}")
        );
        assert_eq!(
            out(
                &s,
                "see https://portal.example/chart?mrn=12345678 and https://hl7.org/fhir"
            ),
            format!("see {REDACTED} and https://hl7.org/fhir")
        );
        for clinical in [
            "LOINC 8480-6 systolic 120 mmHg",
            "metformin 500 mg twice daily, 98.6 F",
            "ref 550e8400-e29b-41d4-a716-446655440000",
            "Observation/obs-123-45-6789x",
            "oid 2.16.840.1.113883.555.770.0001",
            "visit 2024-03-05 at 10:30, next 03/12/2024",
            "NDC 0002-3227-30, lot 2024.11.0005",
            "http://snomed.info/sct 38341003",
        ] {
            assert_eq!(s.scrub(clinical, true), None, "{clinical}");
        }
        // Codes of closed vocabularies are not read for generic shapes.
        assert_eq!(s.scrub("123-45-6789", false), None);
    }

    /// A string scrubbed again in the same tokenization gets the first answer: with and
    /// without the generic shapes kept apart, long strings (not remembered) alike.
    #[test]
    fn a_repeated_string_is_answered_as_the_first_time() {
        let s = scrubber(|x| x.name(v("Della")), ALL);
        let fresh = || scrubber(|x| x.name(v("Della")), ALL);
        let long_note = format!(
            "{} Della 123-45-6789",
            "history of present illness ".repeat(8)
        );
        let texts = [
            "Encounter Diagnosis",
            "Della called",
            "SSN 123-45-6789",
            "123-45-6789",
            long_note.as_str(),
        ];
        for round in 0..3 {
            for text in texts {
                for generic in [false, true] {
                    assert_eq!(
                        s.scrub(text, generic),
                        fresh().scrub(text, generic),
                        "round {round}: {text:?}, generic {generic}"
                    );
                }
            }
        }
        // Generic shapes go only where asked, whichever was asked first.
        assert_eq!(s.scrub("123-45-6789", false), None);
        assert_eq!(s.scrub("123-45-6789", true).as_deref(), Some(REDACTED));
        assert_eq!(
            s.scrub("Della called", false).as_deref(),
            Some("[redacted] called")
        );
    }

    #[test]
    fn revealed_classes_keep_their_generic_shapes() {
        let s = scrubber(
            |_| {},
            Generic {
                ssn: true,
                telecom: false,
                urls: false,
            },
        );
        assert_eq!(s.scrub("call (617) 555-0100, x@y.org", true), None);
        assert_eq!(out(&s, "123-45-6789"), REDACTED);
    }
}

// ---------------------------------------------------------------------------------------
// Attachments
// ---------------------------------------------------------------------------------------

mod attachments {
    use base64::Engine as _;
    use chrono::Utc;
    use serde_json::{json, Value};

    use super::context_parts;
    use crate::tokenize::attachments::{attachment_hash, scannable, Charset};
    use crate::tokenize::{apply, Obligations, TokenizeContext, Tokenized};

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn unb64(v: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "pat1",
            "identifier": [{"type": {"coding": [{"code": "SS"}]}, "value": "999-77-0001"}],
            "name": [{"family": "Ñandú", "given": ["Della"]}],
            "birthDate": "1931-02-14"})
    }

    fn document(attachments: Vec<Value>) -> Value {
        let content: Vec<Value> = attachments
            .into_iter()
            .map(|a| json!({"attachment": a}))
            .collect();
        json!({"resourceType": "DocumentReference", "id": "doc1",
            "subject": {"reference": "Patient/pat1"}, "content": content})
    }

    fn run(obligations: Obligations, resources: Vec<Value>) -> Tokenized {
        let (_d, vault) = context_parts();
        let key = [0u8; 32];
        let ctx = TokenizeContext {
            recipient_org: "did:web:b",
            domain: "clinical",
            pseudonym_key: &key,
            vault: &vault,
            now: Utc::now(),
        };
        apply(resources, &obligations, &ctx).unwrap()
    }

    fn treat() -> Obligations {
        Obligations {
            reveal: vec!["name".into()],
            tokenize: vec!["ssn".into()],
            pseudonymize: vec!["patient-id".into(), "resource-ids".into()],
            ..Obligations::default()
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(scannable("text/plain"), Some(Charset::Utf8));
        assert_eq!(
            scannable("Text/HTML; charset=\"ISO-8859-1\""),
            Some(Charset::Latin1)
        );
        assert_eq!(
            scannable("application/fhir+json;charset=utf-8"),
            Some(Charset::Utf8)
        );
        assert_eq!(scannable("text/markdown"), Some(Charset::Utf8));
        assert_eq!(scannable("text/plain; charset=utf-16"), None);
        assert_eq!(scannable("application/pdf"), None);
        assert_eq!(scannable("image/jpeg"), None);
        assert_eq!(scannable("application/dicom"), None);
        assert_eq!(scannable(""), None);
    }

    #[test]
    fn text_is_scrubbed_and_size_and_hash_made_true() {
        let note = "Della Nandu, SSN 999770001, DOB 02/14/1931. BP 120/80, LOINC 8480-6.";
        let latin1: Vec<u8> = "Sra. ÑANDÚ 999 77 0001".chars().map(|c| c as u8).collect();
        let out = run(
            Obligations {
                reveal: vec![],
                ..treat()
            },
            vec![
                patient(),
                document(vec![
                    json!({"contentType": "text/plain", "data": b64(note.as_bytes()),
                        "size": note.len(), "hash": attachment_hash(note.as_bytes())}),
                    json!({"contentType": "text/plain; charset=iso-8859-1", "data": b64(&latin1)}),
                ]),
            ],
        );
        let doc = &out.resources[1];
        let a = &doc["content"][0]["attachment"];
        let text = String::from_utf8(unb64(&a["data"])).unwrap();
        assert_eq!(
            text,
            "[redacted] [redacted], SSN [redacted], DOB [redacted]. BP 120/80, LOINC 8480-6."
        );
        assert_eq!(a["size"], text.len());
        assert_eq!(a["hash"], attachment_hash(text.as_bytes()));
        let l = &doc["content"][1]["attachment"];
        assert_eq!(unb64(&l["data"]), b"Sra. [redacted] [redacted]");
        assert!(out.withheld.is_empty(), "{:?}", out.withheld);
    }

    #[test]
    fn unscannable_content_is_withheld_and_reported() {
        let pdf = b"%PDF-1.4 Della Nandu 999-77-0001";
        let out = run(
            treat(),
            vec![
                patient(),
                document(vec![
                    json!({"contentType": "application/pdf", "data": b64(pdf), "size": 33,
                        "hash": attachment_hash(pdf), "title": "Note"}),
                    json!({"data": b64(b"undeclared")}),
                    json!({"contentType": "text/plain", "data": b64(&[0xff, 0xfe, 0x00])}),
                    json!({"contentType": "text/plain", "url": "Binary/abc"}),
                ]),
            ],
        );
        let doc = &out.resources[1];
        let text = serde_json::to_string(doc).unwrap();
        assert!(!text.contains("\"data\"") && !text.contains("\"url\"") && !text.contains("hash"));
        assert_eq!(doc["content"][0]["attachment"]["title"], "Note");
        let id = doc["id"].as_str().unwrap();
        let notes: Vec<(String, &str)> = out
            .withheld
            .iter()
            .map(|w| {
                assert_eq!(w.resource_type, "DocumentReference");
                assert_eq!(w.resource_id.as_deref(), Some(id));
                (w.path.clone(), w.reason)
            })
            .collect();
        assert_eq!(
            notes,
            [
                (
                    "DocumentReference.content[0].attachment.data".to_string(),
                    "attachment-not-scannable"
                ),
                (
                    "DocumentReference.content[1].attachment.data".to_string(),
                    "attachment-not-scannable"
                ),
                (
                    "DocumentReference.content[2].attachment.data".to_string(),
                    "attachment-undecodable"
                ),
                (
                    "DocumentReference.content[3].attachment.url".to_string(),
                    "attachment-url-not-scanned"
                ),
            ]
        );
        let notes = format!("{:?}", out.withheld);
        assert!(!notes.contains("Della") && !notes.contains("999") && !notes.contains("doc1"));
    }

    #[test]
    fn revealed_attachments_keep_binary_content_and_redacted_ones_are_reported() {
        let pdf = b"%PDF-1.4";
        let doc = document(vec![
            json!({"contentType": "application/pdf", "data": b64(pdf), "url": "Binary/b1"}),
        ]);
        let out = run(
            Obligations {
                reveal: vec!["name".into(), "attachments".into()],
                ..treat()
            },
            vec![patient(), doc.clone()],
        );
        assert_eq!(out.resources[1]["content"], doc["content"]);
        assert!(out.withheld.is_empty());

        let out = run(
            Obligations {
                redact: vec!["attachments".into()],
                ..treat()
            },
            vec![patient(), doc],
        );
        let a = &out.resources[1]["content"][0]["attachment"];
        assert_eq!(a, &json!({"contentType": "application/pdf"}));
        assert_eq!(out.withheld.len(), 1);
        assert_eq!(out.withheld[0].reason, "attachments-redacted");
        assert_eq!(
            out.withheld[0].path,
            "DocumentReference.content[0].attachment"
        );
    }

    #[test]
    fn attachments_are_found_by_shape_and_waveforms_are_not_attachments() {
        let consent = json!({"resourceType": "Consent", "id": "c1",
            "sourceAttachment": {"data": b64(b"scanned form")}});
        let obs = json!({"resourceType": "Observation", "id": "o1",
            "valueSampledData": {"origin": {"value": 0}, "period": 10, "dimensions": 1,
                                 "data": "1 2 3 4 5 6 7 8"},
            "extension": [{"url": "x", "valueSignature": {"sigFormat": "image/png",
                           "data": b64(b"\x89PNG")}}],
            "component": [{"valueAttachment": {"contentType": "text/plain",
                           "url": "https://custodian.example/Binary/1"}}]});
        let out = run(treat(), vec![patient(), consent, obs]);
        let c = &out.resources[1];
        let o = &out.resources[2];
        assert!(c.get("sourceAttachment").is_none());
        assert_eq!(o["valueSampledData"]["data"], "1 2 3 4 5 6 7 8");
        assert!(o["extension"][0]["valueSignature"].get("data").is_none());
        assert!(o["component"][0]["valueAttachment"].get("url").is_none());
        let reasons: Vec<(&str, &str)> = out
            .withheld
            .iter()
            .map(|w| (w.path.as_str(), w.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("Consent.sourceAttachment.data", "attachment-not-scannable"),
                (
                    "Observation.extension[0].valueSignature.data",
                    "attachment-not-scannable"
                ),
                (
                    "Observation.component[0].valueAttachment.url",
                    "attachment-url-not-scanned"
                ),
            ]
        );
    }

    #[test]
    fn a_date_on_the_hidden_birth_date_goes_unless_dates_are_shifted() {
        let condition = json!({"resourceType": "Condition", "id": "c1",
            "onsetDateTime": "1931-02-14T08:13:00+00:00",
            "recordedDate": "2024-03-05"});
        let out = run(treat(), vec![patient(), condition.clone()]);
        let c = &out.resources[1];
        assert!(c.get("onsetDateTime").is_none());
        assert_eq!(c["recordedDate"], "2024-03-05");
        assert_eq!(out.withheld[0].path, "Condition.onsetDateTime");
        assert_eq!(out.withheld[0].reason, "date-is-birth-date");

        let shifted = Obligations {
            shift_dates: true,
            ..treat()
        };
        let out = run(shifted, vec![patient(), condition]);
        assert_eq!(
            out.resources[1]["onsetDateTime"],
            "1931-02-14T08:13:00+00:00"
        );
        assert!(out.withheld.is_empty());
    }

    #[test]
    fn narrative_and_every_field_are_scrubbed() {
        let obs = json!({"resourceType": "Observation", "id": "o1",
            "text": {"status": "generated",
                     "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Della &Ntilde;and&uacute; (555) 770-0001</div>"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "BP"},
            "valueString": "12 CALLE ÑANDÚ, born February 14, 1931",
            "note": [{"text": "SSN 999 77 0001, seen 2024-03-05, 500 mg"}]});
        let mut p = patient();
        p["telecom"] = json!([{"system": "phone", "value": "555-770-0001"}]);
        p["address"] = json!([{"line": ["12 Calle Ñandú"], "city": "Springfield"}]);
        let out = run(treat(), vec![p, obs]);
        let o = &out.resources[1];
        assert_eq!(
            o["text"]["div"],
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">Della &Ntilde;and&uacute; [redacted]</div>",
            "name revealed; phone hidden"
        );
        assert_eq!(o["valueString"], "[redacted], born [redacted]");
        assert_eq!(
            o["note"][0]["text"],
            "SSN [redacted], seen 2024-03-05, 500 mg"
        );
        assert_eq!(o["code"]["coding"][0]["code"], "8480-6");
    }
}

// ---------------------------------------------------------------------------------------
// meta: the server's record keeping is data, redacted unless `meta` is named
// ---------------------------------------------------------------------------------------

mod meta {
    use chrono::Utc;
    use serde_json::{json, Value};

    use super::context_parts;
    use crate::tokenize::{apply, Obligations, TokenizeContext};

    const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
    const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    const US_CORE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition";

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "pat1",
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "RH7781042"}],
            "name": [{"family": "Ñandú", "given": ["Della"]}],
            "birthDate": "1931-02-14"})
    }

    /// A Condition whose `meta` has every element, as a server exports it.
    fn condition() -> Value {
        json!({"resourceType": "Condition", "id": "c1",
            "meta": {
                "id": "m1",
                "versionId": "3",
                "lastUpdated": "2024-03-05T10:22:31.118+00:00",
                "_lastUpdated": {"extension": [{"url": "x", "valueString": "import"}]},
                "source": "https://ehr.riverside.example/feeds/adt#a1b2c3d4e5f6a7b8",
                "profile": [
                    US_CORE,
                    "http://hl7.org/fhir/StructureDefinition/Condition|4.0.1",
                    "not a url",
                    "https://profiles.example/RH7781042/StructureDefinition/c",
                    "https://profiles.example/StructureDefinition/c?patient=1",
                ],
                "security": [
                    {"system": CONFIDENTIALITY, "code": "R", "display": "restricted",
                     "userSelected": false},
                    {"system": ACT_CODE, "code": "PSY", "display": "psychiatry disorder information sensitivity"},
                    {"system": CONFIDENTIALITY, "code": "Q"},
                    {"system": ACT_CODE, "code": "MRN 0042"},
                    {"system": "https://riverside.example/fhir/CodeSystem/access", "code": "vip"},
                ],
                "tag": [{"system": "https://riverside.example/fhir/CodeSystem/ingest",
                         "code": "batch-20240305-0042"}],
                "extension": [{"url": "https://riverside.example/fhir/StructureDefinition/project",
                               "valueString": "cardio-registry-7781"}],
                "project": "cardio-registry-7781",
            },
            "subject": {"reference": "Patient/pat1"},
            "recordedDate": "2024-03-05"})
    }

    /// Treatment as the shipped policy decides it, plus `extra`.
    fn obligations(extra: impl FnOnce(&mut Obligations)) -> Obligations {
        let mut o = Obligations {
            reveal: vec!["name".into(), "birth-date".into()],
            pseudonymize: vec!["patient-id".into(), "resource-ids".into()],
            ..Obligations::default()
        };
        extra(&mut o);
        o
    }

    fn run_for(
        o: &Obligations,
        resources: Vec<Value>,
        recipient: &str,
        domain: &str,
    ) -> Vec<Value> {
        let (_d, vault) = context_parts();
        let key = [5u8; 32];
        let ctx = TokenizeContext {
            recipient_org: recipient,
            domain,
            pseudonym_key: &key,
            vault: &vault,
            now: Utc::now(),
        };
        apply(resources, o, &ctx).unwrap().resources
    }

    fn run(o: &Obligations, resources: Vec<Value>) -> Vec<Value> {
        run_for(o, resources, "did:web:b", "clinical")
    }

    fn hl7_labels() -> Value {
        json!([{"system": CONFIDENTIALITY, "code": "R"}, {"system": ACT_CODE, "code": "PSY"}])
    }

    #[test]
    fn unnamed_meta_keeps_profiles_and_hl7_labels_only() {
        let out = run(&obligations(|_| {}), vec![patient(), condition()]);
        assert_eq!(
            out[1]["meta"],
            json!({
                "profile": [US_CORE, "http://hl7.org/fhir/StructureDefinition/Condition|4.0.1"],
                "security": hl7_labels(),
            }),
            "no versionId, lastUpdated, source, tag, extension, id or unknown key; a \
             profile that is no canonical URL or holds the patient's MRN goes; labels of \
             other systems or with codes those systems do not have go"
        );
        let text = serde_json::to_string(&out).unwrap();
        for gone in [
            "a1b2c3d4e5f6a7b8",
            "batch-2024",
            "cardio-registry",
            "2024-03-05T10:22",
        ] {
            assert!(!text.contains(gone), "{gone} left: {text}");
        }
        // Redacting names it explicitly: the same.
        let redacted = run(
            &obligations(|o| o.redact.push("meta".into())),
            vec![patient(), condition()],
        );
        assert_eq!(redacted[1]["meta"], out[1]["meta"]);
        // Generalizing has no meaningful form: a redaction.
        let generalized = run(
            &obligations(|o| o.generalize.push("meta".into())),
            vec![patient(), condition()],
        );
        assert_eq!(generalized[1]["meta"], out[1]["meta"]);
    }

    #[test]
    fn meta_left_empty_goes_and_a_malformed_one_too() {
        let mut c = condition();
        c["meta"] = json!({"versionId": "1", "source": "#abc", "tag": [{"code": "x"}]});
        let out = run(&obligations(|_| {}), vec![c.clone()]);
        assert!(out[0].get("meta").is_none(), "{}", out[0]);
        c["meta"] = json!("v1");
        let out = run(
            &obligations(|o| o.reveal.push("meta".into())),
            vec![c.clone()],
        );
        assert!(out[0].get("meta").is_none(), "{}", out[0]);
        c["meta"] = json!({"profile": "http://x.example/p", "security": {"code": "R"}});
        let out = run(&obligations(|_| {}), vec![c]);
        assert!(out[0].get("meta").is_none(), "{}", out[0]);
    }

    #[test]
    fn pseudonymized_version_is_per_recipient_domain_and_version() {
        let o = obligations(|o| o.pseudonymize.push("meta".into()));
        let version = |recipient: &str, domain: &str, v: &str| {
            let mut c = condition();
            c["meta"]["versionId"] = json!(v);
            let out = run_for(&o, vec![patient(), c], recipient, domain);
            let meta = &out[1]["meta"];
            assert!(meta.get("lastUpdated").is_none(), "a date has no pseudonym");
            assert!(meta.get("tag").is_none() && meta.get("source").is_none());
            assert_eq!(meta["security"], hl7_labels());
            let p = meta["versionId"].as_str().unwrap().to_string();
            assert!(p.starts_with("p-") && crate::records::is_fhir_id(&p), "{p}");
            p
        };
        let a = version("did:web:b", "clinical", "3");
        assert_eq!(a, version("did:web:b", "clinical", "3"), "stable");
        assert_ne!(a, version("did:web:c", "clinical", "3"), "per recipient");
        assert_ne!(a, version("did:web:b", "billing", "3"), "per domain");
        assert_ne!(a, version("did:web:b", "clinical", "4"), "per version");
        // Tokenize falls to a pseudonym (nothing to detokenize).
        let t = obligations(|o| o.tokenize.push("meta".into()));
        let out = run(&t, vec![patient(), condition()]);
        assert_eq!(out[1]["meta"]["versionId"], json!(a));
        // Without an id there is no version to name.
        let mut c = condition();
        c.as_object_mut().unwrap().remove("id");
        let out = run(&o, vec![c]);
        assert!(out[0]["meta"].get("versionId").is_none());
    }

    #[test]
    fn revealed_meta_keeps_version_time_tags_and_labels_but_never_source_or_extensions() {
        let o = obligations(|o| o.reveal.push("meta".into()));
        let out = run(&o, vec![patient(), condition()]);
        let meta = &out[1]["meta"];
        let source = condition()["meta"].clone();
        assert_eq!(meta["versionId"], "3");
        assert_eq!(meta["lastUpdated"], "2024-03-05T10:22:31.118+00:00");
        assert_eq!(meta["tag"], source["tag"]);
        assert_eq!(meta["security"], source["security"]);
        assert_eq!(meta["profile"].as_array().unwrap().len(), 2);
        for gone in ["source", "extension", "id", "project", "_lastUpdated"] {
            assert!(meta.get(gone).is_none(), "{gone}: {meta}");
        }
        // A version that is no FHIR id is not one.
        let mut c = condition();
        c["meta"]["versionId"] = json!("3; drop table");
        let out = run(&o, vec![c]);
        assert!(out[0]["meta"].get("versionId").is_none());
    }

    #[test]
    fn revealed_last_update_follows_dates_and_the_shift() {
        let reveal = |dates: Option<&str>| {
            obligations(|o| {
                o.reveal.push("meta".into());
                if let Some(d) = dates {
                    o.generalize.push(d.into());
                }
            })
        };
        let out = run(&reveal(Some("dates")), vec![patient(), condition()]);
        assert_eq!(out[1]["meta"]["lastUpdated"], "2024");
        let o = obligations(|o| {
            o.reveal.push("meta".into());
            o.redact.push("dates".into());
        });
        let out = run(&o, vec![patient(), condition()]);
        assert!(out[1]["meta"].get("lastUpdated").is_none());
        // On the hidden birth date it would give it away, as any date.
        let mut c = condition();
        c["meta"]["lastUpdated"] = json!("1931-02-14T09:00:00Z");
        let hidden_birth = obligations(|o| {
            o.reveal = vec!["meta".into()];
        });
        let out = run(&hidden_birth, vec![patient(), c]);
        assert!(out[1]["meta"].get("lastUpdated").is_none(), "{}", out[1]);
        // `shift_dates` moves it with every other date.
        let mut out = run(&reveal(None), vec![patient(), condition()]);
        crate::dates::shift(&mut out, 10);
        assert_eq!(
            out[1]["meta"]["lastUpdated"],
            "2024-03-15T10:22:31.118+00:00"
        );
        assert_eq!(out[1]["recordedDate"], "2024-03-15");
    }

    #[test]
    fn contained_resources_have_no_version_or_last_update() {
        let mut c = condition();
        let mut inner = condition();
        inner["id"] = json!("local");
        c["contained"] = json!([inner]);
        let o = obligations(|o| o.reveal.push("meta".into()));
        let out = run(&o, vec![patient(), c]);
        let inner = &out[1]["contained"][0]["meta"];
        assert!(inner.get("versionId").is_none() && inner.get("lastUpdated").is_none());
        assert_eq!(inner["security"].as_array().unwrap().len(), 5);
        assert_eq!(out[1]["meta"]["versionId"], "3");
    }
}

// ---------------------------------------------------------------------------------------
// Identifiers outside `identifier`: extension values and DICOM UIDs
// ---------------------------------------------------------------------------------------

mod other_identifiers {
    use chrono::Utc;
    use serde_json::{json, Value};

    use super::context_parts;
    use crate::tokenize::{apply, Obligations, TokenizeContext};

    fn run_for(o: &Obligations, resources: Vec<Value>, recipient: &str) -> Vec<Value> {
        let (_d, vault) = context_parts();
        let key = [9u8; 32];
        let ctx = TokenizeContext {
            recipient_org: recipient,
            domain: "clinical",
            pseudonym_key: &key,
            vault: &vault,
            now: Utc::now(),
        };
        apply(resources, o, &ctx).unwrap().resources
    }

    fn pseudonymized() -> Obligations {
        Obligations {
            tokenize: vec!["ssn".into()],
            pseudonymize: vec!["patient-id".into(), "resource-ids".into()],
            ..Obligations::default()
        }
    }

    fn observation() -> Value {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "extension": [
            {"url": "https://riverside.example/fhir/StructureDefinition/lab-order",
             "valueIdentifier": {"system": "urn:oid:1.2.840.99999.4", "value": "ORD-7781-22"}},
            {"url": "https://riverside.example/fhir/StructureDefinition/specimen-uuid",
             "valueUuid": "urn:uuid:2f1c0b8e-8d3a-4c55-9d0e-0b9f3f7c6a11"},
            {"url": "https://riverside.example/fhir/StructureDefinition/analyzer-oid",
             "valueOid": "urn:oid:1.2.840.99999.7.7781"},
            {"url": "https://riverside.example/fhir/StructureDefinition/run",
             "valueId": "run-7781"},
            {"url": "https://riverside.example/fhir/StructureDefinition/ssn-on-order",
             "valueIdentifier": {"type": {"coding": [{"code": "SS"}]}, "value": "999-77-0001"}},
        ]})
    }

    #[test]
    fn extension_identifiers_go_with_their_class() {
        let out = run_for(&pseudonymized(), vec![observation()], "did:web:b");
        let ext = &out[0]["extension"];
        let order = ext[0]["valueIdentifier"]["value"].as_str().unwrap();
        assert!(order.starts_with("p-"), "{order}");
        assert_eq!(
            ext[0]["valueIdentifier"]["system"],
            "urn:oid:1.2.840.99999.4"
        );
        let other = run_for(&pseudonymized(), vec![observation()], "did:web:c");
        assert_ne!(
            other[0]["extension"][0]["valueIdentifier"]["value"],
            json!(order)
        );
        for (i, key) in [(1, "valueUuid"), (2, "valueOid"), (3, "valueId")] {
            assert!(
                ext[i].get(key).is_none(),
                "{key} has no pseudonym of its type"
            );
            assert!(ext[i]["url"].is_string());
        }
        let ssn = ext[4]["valueIdentifier"]["value"].as_str().unwrap();
        assert!(
            ssn.starts_with("tok_"),
            "typed as an SSN it follows ssn: {ssn}"
        );

        // Resource ids unnamed: kept as the resource's own identifiers are; the SSN is
        // redacted by default.
        let out = run_for(&Obligations::default(), vec![observation()], "did:web:b");
        let ext = &out[0]["extension"];
        assert_eq!(ext[0]["valueIdentifier"]["value"], "ORD-7781-22");
        assert_eq!(ext[3]["valueId"], "run-7781");
        assert!(ext[4].get("valueIdentifier").is_none());
        let text = serde_json::to_string(&out).unwrap();
        assert!(!text.contains("0001"), "{text}");

        // On a Patient an untyped one is the patient's (`other-identifiers`).
        let patient = json!({"resourceType": "Patient", "id": "p1", "extension": [
            {"url": "https://registry.example/fhir/StructureDefinition/registry-id",
             "valueIdentifier": {"system": "https://registry.example", "value": "R-5512"}}]});
        let o = Obligations {
            pseudonymize: vec!["resource-ids".into()],
            ..Obligations::default()
        };
        let out = run_for(&o, vec![patient], "did:web:b");
        assert!(
            out[0]["extension"][0].get("valueIdentifier").is_none(),
            "{}",
            out[0]
        );
    }

    fn study() -> Value {
        json!({"resourceType": "ImagingStudy", "id": "s1", "status": "available",
            "series": [{"uid": "1.2.840.99999.927563", "number": 1,
                        "instance": [{"uid": "1.2.840.99999.927563.1", "number": 1},
                                     {"uid": "1.2.840.99999.927563.2", "number": 2}]}]})
    }

    #[test]
    fn dicom_uids_are_pseudonymized_as_uids() {
        let out = run_for(&pseudonymized(), vec![study()], "did:web:b");
        let series = &out[0]["series"][0];
        let uids: Vec<&str> = std::iter::once(&series["uid"])
            .chain(
                series["instance"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| &i["uid"]),
            )
            .map(|u| u.as_str().unwrap())
            .collect();
        for uid in &uids {
            assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
            assert!(uid[5..].bytes().all(|b| b.is_ascii_digit()), "{uid}");
            assert!(crate::records::is_fhir_id(uid));
        }
        assert_eq!(
            uids.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
        let again = run_for(&pseudonymized(), vec![study()], "did:web:b");
        assert_eq!(again[0]["series"], out[0]["series"], "stable");
        let other = run_for(&pseudonymized(), vec![study()], "did:web:c");
        assert_ne!(other[0]["series"][0]["uid"], out[0]["series"][0]["uid"]);

        let kept = run_for(&Obligations::default(), vec![study()], "did:web:b");
        assert_eq!(kept[0]["series"], study()["series"]);
        let o = Obligations {
            redact: vec!["resource-ids".into()],
            ..Obligations::default()
        };
        let redacted = run_for(&o, vec![study()], "did:web:b");
        assert!(!serde_json::to_string(&redacted).unwrap().contains("99999"));
    }
}

/// A token another replica stored first for the same value replaces, everywhere in the
/// output, the one this tokenization minted; nothing else changes.
#[test]
fn a_token_replaced_at_commit_is_replaced_in_the_output() {
    let db = crate::db::temporary().unwrap();
    let here = Vault::open(db.tree("v"), [1u8; 32]);
    let there = Vault::open(db.tree("v"), [1u8; 32]);
    let mut minted = crate::vault::NewTokens::default();
    let ours = here
        .put_staged("999-77-0001", "ssn", "did:web:b", "clinical", &mut minted)
        .unwrap();
    let stored = there
        .put("999-77-0001", "ssn", "did:web:b", "clinical")
        .unwrap();
    let replaced = here.commit(minted).unwrap();
    assert_eq!(replaced.get(&ours), Some(stored.as_str()));

    let mut resource = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ours}],
        "_birthDate": {"extension": [{"url": "x", "valueString": ours}]},
        "gender": "female",
    });
    super::replace_tokens(&mut resource, &replaced);
    assert_eq!(resource["identifier"][0]["value"], stored.as_str());
    assert_eq!(
        resource["_birthDate"]["extension"][0]["valueString"],
        stored.as_str()
    );
    assert_eq!(resource["gender"], "female");
}

/// Pseudonyms computed once per response (and per class with the prefix absorbed once) are
/// exactly [`pseudonym`]'s, which the custodian recomputes: the same value gives the same
/// pseudonym in ids and references, other values, classes or recipients other ones.
#[test]
fn pseudonyms_of_a_response_are_those_the_custodian_recomputes() {
    let (_d, vault) = context_parts();
    let key = [5u8; 32];
    let ctx_for = |recipient: &'static str| TokenizeContext {
        recipient_org: recipient,
        domain: "clinical",
        pseudonym_key: &key,
        vault: &vault,
        now: Utc::now(),
    };
    let o = Obligations {
        pseudonymize: vec!["patient-id".into(), "resource-ids".into()],
        ..Obligations::default()
    };
    let resources: Vec<Value> = std::iter::once(json!({"resourceType": "Patient", "id": "p1"}))
        .chain((0..40).map(|i| {
            json!({"resourceType": "Observation", "id": format!("o{i}"),
                   "subject": {"reference": "Patient/p1"},
                   "encounter": {"reference": format!("Encounter/e{}", i % 3)},
                   "hasMember": [{"reference": format!("Observation/o{}", (i + 1) % 40)}]})
        }))
        .collect();
    let expected = |recipient: &str, class: &str, value: &str| {
        pseudonym(&key, recipient, "clinical", class, value).replace('_', ".")
    };
    let out = apply(resources.clone(), &o, &ctx_for("did:web:b")).unwrap();
    let patient = expected("did:web:b", "patient-id", "p1");
    assert_eq!(out.resources[0]["id"], patient.as_str());
    for (i, r) in out.resources[1..].iter().enumerate() {
        let id = format!("Observation/o{i}");
        assert_eq!(r["id"], expected("did:web:b", "resource-ids", &id).as_str());
        assert_eq!(
            r["subject"]["reference"],
            format!("Patient/{patient}").as_str()
        );
        let encounter = format!("Encounter/e{}", i % 3);
        let encounter = format!(
            "Encounter/{}",
            expected("did:web:b", "resource-ids", &encounter)
        );
        assert_eq!(r["encounter"]["reference"], encounter.as_str());
        let member = format!("Observation/o{}", (i + 1) % 40);
        let member = format!(
            "Observation/{}",
            expected("did:web:b", "resource-ids", &member)
        );
        assert_eq!(r["hasMember"][0]["reference"], member.as_str());
    }
    // Another recipient: every pseudonym differs.
    let other = apply(resources, &o, &ctx_for("did:web:c")).unwrap();
    assert_eq!(
        other.resources[0]["id"],
        expected("did:web:c", "patient-id", "p1").as_str()
    );
    assert_ne!(other.resources[0]["id"], out.resources[0]["id"]);
}

/// The two halves of a tokenization: the walk mints tokens in memory only, and they are
/// in the vault once the commit returns; a second walk of the same record finds them there
/// and has nothing to write (the case tokenized on a request's own thread).
#[test]
fn a_walk_writes_nothing_and_its_commit_stores_what_it_minted() {
    let (_d, vault) = context_parts();
    let key = [5u8; 32];
    let ctx = clinical_for_b(&vault, &key);
    let o = Obligations {
        tokenize: vec!["ssn".into()],
        ..Obligations::default()
    };
    let record = || {
        vec![json!({
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-77-0002"}],
        })]
    };
    let first = super::walk(record(), &o, &ctx).unwrap();
    assert!(first.writes());
    assert_eq!(vault.len().unwrap(), 0, "the walk wrote to the vault");
    let first = first.commit(&vault).unwrap();
    let token = first.resources[0]["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("tok_"), "{token}");
    assert_eq!(vault.reveal(&token, "did:web:b").unwrap(), "999-77-0002");

    let second = super::walk(record(), &o, &ctx).unwrap();
    assert!(!second.writes());
    let second = second.commit(&vault).unwrap();
    assert_eq!(
        second.resources[0]["identifier"][0]["value"],
        token.as_str()
    );
    // And `apply` is the two halves.
    let whole = apply(record(), &o, &ctx).unwrap();
    assert_eq!(whole.resources, second.resources);
}

/// The size bound counts strings and keys by length, stops once past the bound, and
/// treats an empty page as small.
#[test]
fn at_most_bytes_counts_strings_keys_and_stops_past_the_bound() {
    use super::at_most_bytes;
    assert!(at_most_bytes(&[], 0));
    let note = |n: usize| json!({"resourceType": "Observation", "note": [{"text": "x".repeat(n)}]});
    assert!(at_most_bytes(&[note(10)], 1024));
    assert!(!at_most_bytes(&[note(2000)], 1024));
    // Many small resources add up.
    let many: Vec<Value> = (0..100).map(|_| note(20)).collect();
    assert!(!at_most_bytes(&many, 1024));
    assert!(at_most_bytes(&many, 64 * 1024));
    // Never more than the JSON text by much, never less than the strings alone.
    let text = serde_json::to_string(&many).unwrap().len();
    assert!(at_most_bytes(&many, text + text / 2));
    assert!(!at_most_bytes(&many, 100 * 20));
}
