//! One patient's history as a FHIR R4 transaction Bundle, Synthea-style (`urn:uuid:`
//! full URLs and references): a fixed head (the patient, who treats them, an intake note
//! holding every written form of their identifiers) and then encounters, each with the
//! resources it produced, until the record has the size asked for. References only point
//! backwards, so cutting the last encounter short leaves none dangling.
//!
//! Every resource carries the `meta` a FHIR server writes ([`meta`]): a version, the
//! instant it was stored, the feed and request that wrote it (`source`), US Core profiles,
//! a confidentiality label, the sync batch as a tag and the interface job as an extension.
//! It is drawn from a random source of its own, so that the rest of a record is the same
//! for a seed with or without it.

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use crate::{
    b64, pick, uuid, Identity, DRIVERS_LICENSE_SYSTEM, MRN_SYSTEM, PASSPORT_SYSTEM, SSN_SYSTEM,
};

/// Every resource type a large record holds besides Patient.
#[cfg(test)]
pub(crate) const RESOURCE_TYPES: [&str; 23] = [
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Coverage",
    "Encounter",
    "Condition",
    "Observation",
    "DiagnosticReport",
    "DocumentReference",
    "Procedure",
    "Immunization",
    "MedicationRequest",
    "MedicationAdministration",
    "AllergyIntolerance",
    "Claim",
    "ExplanationOfBenefit",
    "ImagingStudy",
    "Provenance",
    "Goal",
    "Device",
    "CarePlan",
    "RelatedPerson",
];

const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2 (disorder)"),
    (
        "38341003",
        "Hypertensive disorder, systemic arterial (disorder)",
    ),
    ("195662009", "Acute viral pharyngitis (disorder)"),
    ("10509002", "Acute bronchitis (disorder)"),
    ("55822004", "Hyperlipidemia (disorder)"),
    ("49436004", "Atrial fibrillation (disorder)"),
    ("26929004", "Alzheimer's disease (disorder)"),
    ("13645005", "Chronic obstructive lung disease (disorder)"),
    ("40055000", "Chronic sinusitis (disorder)"),
    ("271737000", "Anemia (disorder)"),
];

const VACCINES: &[(&str, &str)] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("113", "Td (adult) preservative free"),
    ("208", "SARS-COV-2 (COVID-19) vaccine, mRNA"),
];

const MEDICATIONS: &[(&str, &str)] = &[
    (
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
    ("855332", "Warfarin Sodium 5 MG Oral Tablet"),
];

const PROCEDURES: &[(&str, &str)] = &[
    ("430193006", "Medication reconciliation (procedure)"),
    (
        "710824005",
        "Assessment of health and social care needs (procedure)",
    ),
    ("73761001", "Colonoscopy (procedure)"),
    (
        "18286008",
        "Catheter ablation of tissue of heart (procedure)",
    ),
];

/// The interface feed that loaded the patient's demographics and who treats them.
const ADT_FEED: &str = "https://ehr.riverside.example/interfaces/adt";
/// The hospital's own tag and extension for its EHR sync (what real servers carry:
/// batch names, job ids).
const SYNC_TAGS: &str = "https://riverside.example/fhir/CodeSystem/ehr-sync";
const SYNC_JOB: &str = "https://riverside.example/fhir/StructureDefinition/ehr-sync-job";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const COMMON_TAGS: &str = "http://terminology.hl7.org/CodeSystem/common-tags";

/// The profile a US server declares for a resource type.
fn profile(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "Patient" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient",
        "Organization" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-organization",
        "Practitioner" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-practitioner",
        "PractitionerRole" => {
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-practitionerrole"
        }
        "Location" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-location",
        "Encounter" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter",
        "Condition" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition",
        "Observation" => "http://hl7.org/fhir/StructureDefinition/vitalsigns",
        "DiagnosticReport" => {
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-lab"
        }
        "DocumentReference" => {
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference"
        }
        "Procedure" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure",
        "Immunization" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-immunization",
        "MedicationRequest" => {
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-medicationrequest"
        }
        "AllergyIntolerance" => {
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-allergyintolerance"
        }
        "Goal" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-goal",
        "CarePlan" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan",
        "Device" => "http://hl7.org/fhir/us/core/StructureDefinition/us-core-implantable-device",
        "Coverage" => "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Coverage",
        "ExplanationOfBenefit" => {
            "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-ExplanationOfBenefit"
        }
        _ => return None,
    })
}

