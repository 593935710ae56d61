package fedgate.clinical_test

import data.fedgate.clinical
import data.fedgate.fixtures_test as f

base := f.clinical_input

justification := "unconscious patient in the ED, no consent on file"

# --- purpose ------------------------------------------------------------------------------

test_treat_with_consent_allowed if {
	d := clinical.decision with input as base
	d.allow
	d.data_classes == ["Condition", "Observation"]
	not d.break_glass
	not d.review_required
	d.expires_at == null
	f.has_reason(d, "consent permits TREAT for Condition, Observation")
	f.phi_free(d)
}

test_treat_obligations if {
	d := clinical.decision with input as base
	d.obligations.reveal == ["address", "birth-date", "mrn", "name", "telecom"]
	d.obligations.tokenize == ["drivers-license", "other-identifiers", "passport", "ssn"]
	d.obligations.pseudonymize == ["patient-id", "resource-ids"]
	d.obligations.generalize == []
	d.obligations.redact == []
	d.obligations.aggregate_only == false
	d.obligations.max_records == 5000
}

test_caremgt_allowed if {
	d := clinical.decision with input as f.with_request(base, {"purpose": "CAREMGT"})
	d.allow
}

test_billing_purpose_denied if {
	d := clinical.decision with input as f.with_request(base, {"purpose": "HPAYMT"})
	not d.allow
	f.has_reason(d, "purpose HPAYMT is not a clinical purpose")
	d.data_classes == []
}

test_research_purpose_denied if {
	d := clinical.decision with input as f.with_request(base, {"purpose": "HRESCH"})
	not d.allow
	f.has_reason(d, "not a clinical purpose")
}

# An unknown patient is decided as a known one: the decision is the same document, so
# that a denial does not tell whether the MRN exists here.
test_unknown_patient_decided_as_known if {
	unknown := clinical.decision with input as f.with_request(base, {"patient_found": false})
	known := clinical.decision with input as base
	unknown == known
	no_consent := object.union(base, {"consents": []})
	unknown_denied := clinical.decision with input as f.with_request(no_consent, {"patient_found": false})
	known_denied := clinical.decision with input as no_consent
	not known_denied.allow
	unknown_denied == known_denied
}

# --- role and specialty -------------------------------------------------------------------

nurse := f.privilege("nurse", "163W00000X", f.custodian, ["clinical"], ["read"])

test_nurse_document_reference_dropped if {
	inp := object.union(
		f.with_request(base, {"data_classes": ["Observation", "DocumentReference"]}),
		{"privilege": nurse},
	)
	d := clinical.decision with input as inp
	d.allow
	d.data_classes == ["Observation"]
	f.has_reason(d, "DocumentReference dropped: not allowed for role nurse")
}

# Several classes dropped for one cause make one reason that lists them.
test_classes_dropped_for_one_cause_make_one_reason if {
	coordinator := f.privilege("care-coordinator", "171M00000X", f.custodian, ["clinical"], ["read"])
	inp := object.union(
		f.with_request(base, {"data_classes": ["Observation", "Patient", "Condition"]}),
		{"privilege": coordinator},
	)
	d := clinical.decision with input as inp
	d.allow
	d.data_classes == ["Patient"]
	f.has_reason(d, "Condition, Observation dropped: not allowed for role care-coordinator")
	count([r | some r in d.reasons; contains(r, "dropped: not allowed")]) == 1
	f.phi_free(d)
}

test_nurse_only_document_reference_denied if {
	inp := object.union(f.with_request(base, {"data_classes": ["DocumentReference"]}), {"privilege": nurse})
	d := clinical.decision with input as inp
	not d.allow
	f.has_reason(d, "no requested data class is allowed for role nurse")
}

test_psychiatric_nurse_sees_document_reference if {
	psych_nurse := f.privilege("nurse", "163WP0808X", f.custodian, ["clinical"], ["read"])
	inp := object.union(
		f.with_request(base, {"data_classes": ["Observation", "DocumentReference"]}),
		{"privilege": psych_nurse},
	)
	d := clinical.decision with input as inp
	d.allow
	d.data_classes == ["DocumentReference", "Observation"]
}

test_physician_sees_document_reference if {
	d := clinical.decision with input as f.with_request(base, {"data_classes": ["DocumentReference"]})
	d.allow
	d.data_classes == ["DocumentReference"]
}

test_pharmacist_procedure_dropped if {
	pharmacist := f.privilege("pharmacist", "183500000X", f.custodian, ["clinical"], ["read"])
	inp := object.union(f.with_request(base, {"data_classes": ["Observation", "Procedure"]}), {"privilege": pharmacist})
	d := clinical.decision with input as inp
	d.allow
	d.data_classes == ["Observation"]
	f.has_reason(d, "Procedure dropped: not allowed for role pharmacist")
}

