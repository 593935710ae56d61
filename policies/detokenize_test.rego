package fedgate.detokenize_test

import data.fedgate.detokenize
import data.fedgate.fixtures_test as f

base := f.detokenize_input

test_recipient_physician_allowed if {
	d := detokenize.decision with input as base
	d.allow
	d.data_classes == []
	d.obligations.reveal == ["ssn"]
	f.has_reason(d, "ssn token of the clinical domain may be detokenized for TREAT")
}

test_emergency_treatment_allowed if {
	d := detokenize.decision with input as f.with_request(base, {"purpose": "ETREAT"})
	d.allow
}

test_payment_purpose_denied if {
	d := detokenize.decision with input as f.with_request(base, {"purpose": "HPAYMT"})
	not d.allow
	f.has_reason(d, "purpose HPAYMT does not allow detokenization")
}

test_other_recipient_denied if {
	d := detokenize.decision with input as object.union(base, {"token": {"recipient": f.other_org}})
	not d.allow
	f.has_reason(d, "the token was not issued to the requester's organization")
}

test_unknown_token_denied if {
	d := detokenize.decision with input as object.union(base, {"token": null})
	not d.allow
	f.has_reason(d, "unknown token")
}

test_billing_token_denied if {
	d := detokenize.decision with input as object.union(base, {"token": {"domain": "billing"}})
	not d.allow
	f.has_reason(d, "only tokens of the clinical domain can be detokenized")
}

test_unknown_class_denied if {
	d := detokenize.decision with input as object.union(base, {"token": {"class": "favourite-colour"}})
	not d.allow
}

test_read_only_privilege_denied if {
	p := f.privilege("physician", "207R00000X", f.custodian, ["clinical"], ["read"])
	d := detokenize.decision with input as object.union(base, {"privilege": p})
	not d.allow
	f.has_reason(d, "no detokenize privilege for clinical at this custodian")
}

test_privilege_at_other_facility_denied if {
	p := f.privilege("physician", "207R00000X", f.other_org, ["clinical"], ["detokenize"])
	d := detokenize.decision with input as object.union(base, {"privilege": p})
	not d.allow
}

test_pharmacist_denied if {
	p := f.privilege("pharmacist", "183500000X", f.custodian, ["clinical"], ["detokenize"])
	d := detokenize.decision with input as object.union(base, {"privilege": p})
	not d.allow
	f.has_reason(d, "role pharmacist may not detokenize")
}

test_no_privilege_denied if {
	d := detokenize.decision with input as object.union(base, {"privilege": null})
	not d.allow
}

test_no_contract_denied if {
	d := detokenize.decision with input as object.union(base, {"contracts": []})
	not d.allow
	f.has_reason(d, "covers clinical/TREAT")
}

test_nurse_outside_shift_denied if {
	p := f.privilege("nurse", "163W00000X", f.custodian, ["clinical"], ["detokenize"])
	inp := f.with_request(object.union(base, {"privilege": p}), {"minute_of_day": 1300})
	d := detokenize.decision with input as inp
	not d.allow
	f.has_reason(d, "outside the requester's shift")
}

test_nurse_in_shift_allowed if {
	p := f.privilege("nurse", "163W00000X", f.custodian, ["clinical"], ["detokenize"])
	d := detokenize.decision with input as object.union(base, {"privilege": p})
	d.allow
}