/// Who writes the resources being added: the feed, the request and the sync job, and
/// when (each resource is stored some minutes to hours after it).
struct Writer {
    rng: StdRng,
    feed: &'static str,
    request: String,
    job: String,
    at: NaiveDateTime,
}

impl Writer {
    /// A new request of `feed` at `at` (one transaction: the same request id and job for
    /// everything it writes).
    fn request(&mut self, feed: &'static str, at: NaiveDateTime) {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        self.feed = feed;
        self.request = (0..16)
            .map(|_| char::from(ALPHABET[self.rng.gen_range(0..ALPHABET.len())]))
            .collect();
        self.job = format!("job-{:08x}", self.rng.gen::<u32>());
        self.at = at;
    }
}

/// `meta` of a resource of type `ty` as the server wrote it.
fn meta(w: &mut Writer, ty: &str) -> Value {
    let r = &mut w.rng;
    let version = if r.gen_bool(0.8) {
        1
    } else {
        r.gen_range(2..=4)
    };
    let stored = w.at
        + Duration::minutes(r.gen_range(1..=720))
        + Duration::milliseconds(r.gen_range(0..60_000));
    let (label, display) = if ty == "DocumentReference" {
        ("R", "restricted")
    } else {
        ("N", "normal")
    };
    let mut tags =
        vec![json!({"system": SYNC_TAGS, "code": format!("batch-{}", stored.format("%Y%m%d"))})];
    if ty == "Observation" && r.gen_bool(0.2) {
        tags.push(json!({"system": COMMON_TAGS, "code": "actionable"}));
    }
    let mut meta = json!({
        "versionId": version.to_string(),
        "lastUpdated": stored.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string(),
        "source": format!("{}#{}", w.feed, w.request),
        "security": [{"system": CONFIDENTIALITY, "code": label, "display": display}],
        "tag": tags,
        "extension": [{"url": SYNC_JOB, "valueString": w.job}],
    });
    if let Some(p) = profile(ty) {
        meta["profile"] = json!([p]);
    }
    meta
}

struct Ctx<'a> {
    rng: &'a mut StdRng,
    writer: Writer,
    who: &'a Identity,
    patient: String,
    org: String,
    practitioners: [String; 2],
    location: String,
    coverage: String,
    entries: Vec<Value>,
    limit: usize,
}

impl Ctx<'_> {
    fn full(&self) -> bool {
        self.entries.len() >= self.limit
    }

    /// Adds a resource (gives it an id) and returns its `urn:uuid:` reference.
    fn add(&mut self, mut resource: Value) -> String {
        let id = uuid(self.rng);
        let url = format!("urn:uuid:{id}");
        if self.full() {
            return url;
        }
        let ty = resource["resourceType"]
            .as_str()
            .unwrap_or("Basic")
            .to_string();
        resource["id"] = json!(id);
        resource["meta"] = meta(&mut self.writer, &ty);
        self.entries.push(json!({
            "fullUrl": url,
            "resource": resource,
            "request": {"method": "POST", "url": ty},
        }));
        url
    }

    fn subject(&self) -> Value {
        json!({"reference": self.patient})
    }

    fn practitioner(&mut self) -> String {
        self.practitioners[self.rng.gen_range(0..2)].clone()
    }

    /// A randomly chosen written form of one of the patient's identifiers.
    fn some_form(&mut self) -> String {
        let forms = self.who.forms();
        forms[self.rng.gen_range(0..forms.len())].text.clone()
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn text_attachment(content_type: &str, text: &str, title: &str) -> Value {
    json!({
        "contentType": content_type,
        "data": b64(text),
        "size": text.len(),
        "title": title,
    })
}

/// The patient's transaction bundle with `n` resources besides the Patient; `meta` is
/// drawn from `meta_rng`.
pub(crate) fn bundle(
    rng: &mut StdRng,
    meta_rng: StdRng,
    who: &Identity,
    n: usize,
    today: NaiveDate,
) -> Value {
    let end = who.deceased.unwrap_or(today).min(today);
    let first = who.birth_date.max(end - Duration::days(30 * 365));
    let mut writer = Writer {
        rng: meta_rng,
        feed: ADT_FEED,
        request: String::new(),
        job: String::new(),
        at: first.and_hms_opt(9, 0, 0).unwrap_or_default(),
    };
    writer.request(ADT_FEED, writer.at);
    let mut patient = patient(who);
    patient["meta"] = meta(&mut writer, "Patient");
    let mut cx = Ctx {
        rng,
        writer,
        who,
        patient: format!("urn:uuid:{}", who.patient_id),
        org: String::new(),
        practitioners: [String::new(), String::new()],
        location: String::new(),
        coverage: String::new(),
        entries: Vec::with_capacity(n + 1),
        limit: n + 1,
    };
    cx.entries.push(json!({
        "fullUrl": cx.patient,
        "resource": patient,
        "request": {"method": "POST", "url": "Patient"},
    }));
    head(&mut cx);
    let span = (end - first).num_days().max(1);
    // Encounters in time order, until the record is full.
    let mut day = 0i64;
    while !cx.full() {
        day += cx.rng.gen_range(1..=(span / 40).max(2));
        let date = first + Duration::days(day.min(span));
        let at = date.and_hms_opt(cx.rng.gen_range(7..19), cx.rng.gen_range(0..60), 0);
        let Some(at) = at else { break };
        encounter(&mut cx, at);
    }
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": cx.entries,
    })
}