test_pharmacotherapy_specialty_sees_procedure if {
	pharmacist := f.privilege("pharmacist", "1835P0018X", f.custodian, ["clinical"], ["read"])
	inp := object.union(f.with_request(base, {"data_classes": ["Observation", "Procedure"]}), {"privilege": pharmacist})
	d := clinical.decision with input as inp
	d.data_classes == ["Observation", "Procedure"]
}

test_specialty_never_opens_a_domain if {
	psych_biller := f.privilege("billing-specialist", "2084P0800X", f.custodian, ["clinical"], ["read"])
	inp := object.union(f.with_request(base, {"data_classes": ["DocumentReference"]}), {"privilege": psych_biller})
	d := clinical.decision with input as inp
	not d.allow
	f.has_reason(d, "role billing-specialist has no access to the clinical domain")
}

test_researcher_denied if {
	researcher := f.privilege("researcher", "207R00000X", f.custodian, ["clinical"], ["read"])
	d := clinical.decision with input as object.union(base, {"privilege": researcher})
	not d.allow
	f.has_reason(d, "role researcher has no access to the clinical domain")
}

# --- privilege at this facility -----------------------------------------------------------

test_no_privilege_denied if {
	d := clinical.decision with input as object.union(base, {"privilege": null})
	not d.allow
	f.has_reason(d, "no clinician privilege credential")
}

test_privilege_at_other_facility_denied if {
	elsewhere := f.privilege("physician", "207R00000X", f.other_org, ["clinical"], ["read"])
	d := clinical.decision with input as object.union(base, {"privilege": elsewhere})
	not d.allow
	f.has_reason(d, "no clinical read privilege at this custodian")
}

test_privilege_without_read_denied if {
	detok_only := f.privilege("physician", "207R00000X", f.custodian, ["clinical"], ["detokenize"])
	d := clinical.decision with input as object.union(base, {"privilege": detok_only})
	not d.allow
	f.has_reason(d, "no clinical read privilege")
}

test_privilege_for_billing_only_denied if {
	billing_only := f.privilege("physician", "207R00000X", f.custodian, ["billing"], ["read"])
	d := clinical.decision with input as object.union(base, {"privilege": billing_only})
	not d.allow
	f.has_reason(d, "no clinical read privilege")
}

test_privilege_of_another_organization_denied if {
	d := clinical.decision with input as f.with_request(base, {"requester_org": f.other_org})
	not d.allow
	f.has_reason(d, "the privilege credential names another organization")
}

# --- consent ------------------------------------------------------------------------------

