//! Synthetic FHIR R4 patients for tests, benchmarks and the demo. No real person.
//!
//! Hand-written fixtures only hold what their author thought of. These records are shaped
//! like the ones a custodian really holds: hundreds of patients, thousands of resources
//! each, ages over 89, deceased patients, claims, imaging, clinical notes as base64
//! attachments, and the patient's identifiers copied into free text the way people write
//! them (an SSN without dashes, a phone number in brackets, an address in capitals with
//! its accents, a birth date as `02/14/1931`). Every written form a patient's identifiers
//! take is returned in [`Identity::forms`], so that a test can search what leaves a
//! gateway for each one.
//!
//! Output is deterministic for a seed: the same seed gives the same patients.
//!
//! ```
//! let mut g = synth::Generator::new(synth::Options { seed: 7, ..Default::default() });
//! let patient = g.patient();
//! assert_eq!(patient.bundle["resourceType"], "Bundle");
//! assert!(!patient.identity.forms().is_empty());
//! ```

mod names;
mod record;

use base64::Engine as _;
use chrono::{Datelike, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Identifier system of the medical record numbers the generator issues.
/// The medical record number system (the one Synthea-style records use).
const MRN_SYSTEM: &str = "http://hospital.smarthealthit.org";
const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";
const PASSPORT_SYSTEM: &str =
    "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber";
const DRIVERS_LICENSE_SYSTEM: &str = "urn:oid:2.16.840.1.113883.4.3.25";

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Resources per patient (besides the Patient), drawn uniformly from this range.
    pub min_resources: usize,
    pub max_resources: usize,
    /// Share of patients born more than 89 years before `today`.
    pub over_89: f64,
    /// Share of patients who have died.
    pub deceased: f64,
    /// The day records end (ages are counted to it).
    pub today: NaiveDate,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            min_resources: 40,
            max_resources: 160,
            over_89: 0.15,
            deceased: 0.1,
            today: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default(),
        }
    }
}

impl Options {
    /// Records the size of an elderly patient's real history (3,000 to 6,600 resources).
    pub fn large(seed: u64) -> Options {
        Options {
            seed,
            min_resources: 3000,
            max_resources: 6600,
            ..Options::default()
        }
    }
}

/// A patient's identifiers as the record holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub patient_id: String,
    given: String,
    pub middle: String,
    pub family: String,
    gender: &'static str,
    pub birth_date: NaiveDate,
    pub deceased: Option<NaiveDate>,
    pub mrn: String,
    /// `999-xx-xxxx` (999 is never issued).
    pub ssn: String,
    passport: String,
    drivers_license: String,
    /// `555-xxx-xxxx` (555-01xx style numbers are fictional).
    pub phone: String,
    email: String,
    pub line: String,
    pub city: String,
    state: &'static str,
    pub postal_code: String,
}

/// One written form of an identifier, and the class of the tokenizer it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// `name`, `ssn`, `mrn`, `passport`, `drivers_license`, `phone`, `email`, `address`,
    /// `birth_date`.
    pub class: &'static str,
    pub text: String,
}

impl Identity {
    /// Age in whole years on `day` (at death for the deceased).
    pub fn age_on(&self, day: NaiveDate) -> u32 {
        let end = self.deceased.map_or(day, |d| d.min(day));
        let mut age = end.year() - self.birth_date.year();
        if (end.month(), end.day()) < (self.birth_date.month(), self.birth_date.day()) {
            age -= 1;
        }
        u32::try_from(age).unwrap_or(0)
    }

    fn ssn_digits(&self) -> String {
        self.ssn.chars().filter(char::is_ascii_digit).collect()
    }

    fn phone_digits(&self) -> String {
        self.phone.chars().filter(char::is_ascii_digit).collect()
    }

    /// Every written form of this patient's identifiers that the generated record holds,
    /// structured or in free text.
    pub fn forms(&self) -> Vec<Form> {
        let f = |class: &'static str, text: String| Form { class, text };
        let ssn = self.ssn_digits();
        let phone = self.phone_digits();
        let b = self.birth_date;
        let (y, m, d) = (b.year(), b.month(), b.day());
        let month = names::MONTHS[(m - 1) as usize];
        vec![
            f("name", format!("{} {}", self.given, self.family)),
            f("name", format!("{}, {}", self.family, self.given)),
            f(
                "name",
                format!("{} {}", self.given, self.family).to_uppercase(),
            ),
            f("name", fold(&format!("{} {}", self.given, self.family))),
            f(
                "name",
                format!("{} {} {}", self.given, self.middle, self.family),
            ),
            f("ssn", self.ssn.clone()),
            f("ssn", ssn.clone()),
            f("ssn", format!("{} {} {}", &ssn[..3], &ssn[3..5], &ssn[5..])),
            f("mrn", self.mrn.clone()),
            f("passport", self.passport.clone()),
            f("drivers_license", self.drivers_license.clone()),
            f("phone", self.phone.clone()),
            f("phone", phone.clone()),
            f(
                "phone",
                format!("({}) {}-{}", &phone[..3], &phone[3..6], &phone[6..]),
            ),
            f(
                "phone",
                format!("{}.{}.{}", &phone[..3], &phone[3..6], &phone[6..]),
            ),
            f(
                "phone",
                format!("+1 {} {} {}", &phone[..3], &phone[3..6], &phone[6..]),
            ),
            f("email", self.email.clone()),
            f("email", self.email.to_uppercase()),
            f("address", self.line.clone()),
            f("address", self.line.to_uppercase()),
            f("address", fold(&self.line)),
            f("birth_date", b.format("%Y-%m-%d").to_string()),
            f("birth_date", format!("{m}/{d}/{y}")),
            f("birth_date", format!("{m:02}/{d:02}/{y}")),
            f("birth_date", format!("{m:02}/{d:02}/{:02}", y % 100)),
            f("birth_date", format!("{d:02}.{m:02}.{y}")),
            f("birth_date", format!("{d:02}/{m:02}/{y}")),
            f("birth_date", format!("{month} {d}, {y}")),
            f("birth_date", format!("{d} {} {y}", &month[..3])),
        ]
    }
}

