package fedgate.billing_test

import data.fedgate.billing
import data.fedgate.fixtures_test as f

base := f.billing_input

test_payment_allowed if {
	d := billing.decision with input as base
	d.allow
	d.data_classes == ["Claim", "Coverage"]
	not d.break_glass
	f.has_reason(d, "consent permits HPAYMT for Claim, Coverage")
	f.phi_free(d)
}

test_payment_obligations if {
	d := billing.decision with input as base
	d.obligations.reveal == ["birth-date", "name"]
	d.obligations.tokenize == ["drivers-license", "mrn", "other-identifiers", "passport", "ssn"]
	d.obligations.generalize == ["address"]
	d.obligations.redact == ["attachments", "narrative", "telecom"]
	d.obligations.max_records == 5000
}

test_coverage_allowed if {
	d := billing.decision with input as f.with_request(base, {"purpose": "COVERAGE"})
	d.allow
}

test_claim_attachment_allowed if {
	d := billing.decision with input as f.with_request(base, {"purpose": "CLMATTCH", "data_classes": ["ExplanationOfBenefit"]})
	d.allow
	d.data_classes == ["ExplanationOfBenefit"]
}

test_patient_when_asked if {
	d := billing.decision with input as f.with_request(base, {"data_classes": ["Claim", "Patient"]})
	d.data_classes == ["Claim", "Patient"]
}

test_treat_purpose_denied if {
	d := billing.decision with input as f.with_request(base, {"purpose": "TREAT"})
	not d.allow
	f.has_reason(d, "purpose TREAT is not a billing purpose")
}

test_emergency_purpose_denied if {
	d := billing.decision with input as f.with_request(base, {"purpose": "ETREAT", "justification": "an emergency that is long enough"})
	not d.allow
	not d.break_glass
}

test_clinical_class_dropped if {
	d := billing.decision with input as f.with_request(base, {"data_classes": ["Claim", "Observation"]})
	d.allow
	d.data_classes == ["Claim"]
	f.has_reason(d, "Observation dropped: not a billing class for role billing-specialist")
}

test_only_clinical_classes_denied if {
	d := billing.decision with input as f.with_request(base, {"data_classes": ["Observation"]})
	not d.allow
	f.has_reason(d, "no requested data class is a billing class")
}

test_physician_has_no_billing_access if {
	p := f.privilege("physician", "207R00000X", f.custodian, ["billing"], ["read"])
	d := billing.decision with input as object.union(base, {"privilege": p})
	not d.allow
	f.has_reason(d, "role physician has no access to the billing domain")
}

test_privilege_for_clinical_only_denied if {
	p := f.privilege("billing-specialist", "207R00000X", f.custodian, ["clinical"], ["read"])
	d := billing.decision with input as object.union(base, {"privilege": p})
	not d.allow
	f.has_reason(d, "no billing read privilege at this custodian")
}

test_no_privilege_denied if {
	d := billing.decision with input as object.union(base, {"privilege": null})
	not d.allow
}

test_no_consent_denied if {
	d := billing.decision with input as object.union(base, {"consents": []})
	not d.allow
	f.has_reason(d, "no consent permits billing/HPAYMT")
}

test_consent_classes_are_intersected if {
	c := f.consent("permit", f.org, ["billing"], ["HPAYMT"], ["Claim"])
	d := billing.decision with input as object.union(base, {"consents": [c]})
	d.data_classes == ["Claim"]
	f.has_reason(d, "Coverage dropped: no consent covers it")
}

test_explicit_deny_wins if {
	deny := f.consent("deny", f.org, ["billing"], ["HPAYMT"], ["Coverage"])
	d := billing.decision with input as object.union(base, {"consents": array.concat(base.consents, [deny])})
	not d.allow
	f.has_reason(d, "an explicit deny consent for billing/HPAYMT applies and wins over any permit")
}

test_no_contract_denied if {
	d := billing.decision with input as object.union(base, {"contracts": [f.contract(["clinical"], ["HPAYMT"])]})
	not d.allow
	f.has_reason(d, "covers billing/HPAYMT")
}

test_shift_applies_to_billing if {
	shifts := [{"roles": ["billing-specialist"], "days": ["Mon"], "from_minute": 480, "to_minute": 960}]
	d := billing.decision with input as object.union(base, {"custodian": {"shifts": shifts}})
	not d.allow
	f.has_reason(d, "outside the requester's shift")
}

test_shift_of_billing_specialist_allowed if {
	shifts := [{"roles": ["billing-specialist"], "days": ["Fri"], "from_minute": 480, "to_minute": 960}]
	d := billing.decision with input as object.union(base, {"custodian": {"shifts": shifts}})
	d.allow
}

test_unlinked_self_issued_consent_grants_nothing if {
	consent := f.unlinked(f.billing_input.consents[0])
	d := billing.decision with input as object.union(f.billing_input, {"consents": [consent]})
	not d.allow
	f.has_reason(d, "not linked to the patient")
}