fn patient(who: &Identity) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "id": who.patient_id,
        "identifier": [
            {"type": coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical Record Number"),
             "system": MRN_SYSTEM, "value": who.mrn},
            {"type": coding("http://terminology.hl7.org/CodeSystem/v2-0203", "SS", "Social Security Number"),
             "system": SSN_SYSTEM, "value": who.ssn},
            {"type": coding("http://terminology.hl7.org/CodeSystem/v2-0203", "PPN", "Passport Number"),
             "system": PASSPORT_SYSTEM, "value": who.passport},
            {"type": coding("http://terminology.hl7.org/CodeSystem/v2-0203", "DL", "Driver's License"),
             "system": DRIVERS_LICENSE_SYSTEM, "value": who.drivers_license},
        ],
        "active": true,
        "name": [{"use": "official", "family": who.family, "given": [who.given, who.middle]}],
        "telecom": [
            {"system": "phone", "value": who.phone, "use": "home"},
            {"system": "email", "value": who.email, "use": "home"},
        ],
        "gender": who.gender,
        "birthDate": who.birth_date.format("%Y-%m-%d").to_string(),
        "address": [{
            "use": "home",
            "line": [who.line],
            "city": who.city,
            "state": who.state,
            "postalCode": who.postal_code,
            "country": "US",
        }],
        "text": {
            "status": "generated",
            "div": format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\">{} {}, born {}</div>",
                who.given, who.family, who.birth_date.format("%Y-%m-%d")
            ),
        },
    });
    if let Some(d) = who.deceased {
        p["deceasedDateTime"] = json!(format!("{}T04:20:00+00:00", d.format("%Y-%m-%d")));
    }
    p
}

