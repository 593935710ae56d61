package fedgate.common_test

import data.fedgate.common
import data.fedgate.fixtures_test as f

test_every_domain_has_purposes if {
	every d in ["clinical", "billing", "research", "detokenize"] {
		count(common.domain_purposes[d]) > 0
	}
}

test_obligation_sets_use_only_identifier_classes if {
	sets := [
		common.treatment_obligations(1), common.break_glass_obligations(1),
		common.billing_obligations(1), common.research_obligations(1, 1),
	]
	every o in sets {
		every k in ["reveal", "tokenize", "pseudonymize", "generalize", "redact"] {
			every c in o[k] {
				c in common.identifier_classes
			}
		}
	}
}

# Every direct identifier is named by each set (nothing left to the tokenizer's default).
test_obligation_sets_cover_direct_identifiers if {
	direct := {"name", "mrn", "ssn", "passport", "drivers-license", "other-identifiers", "telecom", "address", "birth-date", "patient-id"}
	sets := [
		common.treatment_obligations(1), common.break_glass_obligations(1),
		common.billing_obligations(1), common.research_obligations(1, 1),
	]
	every o in sets {
		named := {c | some k in ["reveal", "tokenize", "pseudonymize", "generalize", "redact"]; some c in o[k]}
		count(direct - named) == 0
	}
}

test_night_window_wraps_midnight if {
	common.in_window(1140, 420, 1200)
	common.in_window(1140, 420, 60)
	not common.in_window(1140, 420, 600)
}

test_day_window if {
	common.in_window(420, 1140, 420)
	not common.in_window(420, 1140, 1140)
}

test_role_without_privilege_has_no_classes if {
	count(common.role_allowed("clinical")) == 0 with input as object.union(f.clinical_input, {"privilege": null})
}

test_nurse_classes_exclude_document_reference if {
	p := f.privilege("nurse", "163W00000X", f.custodian, ["clinical"], ["read"])
	allowed := common.role_allowed("clinical") with input as object.union(f.clinical_input, {"privilege": p})
	not "DocumentReference" in allowed
	"Observation" in allowed
}

# role_classes is written out in literals (common.rego says why): its rows must still be the
# domain lists they stand for.
test_role_table_rows_agree_with_the_domain_lists if {
	every r in ["physician", "nurse-practitioner", "physician-assistant"] {
		common.role_classes[r].clinical == common.clinical_classes
	}
	common.role_classes.nurse.clinical == common.clinical_classes - {"DocumentReference"}
	count(common.role_classes.pharmacist.clinical - common.clinical_classes) == 0
	count(common.role_classes["care-coordinator"].clinical - common.clinical_classes) == 0
	common.role_classes["billing-specialist"].billing == common.billing_classes
	every _, domains in common.role_classes {
		every d, _ in domains {
			d in {"clinical", "billing"}
		}
	}
}