test_consent_to_the_clinician_allowed if {
	c := object.union(f.clinical_permit, {"subject": {"grantee": {"id": f.clinician, "kind": "clinician"}}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	d.allow
}

test_consent_to_another_grantee_denied if {
	c := object.union(f.clinical_permit, {"subject": {"grantee": {"id": f.other_org, "kind": "organization"}}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	not d.allow
	f.has_reason(d, "no consent permits clinical/TREAT")
}

test_no_consent_denied if {
	d := clinical.decision with input as object.union(base, {"consents": []})
	not d.allow
	f.has_reason(d, "no consent permits clinical/TREAT for the requested data classes")
	f.phi_free(d)
}

test_consent_for_other_custodian_denied if {
	c := object.union(f.clinical_permit, {"subject": {"custodians": [f.other_org]}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	not d.allow
}

test_consent_for_other_purpose_denied if {
	c := object.union(f.clinical_permit, {"subject": {"purposes": ["CAREMGT"]}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	not d.allow
}

test_consent_for_other_domain_denied if {
	c := object.union(f.clinical_permit, {"subject": {"domains": ["billing"]}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	not d.allow
}

test_expired_consent_denied if {
	c := object.union(f.clinical_permit, {"subject": {"period": {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	not d.allow
}

test_future_consent_denied if {
	c := object.union(f.clinical_permit, {"subject": {"period": {"start": "2026-12-01T00:00:00Z"}}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	not d.allow
}

test_open_ended_consent_allowed if {
	c := json.remove(f.clinical_permit, ["subject/period/end"])
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	d.allow
}

test_consent_classes_are_intersected if {
	c := object.union(f.clinical_permit, {"subject": {"dataClasses": ["Observation"]}})
	d := clinical.decision with input as object.union(base, {"consents": [c]})
	d.allow
	d.data_classes == ["Observation"]
	f.has_reason(d, "Condition dropped: no consent covers it")
}

test_explicit_deny_wins_over_permit if {
	deny := f.consent("deny", f.org, ["clinical"], ["TREAT"], ["Condition"])
	d := clinical.decision with input as object.union(base, {"consents": [f.clinical_permit, deny]})
	not d.allow
	f.has_reason(d, "an explicit deny consent for clinical/TREAT applies and wins over any permit")
	f.phi_free(d)
}

test_deny_of_unrequested_class_does_not_block if {
	deny := f.consent("deny", f.org, ["clinical"], ["TREAT"], ["DocumentReference"])
	d := clinical.decision with input as object.union(base, {"consents": [f.clinical_permit, deny]})
	d.allow
}

test_deny_for_other_purpose_does_not_block if {
	deny := f.consent("deny", f.org, ["clinical"], ["CAREMGT"], ["Observation"])
	d := clinical.decision with input as object.union(base, {"consents": [f.clinical_permit, deny]})
	d.allow
}

# --- contract -----------------------------------------------------------------------------

test_no_contract_denied if {
	d := clinical.decision with input as object.union(base, {"contracts": []})
	not d.allow
	f.has_reason(d, "no registry contract between this custodian and the requester's organization covers clinical/TREAT")
	f.phi_free(d)
}

test_contract_for_other_purpose_denied if {
	d := clinical.decision with input as object.union(base, {"contracts": [f.contract(["clinical"], ["CAREMGT"])]})
	not d.allow
}

test_contract_with_other_org_denied if {
	c := object.union(f.contract(["clinical"], ["TREAT"]), {"requester": f.other_org})
	d := clinical.decision with input as object.union(base, {"contracts": [c]})
	not d.allow
}

test_expired_contract_denied if {
	c := object.union(f.contract(["clinical"], ["TREAT"]), {"expires": "2026-06-01T00:00:00Z"})
	d := clinical.decision with input as object.union(base, {"contracts": [c]})
	not d.allow
}

test_unexpired_contract_allowed if {
	c := object.union(f.contract(["clinical"], ["TREAT"]), {"expires": "2027-06-01T00:00:00Z"})
	d := clinical.decision with input as object.union(base, {"contracts": [c]})
	d.allow
}

test_contract_without_expires_field_allowed if {
	c := json.remove(f.contract(["clinical"], ["TREAT"]), ["expires"])
	d := clinical.decision with input as object.union(base, {"contracts": [c]})
	d.allow
}

# --- shifts -------------------------------------------------------------------------------

nurse_input := object.union(base, {"privilege": nurse})

test_nurse_in_shift_allowed if {
	d := clinical.decision with input as nurse_input
	d.allow
}

test_nurse_after_shift_denied if {
	d := clinical.decision with input as f.with_request(nurse_input, {"minute_of_day": 1200})
	not d.allow
	f.has_reason(d, "outside the requester's shift at this custodian")
}

test_nurse_shift_end_is_exclusive if {
	d := clinical.decision with input as f.with_request(nurse_input, {"minute_of_day": 1140})
	not d.allow
}

test_nurse_night_shift_on_weekend_allowed if {
	d := clinical.decision with input as f.with_request(nurse_input, {"weekday": "Sat", "minute_of_day": 120})
	d.allow
}

test_nurse_weekend_day_denied if {
	d := clinical.decision with input as f.with_request(nurse_input, {"weekday": "Sat", "minute_of_day": 600})
	not d.allow
	f.has_reason(d, "outside the requester's shift")
}

test_physician_has_no_shift_window if {
	d := clinical.decision with input as f.with_request(base, {"weekday": "Sun", "minute_of_day": 180})
	d.allow
}

# --- break-glass --------------------------------------------------------------------------

emergency := object.union(
	f.with_request(base, {"purpose": "ETREAT", "justification": justification}),
	{"consents": []},
)

test_break_glass_allowed if {
	d := clinical.decision with input as emergency
	d.allow
	d.break_glass
	d.review_required
	d.expires_at == "2026-11-27T11:00:00Z"
	d.data_classes == ["Condition", "Observation"]
	f.has_reason(d, "break-glass ETREAT without consent")
}

test_break_glass_obligations_tokenize_all_but_name if {
	d := clinical.decision with input as emergency
	d.obligations.reveal == ["name"]
	d.obligations.tokenize == [
		"address", "birth-date", "drivers-license", "mrn", "other-identifiers", "passport",
		"ssn", "telecom",
	]
}

test_break_glass_btg_allowed if {
	d := clinical.decision with input as f.with_request(emergency, {"purpose": "BTG"})
	d.allow
	d.break_glass
}

test_break_glass_expiry_follows_custodian_setting if {
	d := clinical.decision with input as object.union(emergency, {"custodian": {"break_glass_minutes": 15}})
	d.expires_at == "2026-11-27T10:15:00Z"
}

test_break_glass_short_justification_denied if {
	d := clinical.decision with input as f.with_request(emergency, {"justification": "  emergency        "})
	not d.allow
	f.has_reason(d, "break-glass needs a justification of at least 20 characters")
}

test_break_glass_without_justification_denied if {
	d := clinical.decision with input as f.with_request(emergency, {"justification": ""})
	not d.allow
	not d.break_glass
}

test_treat_cannot_break_glass if {
	d := clinical.decision with input as f.with_request(emergency, {"purpose": "TREAT"})
	not d.allow
	f.has_reason(d, "no consent permits clinical/TREAT")
}

test_break_glass_explicit_deny_still_wins if {
	deny := f.consent("deny", f.org, ["clinical"], ["ETREAT"], ["Observation"])
	d := clinical.decision with input as object.union(emergency, {"consents": [deny]})
	not d.allow
	f.has_reason(d, "an explicit deny consent for clinical/ETREAT applies")
}

test_break_glass_overrides_shift if {
	inp := f.with_request(object.union(emergency, {"privilege": nurse}), {"minute_of_day": 1300})
	d := clinical.decision with input as inp
	d.allow
	d.break_glass
	d.data_classes == ["Condition", "Observation"]
}

test_break_glass_still_needs_contract if {
	d := clinical.decision with input as object.union(emergency, {"contracts": []})
	not d.allow
}

test_break_glass_still_needs_privilege if {
	d := clinical.decision with input as object.union(emergency, {"privilege": null})
	not d.allow
}

test_break_glass_keeps_role_limits if {
	inp := f.with_request(object.union(emergency, {"privilege": nurse}), {"data_classes": ["Observation", "DocumentReference"]})
	d := clinical.decision with input as inp
	d.allow
	d.data_classes == ["Observation"]
}

test_etreat_with_consent_is_not_break_glass if {
	d := clinical.decision with input as f.with_request(base, {"purpose": "ETREAT", "justification": justification})
	d.allow
	not d.break_glass
	d.obligations.reveal == ["address", "birth-date", "mrn", "name", "telecom"]
}

# --- whose consent ------------------------------------------------------------------------

unlinked_reason := "a self-issued consent was presented under a DID this custodian has not linked to the patient"

# Anyone can make a DID and sign a consent naming any patient: until the custodian has
# linked the DID to the patient, such a consent grants nothing.
test_unlinked_self_issued_consent_grants_nothing if {
	d := clinical.decision with input as object.union(base, {"consents": [f.unlinked(f.clinical_permit)]})
	not d.allow
	f.has_reason(d, unlinked_reason)
	f.has_reason(d, "no consent permits clinical/TREAT")
	f.phi_free(d)
}

# A consent from an issuer trusted for consents vouches for the patient itself.
test_trusted_issuer_consent_needs_no_link if {
	vouched := object.union(f.unlinked(f.clinical_permit), {"self_issued": false, "issuer": "did:web:consent-office.example"})
	d := clinical.decision with input as object.union(base, {"consents": [vouched]})
	d.allow
}

# A custodian that turned links off trusts the consent's identifiers.
test_links_can_be_turned_off if {
	settings := object.union(f.custodian_settings, {"require_patient_links": false})
	d := clinical.decision with input as object.union(base, {"consents": [f.unlinked(f.clinical_permit)], "custodian": settings})
	d.allow
}

# Without the setting at all, links are required (fail closed).
test_links_required_when_the_setting_is_missing if {
	settings := object.remove(f.custodian_settings, ["require_patient_links"])
	d := clinical.decision with input as object.union(base, {"consents": [f.unlinked(f.clinical_permit)], "custodian": settings})
	not d.allow
}

# A deny refuses whoever issued it.
test_unlinked_deny_still_refuses if {
	deny := f.unlinked(f.consent("deny", f.org, ["clinical"], ["TREAT"], ["Condition"]))
	d := clinical.decision with input as object.union(base, {"consents": [f.clinical_permit, deny]})
	not d.allow
	f.has_reason(d, "explicit deny")
}

# Break-glass is untouched: an unlinked consent neither blocks nor replaces it.
test_break_glass_with_an_unlinked_consent if {
	inp := object.union(
		f.with_request(base, {"purpose": "ETREAT", "justification": justification}),
		{"consents": [f.unlinked(f.clinical_permit)]},
	)
	d := clinical.decision with input as inp
	d.allow
	d.break_glass
	d.review_required
}