/// Who treats the patient, their cover, a next of kin, the condition recorded at birth and
/// the intake note that holds every form of their identifiers.
fn head(cx: &mut Ctx) {
    let who = cx.who;
    cx.org = cx.add(json!({
        "resourceType": "Organization",
        "name": "Riverside General Hospital",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        "telecom": [{"system": "phone", "value": "555-010-0100"}],
        "address": [{"line": ["1 Hospital Plaza"], "city": "Boston", "state": "MA", "postalCode": "02114"}],
    }));
    for i in 0..2 {
        let family = pick(cx.rng, crate::names::FAMILY);
        let given = pick(cx.rng, crate::names::GIVEN_F);
        let npi = format!("99999{:05}", cx.rng.gen_range(0..100000));
        cx.practitioners[i] = cx.add(json!({
            "resourceType": "Practitioner",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}],
            "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
        }));
        let practitioner = cx.practitioners[i].clone();
        let org = cx.org.clone();
        cx.add(json!({
            "resourceType": "PractitionerRole",
            "practitioner": {"reference": practitioner},
            "organization": {"reference": org},
            "code": [coding("http://nucc.org/provider-taxonomy", "208D00000X", "General Practice")],
        }));
    }
    let org = cx.org.clone();
    cx.location = cx.add(json!({
        "resourceType": "Location",
        "name": "Riverside General Hospital, Ward 4",
        "managingOrganization": {"reference": org},
    }));
    let subject = cx.subject();
    cx.coverage = cx.add(json!({
        "resourceType": "Coverage",
        "status": "active",
        "subscriberId": format!("SUB{}", &who.ssn[7..]),
        "beneficiary": subject,
        "payor": [{"reference": org}],
        "type": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP", "health insurance plan policy"),
    }));
    let kin = pick(cx.rng, crate::names::GIVEN_F);
    cx.add(json!({
        "resourceType": "RelatedPerson",
        "patient": cx.subject(),
        "relationship": [coding("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "DAU", "daughter")],
        "name": [{"family": who.family, "given": [kin]}],
        "telecom": [{"system": "phone", "value": "555-013-0142"}],
        "address": [{"line": [who.line], "city": who.city, "postalCode": who.postal_code}],
    }));
    let birth = who.birth_date.and_hms_opt(8, 13, 0).unwrap_or_default();
    cx.add(json!({
        "resourceType": "Condition",
        "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
        "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
        "code": coding("http://snomed.info/sct", "32413006", "Transplacental hemorrhage (disorder)"),
        "subject": cx.subject(),
        "onsetDateTime": ts(birth),
        "recordedDate": ts(birth),
    }));
    let forms = who.forms();
    let mut note = String::from("Intake note\n\n");
    for f in &forms {
        let line = match f.class {
            "name" => format!("Patient: {}\n", f.text),
            "ssn" => format!("SSN {} on file.\n", f.text),
            "mrn" => format!("Chart MRN: {}\n", f.text),
            "passport" => format!("Passport no. {}\n", f.text),
            "drivers_license" => format!("Driver's licence {}\n", f.text),
            "phone" => format!("Call {} after 5pm.\n", f.text),
            "email" => format!("Portal login {}\n", f.text),
            "address" => format!("Lives at {}, {}\n", f.text, who.city),
            _ => format!("DOB {}\n", f.text),
        };
        note.push_str(&line);
    }
    note.push_str(
        "Allergies: penicillin. Metformin 500 mg twice daily. HbA1c 7.1 % (LOINC 4548-4).\n",
    );
    let author = cx.practitioner();
    cx.add(json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "type": coding("http://loinc.org", "34117-2", "History and physical note"),
        "subject": cx.subject(),
        "author": [{"reference": author}],
        "date": ts(birth),
        "description": format!("Intake for {} {}", who.given, who.family),
        "content": [{"attachment": text_attachment("text/plain; charset=utf-8", &note, "intake.txt")}],
    }));
}

