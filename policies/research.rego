# Research domain: aggregate-only queries of a sponsoring organization under a study
# credential. Which patients take part is the consent registry's business (the gateway
# builds the cohort from study consents); this policy decides whether the study may ask.
package fedgate.research

import data.fedgate.common

domain := "research"

default decision := {
	"allow": false,
	"reasons": ["denied by default: no research rule applied"],
	"data_classes": [],
	"obligations": {
		"reveal": [], "tokenize": [], "pseudonymize": [], "generalize": [], "redact": [],
		"aggregate_only": false, "min_cell_size": null, "max_records": null,
	},
	"break_glass": false,
	"review_required": false,
	"expires_at": null,
}

decision := common.deny(denials) if count(denials) > 0

decision := common.allow(
	# The study's id is not interpolated: its format is open (urn:fedgate:study:<any>), and
	# the event names the study credential among its credential ids.
	[sprintf("the study may query %s in aggregate", [concat(", ", sort(common.requested))])],
	common.requested,
	common.research_obligations(min_cell_size, common.max_records),
) if {
	count(denials) == 0
}

study := input.study.subject

# The stricter of the study's and the custodian's smallest reportable count.
min_cell_size := max([object.get(study, "minCellSize", 1), input.custodian.min_cell_size])

study_classes := {c | some c in study.dataClasses}

has_study if is_object(study)

denials contains msg if {
	not common.purpose_in_domain(domain)
	msg := sprintf("purpose %v is not a research purpose", [common.purpose])
}

denials contains "no research study credential was presented" if not has_study

denials contains "the requester's organization is not the study's sponsor" if {
	has_study
	study.sponsor != input.request.requester_org
}

denials contains "the study is not approved for HRESCH" if {
	has_study
	not "HRESCH" in study.purposes
}

denials contains "no data classes were requested" if {
	count(common.requested) == 0
}

denials contains msg if {
	has_study
	extra := common.requested - study_classes
	count(extra) > 0
	msg := sprintf("requested classes outside the study's approved classes: %s", [concat(", ", sort(extra))])
}

denials contains msg if {
	not common.has_contract(domain, "HRESCH")
	msg := "no registry contract between this custodian and the requester's organization covers research/HRESCH"
}
