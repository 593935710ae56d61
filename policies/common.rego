# Shared tables and helpers of the fedgate domain policies.
#
# The tables are the policy: who may see which FHIR resource types, which purposes belong
# to which domain, and which identifier obligations apply in each situation. They live
# here, not in data.json, so that a change to them is reviewed, tested and digested like
# any other rule.
package fedgate.common

# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

# FHIR R4 resource types the clinical domain serves.
clinical_classes := {
	"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport",
	"DocumentReference", "Encounter", "Immunization", "MedicationRequest",
	"MedicationStatement", "Observation", "Patient", "Procedure",
}

# FHIR R4 resource types the billing domain serves; Patient only when asked for.
billing_classes := {"Claim", "Coverage", "ExplanationOfBenefit", "Patient"}

# HL7 v3 PurposeOfUse codes accepted per domain.
domain_purposes := {
	"clinical": {"TREAT", "ETREAT", "BTG", "CAREMGT"},
	"billing": {"HPAYMT", "COVERAGE", "CLMATTCH"},
	"research": {"HRESCH"},
	"detokenize": {"TREAT", "ETREAT"},
}

# Purposes under which access without a matching consent can be forced (break-glass).
break_glass_purposes := {"ETREAT", "BTG"}

# Shortest accepted break-glass justification, in characters after trimming.
break_glass_min_justification := 20

# Role -> domain -> FHIR resource types. A role absent from a domain sees nothing there.
# Researchers get nothing here: research runs at the organization level on a study
# credential (see research.rego), never on a clinician's privilege.
#
# Written out in full, not as `clinical_classes` and differences of it: a table made only of
# literals is one constant of the compiled program, where one that names other rules is
# built again on every decision (about 3 µs of a clinical decision). common_test.rego checks
# that the rows still agree with clinical_classes and billing_classes.
role_classes := {
	"physician": {"clinical": {
		"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport",
		"DocumentReference", "Encounter", "Immunization", "MedicationRequest",
		"MedicationStatement", "Observation", "Patient", "Procedure",
	}},
	"nurse-practitioner": {"clinical": {
		"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport",
		"DocumentReference", "Encounter", "Immunization", "MedicationRequest",
		"MedicationStatement", "Observation", "Patient", "Procedure",
	}},
	"physician-assistant": {"clinical": {
		"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport",
		"DocumentReference", "Encounter", "Immunization", "MedicationRequest",
		"MedicationStatement", "Observation", "Patient", "Procedure",
	}},
	# Clinical notes and scanned documents (DocumentReference) stay with the prescribing roles.
	"nurse": {"clinical": {
		"AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "DiagnosticReport",
		"Encounter", "Immunization", "MedicationRequest",
		"MedicationStatement", "Observation", "Patient", "Procedure",
	}},
	"pharmacist": {"clinical": {
		"AllergyIntolerance", "Condition", "MedicationRequest", "MedicationStatement",
		"Observation", "Patient",
	}},
	"care-coordinator": {"clinical": {"CarePlan", "CareTeam", "Encounter", "Patient"}},
	"billing-specialist": {"billing": {"Claim", "Coverage", "ExplanationOfBenefit", "Patient"}},
	"researcher": {},
	"auditor": {},
}

# NUCC taxonomy code -> domain -> extra FHIR resource types. Additive only, and only in a
# domain where the role already has access: a specialty never opens a domain by itself.
specialty_classes := {
	# Psychiatry: psychotherapy and assessment notes live in DocumentReference.
	"2084P0800X": {"clinical": {"DocumentReference"}},
	# Psychiatric/mental health registered nurse: same notes as the psychiatrist.
	"163WP0808X": {"clinical": {"DocumentReference"}},
	# Pharmacotherapy pharmacist: lab reports and procedures drive dosing decisions.
	"1835P0018X": {"clinical": {"DiagnosticReport", "Procedure"}},
}

# Roles that may exchange a vault token for its value (with a "detokenize" privilege).
detokenize_roles := {"physician", "nurse-practitioner", "physician-assistant", "nurse"}

# Identifier classes of the tokenizer (docs/gateway-contract.md section 3).
identifier_classes := {
	"name", "mrn", "ssn", "passport", "drivers-license", "other-identifiers", "telecom",
	"address", "birth-date", "dates", "patient-id", "resource-ids", "narrative", "attachments",
	"meta",
}

# ---------------------------------------------------------------------------------------
# Obligation sets (see policies/README.md for the reasoning)
# ---------------------------------------------------------------------------------------

# Treatment with the patient's consent: the treating team needs to identify and reach the
# patient; government and foreign identifiers go to the vault; ids are pseudonymous per
# recipient so repeated fetches link up without exposing the custodian's keys.
treatment_obligations(limit) := {
	"reveal": ["address", "birth-date", "mrn", "name", "telecom"],
	"tokenize": ["drivers-license", "other-identifiers", "passport", "ssn"],
	"pseudonymize": ["patient-id", "resource-ids"],
	"generalize": [],
	"redact": [],
	"aggregate_only": false,
	"min_cell_size": null,
	"max_records": limit,
}

