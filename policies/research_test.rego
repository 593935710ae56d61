package fedgate.research_test

import data.fedgate.fixtures_test as f
import data.fedgate.research

base := f.research_input

test_sponsor_query_allowed if {
	d := research.decision with input as base
	d.allow
	d.data_classes == ["Condition", "Observation"]
	f.has_reason(d, "the study may query Condition, Observation in aggregate")
}

test_safe_harbor_obligations if {
	d := research.decision with input as base
	d.obligations.aggregate_only == true
	d.obligations.reveal == []
	d.obligations.tokenize == []
	d.obligations.generalize == ["address", "birth-date", "dates"]
	d.obligations.redact == [
		"attachments", "drivers-license", "mrn", "name", "narrative", "other-identifiers",
		"passport", "ssn", "telecom",
	]
	d.obligations.max_records == 5000
}

test_min_cell_size_is_the_custodians_when_larger if {
	d := research.decision with input as base
	d.obligations.min_cell_size == 11
}

test_min_cell_size_is_the_studys_when_larger if {
	d := research.decision with input as object.union(base, {"study": {"subject": {"minCellSize": 20}}})
	d.obligations.min_cell_size == 20
}

test_aggregate_only_even_if_the_study_says_otherwise if {
	d := research.decision with input as object.union(base, {"study": {"subject": {"aggregateOnly": false}}})
	d.obligations.aggregate_only == true
}

test_subset_of_study_classes_allowed if {
	d := research.decision with input as f.with_request(base, {"data_classes": ["Observation"]})
	d.allow
	d.data_classes == ["Observation"]
}

test_other_sponsor_denied if {
	d := research.decision with input as f.with_request(base, {"requester_org": f.other_org})
	not d.allow
	f.has_reason(d, "the requester's organization is not the study's sponsor")
}

test_study_without_hresch_denied if {
	d := research.decision with input as object.union(base, {"study": {"subject": {"purposes": ["PUBHLTH"]}}})
	not d.allow
	f.has_reason(d, "the study is not approved for HRESCH")
}

test_class_outside_study_denied if {
	d := research.decision with input as f.with_request(base, {"data_classes": ["Observation", "DocumentReference"]})
	not d.allow
	f.has_reason(d, "requested classes outside the study's approved classes: DocumentReference")
}

test_no_classes_denied if {
	d := research.decision with input as f.with_request(base, {"data_classes": []})
	not d.allow
	f.has_reason(d, "no data classes were requested")
}

test_no_study_denied if {
	d := research.decision with input as object.union(base, {"study": null})
	not d.allow
	f.has_reason(d, "no research study credential was presented")
}

test_no_contract_denied if {
	d := research.decision with input as object.union(base, {"contracts": [f.contract(["clinical"], ["HRESCH"])]})
	not d.allow
	f.has_reason(d, "covers research/HRESCH")
}

test_expired_contract_denied if {
	c := object.union(f.contract(["research"], ["HRESCH"]), {"expires": "2026-01-01T00:00:00Z"})
	d := research.decision with input as object.union(base, {"contracts": [c]})
	not d.allow
}

test_treat_purpose_denied if {
	d := research.decision with input as f.with_request(base, {"purpose": "TREAT"})
	not d.allow
	f.has_reason(d, "purpose TREAT is not a research purpose")
}