/// One visit and what it produced.
fn encounter(cx: &mut Ctx, at: NaiveDateTime) {
    // What the visit produced reaches the server in one transaction of the EHR.
    cx.writer.request("", at);
    let who = cx.who;
    let practitioner = cx.practitioner();
    let (org, location, coverage) = (cx.org.clone(), cx.location.clone(), cx.coverage.clone());
    let enc = cx.add(json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
        "type": [coding("http://snomed.info/sct", "162673000", "General examination of patient (procedure)")],
        "subject": {"reference": cx.patient, "display": format!("{} {}", who.given, who.family)},
        "participant": [{"individual": {"reference": practitioner}}],
        "period": {"start": ts(at), "end": ts(at + Duration::minutes(30))},
        "location": [{"location": {"reference": location}}],
        "serviceProvider": {"reference": org},
    }));
    let e = json!({"reference": enc});
    let when = ts(at);
    let age_years = (at.date() - who.birth_date).num_days() as f64 / 365.25;
    // Vital signs every visit.
    let height = if age_years < 18.0 {
        50.0 + age_years * 6.5
    } else {
        150.0 + cx.rng.gen_range(0.0..40.0)
    };
    let mut results = Vec::new();
    for (code, display, value, unit) in [
        (
            "8302-2",
            "Body Height",
            (height * 10.0).round() / 10.0,
            "cm",
        ),
        (
            "29463-7",
            "Body Weight",
            cx.rng.gen_range(40.0..120.0_f64).round(),
            "kg",
        ),
        (
            "4548-4",
            "Hemoglobin A1c/Hemoglobin.total in Blood",
            (cx.rng.gen_range(4.5..11.0_f64) * 10.0).round() / 10.0,
            "%",
        ),
    ] {
        results.push(cx.add(json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital signs")],
            "code": coding("http://loinc.org", code, display),
            "subject": cx.subject(),
            "encounter": e,
            "effectiveDateTime": when,
            "issued": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        })));
    }
    let (systolic, diastolic) = (cx.rng.gen_range(100..170), cx.rng.gen_range(60..100));
    results.push(cx.add(json!({
        "resourceType": "Observation",
        "status": "final",
        "code": coding("http://loinc.org", "85354-9", "Blood pressure panel with all children optional"),
        "subject": cx.subject(),
        "encounter": e,
        "effectiveDateTime": when,
        "component": [
            {"code": coding("http://loinc.org", "8480-6", "Systolic blood pressure"),
             "valueQuantity": {"value": systolic, "unit": "mm[Hg]"}},
            {"code": coding("http://loinc.org", "8462-4", "Diastolic blood pressure"),
             "valueQuantity": {"value": diastolic, "unit": "mm[Hg]"}},
        ],
    })));
    let form = cx.some_form();
    results.push(cx.add(json!({
        "resourceType": "Observation",
        "status": "final",
        "code": coding("http://loinc.org", "72166-2", "Tobacco smoking status"),
        "subject": cx.subject(),
        "encounter": e,
        "effectiveDateTime": when,
        "valueString": format!("Never smoker. Social worker visited {} ({}).", who.line.to_uppercase(), form),
    })));
    let conclusion_form = cx.some_form();
    let report = format!(
        "Laboratory report for {} {}, SSN {}. Results reviewed with the patient on {}. \
         Callback {}.\n",
        who.family.to_uppercase(),
        who.given,
        who.ssn.replace('-', ""),
        at.format("%Y-%m-%d"),
        who.phone
    );
    cx.add(json!({
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [coding("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
        "code": coding("http://loinc.org", "51990-0", "Basic metabolic panel - Blood"),
        "subject": cx.subject(),
        "encounter": e,
        "effectiveDateTime": when,
        "issued": when,
        "performer": [{"reference": practitioner}],
        "result": results.iter().map(|r| json!({"reference": r})).collect::<Vec<_>>(),
        "conclusion": format!("Stable. Family asks to be called at {conclusion_form}."),
        "presentedForm": [text_attachment("text/plain", &report, "report.txt")],
    }));
    let r = cx.rng.gen_range(0..100);
    if r < 35 {
        let (code, display) = CONDITIONS[cx.rng.gen_range(0..CONDITIONS.len())];
        let form = cx.some_form();
        cx.add(json!({
            "resourceType": "Condition",
            "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
            "code": coding("http://snomed.info/sct", code, display),
            "subject": cx.subject(),
            "encounter": e,
            "onsetDateTime": when,
            "note": [{"text": format!("Reported by the patient's daughter; contact {form}.")}],
        }));
    }
    let form = cx.some_form();
    let (content_type, body) = if cx.rng.gen_bool(0.5) {
        (
            "text/plain; charset=utf-8",
            format!(
                "Progress note {}\n\n{} {} seen today. Vitals stable. Plan: continue metformin 500 mg.\nNotes: {}\n",
                at.format("%Y-%m-%d"), who.given, who.family, form
            ),
        )
    } else {
        (
            "text/html",
            format!(
                "<html><body><h1>Discharge summary</h1><p>{} {}, DOB {}.</p><p>Follow up in 2 weeks; {}.</p></body></html>",
                who.given.to_uppercase(), who.family, who.birth_date.format("%m/%d/%Y"), form
            ),
        )
    };
    cx.add(json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "type": coding("http://loinc.org", "11506-3", "Progress note"),
        "subject": cx.subject(),
        "author": [{"reference": practitioner}],
        "date": when,
        "context": {"encounter": [e]},
        "content": [{"attachment": text_attachment(content_type, &body, "note")}],
    }));
    if r % 10 == 0 {
        // A scanned letter: not text, cannot be scanned for identifiers.
        let pdf = format!("%PDF-1.4\n% scanned referral letter {}\n%%EOF\n", who.ssn);
        cx.add(json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "type": coding("http://loinc.org", "57133-1", "Referral note"),
            "subject": cx.subject(),
            "date": when,
            "content": [{"attachment": {"contentType": "application/pdf", "data": b64(&pdf), "title": "referral.pdf"}}],
        }));
    }
    let (code, display) = PROCEDURES[cx.rng.gen_range(0..PROCEDURES.len())];
    cx.add(json!({
        "resourceType": "Procedure",
        "status": "completed",
        "code": coding("http://snomed.info/sct", code, display),
        "subject": cx.subject(),
        "encounter": e,
        "performedPeriod": {"start": when, "end": ts(at + Duration::minutes(20))},
        "performer": [{"actor": {"reference": practitioner}}],
        "location": {"reference": location},
    }));
    let (code, display) = MEDICATIONS[cx.rng.gen_range(0..MEDICATIONS.len())];
    let request = cx.add(json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": coding("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
        "subject": cx.subject(),
        "encounter": e,
        "authoredOn": when,
        "requester": {"reference": practitioner},
        "dosageInstruction": [{"text": "Take one tablet by mouth daily"}],
    }));
    cx.add(json!({
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": coding("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
        "subject": cx.subject(),
        "context": e,
        "effectiveDateTime": when,
        "request": {"reference": request},
    }));
    if r % 4 == 0 {
        let (code, display) = VACCINES[cx.rng.gen_range(0..VACCINES.len())];
        cx.add(json!({
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": coding("http://hl7.org/fhir/sid/cvx", code, display),
            "patient": cx.subject(),
            "encounter": e,
            "occurrenceDateTime": when,
            "primarySource": true,
            "location": {"reference": location},
        }));
    }
    if r % 7 == 0 {
        let series = cx.rng.gen_range(0..1_000_000);
        cx.add(json!({
            "resourceType": "ImagingStudy",
            "status": "available",
            "subject": cx.subject(),
            "encounter": e,
            "started": when,
            "numberOfSeries": 1,
            "numberOfInstances": 2,
            "description": format!("Chest X-ray for {} {}", who.given, who.family),
            "series": [{"uid": format!("1.2.840.99999.{series}"),
                        "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CR"},
                        "numberOfInstances": 2}],
        }));
    }
    if r % 9 == 0 {
        cx.add(json!({
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"),
            "code": coding("http://snomed.info/sct", "91936005", "Allergy to penicillin"),
            "patient": cx.subject(),
            "recordedDate": when,
        }));
    }
    if r % 11 == 0 {
        cx.add(json!({
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Hemoglobin A1c total in Blood < 7.0"},
            "subject": cx.subject(),
            "startDate": at.format("%Y-%m-%d").to_string(),
        }));
        cx.add(json!({
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "order",
            "subject": cx.subject(),
            "encounter": e,
            "period": {"start": when},
            "description": format!("Diabetes self management plan for {}", who.given),
        }));
    }
    if r % 13 == 0 {
        let serial = cx.rng.gen_range(100000..999999);
        cx.add(json!({
            "resourceType": "Device",
            "status": "active",
            "type": coding("http://snomed.info/sct", "337414009", "Blood glucose meter (physical object)"),
            "patient": cx.subject(),
            "serialNumber": format!("GLU{serial}"),
            "manufactureDate": when,
        }));
    }
    let amount = cx.rng.gen_range(80..2400);
    let claim = cx.add(json!({
        "resourceType": "Claim",
        "status": "active",
        "type": coding("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
        "use": "claim",
        "patient": cx.subject(),
        "created": when,
        "billablePeriod": {"start": when, "end": ts(at + Duration::minutes(30))},
        "provider": {"reference": org},
        "priority": coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
        "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": coverage}}],
        "item": [{"sequence": 1, "productOrService": coding("http://snomed.info/sct", "162673000", "General examination of patient (procedure)"),
                  "encounter": [e], "net": {"value": amount, "currency": "USD"}}],
        "total": {"value": amount, "currency": "USD"},
    }));
    cx.add(json!({
        "resourceType": "ExplanationOfBenefit",
        "status": "active",
        "type": coding("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
        "use": "claim",
        "patient": cx.subject(),
        "created": when,
        "insurer": {"reference": org},
        "provider": {"reference": org},
        "claim": {"reference": claim},
        "outcome": "complete",
        "insurance": [{"focal": true, "coverage": {"reference": coverage}}],
        "payment": {"amount": {"value": amount * 8 / 10, "currency": "USD"}},
    }));
    let target = enc.clone();
    cx.add(json!({
        "resourceType": "Provenance",
        "target": [{"reference": target}, {"reference": cx.patient}],
        "recorded": when,
        "agent": [{"who": {"reference": practitioner}, "onBehalfOf": {"reference": org}}],
    }));
}