/// Removes diacritics from the Latin letters the name lists use (for writing the
/// unaccented forms people type; matching is the tokenizer's business).
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' => 'a',
            'Á' | 'À' | 'Â' | 'Ä' | 'Ã' => 'A',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'É' | 'È' | 'Ê' | 'Ë' => 'E',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
            'Ó' | 'Ò' | 'Ô' | 'Ö' | 'Õ' => 'O',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
            'ñ' => 'n',
            'Ñ' => 'N',
            'ç' => 'c',
            'Ç' => 'C',
            other => other,
        })
        .collect()
}

/// One generated patient: the transaction Bundle to import and who is in it.
#[derive(Debug, Clone)]
pub struct Patient {
    pub identity: Identity,
    pub bundle: Value,
}

impl Patient {
    /// Resources in the bundle, per type.
    pub fn count(&self, resource_type: &str) -> usize {
        self.bundle["entry"].as_array().map_or(0, |e| {
            e.iter()
                .filter(|e| e["resource"]["resourceType"] == resource_type)
                .count()
        })
    }

    /// Resources in the bundle.
    pub fn len(&self) -> usize {
        self.bundle["entry"].as_array().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes patients one after another from a seeded random source.
pub struct Generator {
    rng: StdRng,
    options: Options,
    serial: u64,
}

impl Generator {
    pub fn new(options: Options) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(options.seed),
            options,
            serial: 0,
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The next patient.
    pub fn patient(&mut self) -> Patient {
        self.serial += 1;
        let identity = self.identity();
        let n = self.rng.gen_range(
            self.options.min_resources..=self.options.max_resources.max(self.options.min_resources),
        );
        // `meta` from a source of its own: the records are the same with or without it.
        let meta_rng = StdRng::seed_from_u64(
            self.options.seed.rotate_left(17) ^ self.serial.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let bundle = record::bundle(&mut self.rng, meta_rng, &identity, n, self.options.today);
        Patient { identity, bundle }
    }

    /// `n` patients.
    pub fn patients(&mut self, n: usize) -> Vec<Patient> {
        (0..n).map(|_| self.patient()).collect()
    }

    fn identity(&mut self) -> Identity {
        let rng = &mut self.rng;
        let today = self.options.today;
        let gender = if rng.gen_bool(0.5) { "female" } else { "male" };
        let given = pick(
            rng,
            if gender == "female" {
                names::GIVEN_F
            } else {
                names::GIVEN_M
            },
        );
        let middle = pick(
            rng,
            if gender == "female" {
                names::GIVEN_F
            } else {
                names::GIVEN_M
            },
        );
        let family = pick(rng, names::FAMILY);
        let age_days: i64 = if rng.gen_bool(self.options.over_89.clamp(0.0, 1.0)) {
            rng.gen_range(90 * 365 + 30..=104 * 365)
        } else {
            rng.gen_range(0..=89 * 365)
        };
        let birth_date = today - chrono::Duration::days(age_days);
        let deceased = rng
            .gen_bool(self.options.deceased.clamp(0.0, 1.0))
            .then(|| {
                let lived = (today - birth_date).num_days().max(1);
                birth_date + chrono::Duration::days(rng.gen_range(lived / 2..=lived))
            });
        let serial = self.serial;
        let ssn = format!(
            "999-{:02}-{:04}",
            rng.gen_range(10..100),
            (serial * 7919 + rng.gen_range(0..7919)) % 10000
        );
        let phone = format!(
            "555-{:03}-{:04}",
            rng.gen_range(200..1000),
            rng.gen_range(0..10000)
        );
        let (city, state, zip3) = names::CITIES[rng.gen_range(0..names::CITIES.len())];
        let street = pick(rng, names::STREETS);
        let line = format!("{} {}", rng.gen_range(2..9999), street);
        let email = format!(
            "{}.{}{}@example.org",
            fold(given).to_lowercase(),
            fold(family).to_lowercase().replace(' ', ""),
            rng.gen_range(10..999)
        );
        Identity {
            patient_id: uuid(rng),
            given: given.to_string(),
            middle: middle.to_string(),
            family: family.to_string(),
            gender,
            birth_date,
            deceased,
            mrn: format!(
                "MRN{:07}",
                serial * 1009 % 10_000_000 + rng.gen_range(0..1000)
            ),
            ssn,
            passport: format!("X{:08}X", rng.gen_range(0..100_000_000u32)),
            drivers_license: format!("S{:08}", rng.gen_range(0..100_000_000u32)),
            phone,
            email,
            line,
            city: city.to_string(),
            state,
            postal_code: format!("{zip3}{:02}", rng.gen_range(0..100)),
        }
    }
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

/// A random UUID (v4 layout) from the seeded source.
fn uuid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.gen();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RESOURCE_TYPES;

    #[test]
    fn same_seed_same_patients() {
        let a = Generator::new(Options::default()).patients(3);
        let b = Generator::new(Options::default()).patients(3);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.identity, b.identity);
            assert_eq!(a.bundle, b.bundle);
        }
        let c = Generator::new(Options {
            seed: 2,
            ..Options::default()
        })
        .patient();
        assert_ne!(c.identity, a[0].identity);
    }

    #[test]
    fn cohort_has_the_old_and_the_dead() {
        let options = Options::default();
        let today = options.today;
        let patients = Generator::new(options).patients(300);
        let over_89 = patients
            .iter()
            .filter(|p| p.identity.age_on(today) > 89)
            .count();
        let dead = patients
            .iter()
            .filter(|p| p.identity.deceased.is_some())
            .count();
        assert!((20..=80).contains(&over_89), "{over_89} over 89");
        assert!((10..=60).contains(&dead), "{dead} deceased");
        for p in &patients {
            let n = p.len();
            assert!((41..=200).contains(&n), "{n} resources");
            if let Some(d) = p.identity.deceased {
                assert!(d >= p.identity.birth_date && d <= today);
                let patient = &p.bundle["entry"][0]["resource"];
                assert_eq!(
                    patient["deceasedDateTime"].as_str().map(|s| &s[..10]),
                    Some(d.format("%Y-%m-%d").to_string().as_str())
                );
            }
        }
    }

    #[test]
    fn every_form_is_somewhere_in_the_record() {
        let mut g = Generator::new(Options {
            min_resources: 300,
            max_resources: 300,
            ..Options::default()
        });
        for _ in 0..5 {
            let p = g.patient();
            let mut text = serde_json::to_string(&p.bundle).unwrap();
            // Decoded attachments too.
            for e in p.bundle["entry"].as_array().unwrap() {
                attachments(&e["resource"], &mut text);
            }
            for form in p.identity.forms() {
                assert!(
                    text.contains(&form.text),
                    "{} form {:?} not in the record",
                    form.class,
                    form.text
                );
            }
        }
    }

    fn attachments(v: &Value, out: &mut String) {
        match v {
            Value::Object(o) => {
                if let Some(data) = o.get("data").and_then(Value::as_str) {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) {
                        out.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                o.values().for_each(|v| attachments(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| attachments(v, out)),
            _ => {}
        }
    }

    /// Every resource carries the record keeping a server writes, as values that link
    /// its copies: a version, an instant, the request that wrote it, a sync batch and job.
    #[test]
    fn every_resource_has_a_servers_meta() {
        let p = Generator::new(Options::default()).patient();
        let mut requests = std::collections::HashSet::new();
        for e in p.bundle["entry"].as_array().unwrap() {
            let r = &e["resource"];
            let meta = &r["meta"];
            let ty = r["resourceType"].as_str().unwrap();
            assert!(meta["versionId"].as_str().unwrap().parse::<u32>().unwrap() >= 1);
            let t = meta["lastUpdated"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
            let source = meta["source"].as_str().unwrap();
            let (_, request) = source.split_once('#').unwrap();
            assert_eq!(request.len(), 16);
            requests.insert(request.to_string());
            assert_eq!(meta["security"][0]["code"].as_str().unwrap().len(), 1);
            assert!(meta["tag"][0]["code"]
                .as_str()
                .unwrap()
                .starts_with("batch-"));
            assert!(meta["extension"][0]["valueString"].is_string());
            if ty == "Patient" || ty == "Encounter" {
                assert!(meta["profile"][0].as_str().unwrap().contains("us-core"));
            }
        }
        // One request per transaction: the head, then one per encounter.
        assert_eq!(requests.len(), 1 + p.count("Encounter"), "{requests:?}");
    }

    #[test]
    fn large_records_are_large_and_varied() {
        let p = Generator::new(Options::large(3)).patient();
        assert!((3001..=6601).contains(&p.len()), "{}", p.len());
        for t in RESOURCE_TYPES {
            assert!(p.count(t) > 0, "no {t}");
        }
        // References inside the bundle resolve.
        let ids: std::collections::HashSet<String> = p.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap().to_string())
            .collect();
        let text = serde_json::to_string(&p.bundle).unwrap();
        for r in text.split("\"reference\":\"").skip(1) {
            let r = &r[..r.find('"').unwrap()];
            assert!(ids.contains(r), "dangling {r}");
        }
    }
}