# Break-glass: only the name in clear; every other direct identifier is a token that can be
# detokenized, one recorded request at a time, if the emergency needs it.
break_glass_obligations(limit) := {
	"reveal": ["name"],
	"tokenize": [
		"address", "birth-date", "drivers-license", "mrn", "other-identifiers", "passport",
		"ssn", "telecom",
	],
	"pseudonymize": ["patient-id", "resource-ids"],
	"generalize": [],
	"redact": [],
	"aggregate_only": false,
	"min_cell_size": null,
	"max_records": limit,
	# The birth date is a token: a date recorded at birth, or any exact date, must not
	# give it back. Intervals stay true.
	"shift_dates": true,
}

# Payment and coverage: payers match on name and birth date; clinical free text and
# attachments never leave for billing; the address is cut to state and ZIP3.
billing_obligations(limit) := {
	"reveal": ["birth-date", "name"],
	"tokenize": ["drivers-license", "mrn", "other-identifiers", "passport", "ssn"],
	"pseudonymize": ["patient-id", "resource-ids"],
	"generalize": ["address"],
	"redact": ["attachments", "narrative", "telecom"],
	"aggregate_only": false,
	"min_cell_size": null,
	"max_records": limit,
}

# Research: HIPAA Safe Harbor. Names and numbers are removed, dates cut to the year,
# addresses to state and ZIP3, and only aggregates leave.
research_obligations(min_cell, limit) := {
	"reveal": [],
	"tokenize": [],
	"pseudonymize": ["patient-id", "resource-ids"],
	"generalize": ["address", "birth-date", "dates"],
	"redact": [
		"attachments", "drivers-license", "mrn", "name", "narrative", "other-identifiers",
		"passport", "ssn", "telecom",
	],
	"aggregate_only": true,
	"min_cell_size": min_cell,
	"max_records": limit,
}

# Detokenize: the one class of the token, nothing else.
detokenize_obligations(class, limit) := {
	"reveal": [class],
	"tokenize": [],
	"pseudonymize": [],
	"generalize": [],
	"redact": [],
	"aggregate_only": false,
	"min_cell_size": null,
	"max_records": limit,
}

no_obligations := {
	"reveal": [],
	"tokenize": [],
	"pseudonymize": [],
	"generalize": [],
	"redact": [],
	"aggregate_only": false,
	"min_cell_size": null,
	"max_records": null,
}

# ---------------------------------------------------------------------------------------
# Decision documents
# ---------------------------------------------------------------------------------------

# A deny: every reason, sorted, and nothing else.
deny(reasons) := {
	"allow": false,
	"reasons": sort(reasons),
	"data_classes": [],
	"obligations": no_obligations,
	"break_glass": false,
	"review_required": false,
	"expires_at": null,
}

allow(reasons, classes, obligations) := {
	"allow": true,
	"reasons": reasons,
	"data_classes": sort(classes),
	"obligations": obligations,
	"break_glass": false,
	"review_required": false,
	"expires_at": null,
}

break_glass_allow(reasons, classes, obligations, expires_at) := {
	"allow": true,
	"reasons": reasons,
	"data_classes": sort(classes),
	"obligations": obligations,
	"break_glass": true,
	"review_required": true,
	"expires_at": expires_at,
}

# ---------------------------------------------------------------------------------------
# Request facts
# ---------------------------------------------------------------------------------------

purpose := input.request.purpose

requested := {c | some c in input.request.data_classes}

# Decision time; a malformed time is a builtin error, which the engine turns into a deny.
now_ns := time.parse_rfc3339_ns(input.request.time)

role := input.privilege.subject.role

max_records := input.custodian.max_records

purpose_in_domain(domain) if purpose in domain_purposes[domain]

# The break-glass grant ends this many minutes after the decision time.
break_glass_expires_at := time.format(now_ns + (input.custodian.break_glass_minutes * 60000000000))

justified if {
	count(trim_space(input.request.justification)) >= break_glass_min_justification
}

# ---------------------------------------------------------------------------------------
# Privilege, role and shifts
# ---------------------------------------------------------------------------------------

has_privilege_credential if input.privilege.subject.id == input.request.requester

# The clinician's employer is the organization the request is made for.
privilege_org_matches if input.privilege.subject.organization == input.request.requester_org

# Some privilege entry holds at this facility, for the domain and the action.
has_privilege(domain, action) if {
	some p in input.privilege.subject.privileges
	p.facility == input.custodian.did
	domain in p.domains
	action in p.actions
}

# Resource types the role (plus its specialty) may see in a domain; empty when none.
role_allowed(domain) := base | extra if {
	base := object.get(object.get(role_classes, role, {}), domain, set())
	count(base) > 0
	extra := object.get(
		object.get(specialty_classes, object.get(input.privilege.subject, "specialty", ""), {}),
		domain,
		set(),
	)
} else := set()

in_shift if {
	some s in input.custodian.shifts
	role in s.roles
	input.request.weekday in s.days
	in_window(s.from_minute, s.to_minute, input.request.minute_of_day)
}

# A window whose end is before its start wraps past midnight (a night shift).
in_window(from, to, m) if {
	from <= to
	from <= m
	m < to
}

in_window(from, to, m) if {
	from > to
	m >= from
}

in_window(from, to, m) if {
	from > to
	m < to
}

# No shift window at this custodian names the requester's role, or one that does covers now.
# Stated with `every` over the input rather than `not` of a rule: see "Fail closed under
# the compiled VM" below.
shift_ok if {
	every s in input.custodian.shifts {
		not input.privilege.subject.role in s.roles
	}
}

shift_ok if in_shift

# ---------------------------------------------------------------------------------------
# Contracts
# ---------------------------------------------------------------------------------------

has_contract(domain, contract_purpose) if {
	some c in input.contracts
	c.custodian == input.custodian.did
	c.requester == input.request.requester_org
	domain in c.domains
	contract_purpose in c.purposes
	not_expired(object.get(c, "expires", null))
}

not_expired(t) if t == null

not_expired(t) if {
	is_string(t)
	time.parse_rfc3339_ns(t) > now_ns
}

# ---------------------------------------------------------------------------------------
# Consents
# ---------------------------------------------------------------------------------------

grantee_matches(s) if s.grantee.id == input.request.requester

grantee_matches(s) if s.grantee.id == input.request.requester_org

period_covers(p) if {
	time.parse_rfc3339_ns(p.start) <= now_ns
	not_expired(object.get(p, "end", null))
}

# The consent speaks about this requester, custodian, domain and purpose, now.
consent_applies(s, domain) if {
	grantee_matches(s)
	input.custodian.did in s.custodians
	domain in s.domains
	purpose in s.purposes
	period_covers(s.period)
}

# Whether a consent speaks for the patient: one from a trusted issuer does (the issuer
# vouches for the patient), one the patient issued themselves only once this custodian has
# linked its DID to the patient (unless the custodian turned that requirement off).
speaks_for_patient(c) if not c.self_issued

speaks_for_patient(c) if c.patient_linked == true

speaks_for_patient(_) if input.custodian.require_patient_links == false

# Resource types some applicable permit covers.
permitted_classes(domain) := {k |
	some c in input.consents
	c.subject.provision == "permit"
	speaks_for_patient(c)
	consent_applies(c.subject, domain)
	some k in c.subject.dataClasses
}

# An applicable permit was presented that does not speak for the patient (a self-issued
# consent under a DID this custodian has not linked to them).
unlinked_permit(domain) if {
	some c in input.consents
	c.subject.provision == "permit"
	not speaks_for_patient(c)
	consent_applies(c.subject, domain)
}

# An applicable deny covering any requested type refuses the whole request, whatever
# the permits say, and whoever issued it: refusing fails closed.
explicit_deny(domain) if {
	some c in input.consents
	c.subject.provision == "deny"
	consent_applies(c.subject, domain)
	some k in c.subject.dataClasses
	k in requested
}

# ---------------------------------------------------------------------------------------
# Fail closed under the compiled VM
# ---------------------------------------------------------------------------------------
#
# The gateway runs these policies compiled for regorus's VM, which leaves a rule whose body
# fails (a date that cannot be read, a builtin error) undefined instead of failing the whole
# decision, and `not` of an undefined rule is true. So in every domain an allow needs
# `permitted`: a conjunction of facts each established positively, and nothing an allow
# needs is the absence of a rule. A rule that fails can then only take an allow away. Under
# `not` on the way to an allow stand only comparisons and memberships of the input itself,
# or a choice between two allows that each need their own facts (clinical's not break_glass).
# The denials stay, for the reasons they give, and an allow also needs them empty; each
# domain's own reasons (`refusals`) are evaluated only when it is not permitted, and
# `fedgate policy check` checks that none applies to an input that is. The gateway's tests
# inject an error into every rule body in turn and check that no deny becomes an allow.

# Every consent presented is positively not an applicable deny for this request: a permit,
# a deny about none of the requested types, or a deny shown not to apply. A deny whose
# dates cannot be read is not cleared, so it blocks the request.
no_deny_consent(domain) if {
	every c in input.consents {
		deny_cleared(c, domain)
	}
}

deny_cleared(c, _) if c.subject.provision != "deny"

deny_cleared(c, _) if {
	c.subject.provision == "deny"
	every k in c.subject.dataClasses {
		not k in input.request.data_classes
	}
}

deny_cleared(c, domain) if {
	c.subject.provision == "deny"
	consent_excluded(c.subject, domain)
}

# The consent positively speaks about another requester, custodian, domain, purpose or time.
consent_excluded(s, _) if {
	s.grantee.id != input.request.requester
	s.grantee.id != input.request.requester_org
}

consent_excluded(s, _) if not input.custodian.did in s.custodians

consent_excluded(s, domain) if not domain in s.domains

consent_excluded(s, _) if not input.request.purpose in s.purposes

consent_excluded(s, _) if time.parse_rfc3339_ns(s.period.start) > now_ns

consent_excluded(s, _) if {
	is_string(s.period.end)
	time.parse_rfc3339_ns(s.period.end) <= now_ns
}
