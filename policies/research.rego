# Research domain: aggregate-only queries of a sponsoring organization under a study
# credential. Which patients take part is the consent registry's business (the gateway
# builds the cohort from study consents); this policy decides whether the study may ask.
package fedgate.research

# Shared rules are named by their full path (data.fedgate.common.*), not through
# `import data.fedgate.common`: with the import, a decision compiled for regorus's VM took
# twice as long (gateway/benches/decision.rs).

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

decision := data.fedgate.common.deny(denials) if count(denials) > 0

decision := data.fedgate.common.allow(
	# The study's id is not interpolated: its format is open (urn:fedgate:study:<any>), and
	# the event names the study credential among its credential ids.
	[sprintf("the study may query %s in aggregate", [concat(", ", sort(data.fedgate.common.requested))])],
	data.fedgate.common.requested,
	data.fedgate.common.research_obligations(min_cell_size, data.fedgate.common.max_records),
) if {
	count(denials) == 0
	permitted
}

# Why a request is refused. The domain's own reasons (`refusals`, below) are evaluated only
# when the request is not permitted (see clinical.rego): `permitted` establishes every condition they name, so on
# an allow they are empty, and evaluating them anyway was a quarter of an allow's time.
# `fedgate policy check` holds the two to agreement on every input it decides. A refusal an
# operator adds as `denials contains "..." if { ... }` is evaluated on every decision, an
# allow included, and denies when it applies.
denials contains msg if {
	not permitted
	some msg in refusals
}

# Every condition of an allow, each established positively (common.rego, "Fail closed under
# the compiled VM"); the refusals below name the one that is missing.
permitted if {
	data.fedgate.common.purpose_in_domain(domain)
	has_study
	study.sponsor == input.request.requester_org
	"HRESCH" in study.purposes
	count(data.fedgate.common.requested) > 0
	count(data.fedgate.common.requested - study_classes) == 0
	contract
}

study := input.study.subject

# The stricter of the study's and the custodian's smallest reportable count.
min_cell_size := max([object.get(study, "minCellSize", 1), input.custodian.min_cell_size])

study_classes := {c | some c in study.dataClasses}

has_study if is_object(study)

refusals contains msg if {
	not data.fedgate.common.purpose_in_domain(domain)
	msg := sprintf("purpose %v is not a research purpose", [data.fedgate.common.purpose])
}

refusals contains "no research study credential was presented" if not has_study

refusals contains "the requester's organization is not the study's sponsor" if {
	has_study
	study.sponsor != input.request.requester_org
}

refusals contains "the study is not approved for HRESCH" if {
	has_study
	not "HRESCH" in study.purposes
}

refusals contains "no data classes were requested" if {
	count(data.fedgate.common.requested) == 0
}

refusals contains msg if {
	has_study
	extra := data.fedgate.common.requested - study_classes
	count(extra) > 0
	msg := sprintf("requested classes outside the study's approved classes: %s", [concat(", ", sort(extra))])
}

refusals contains msg if {
	not contract
	msg := "no registry contract between this custodian and the requester's organization covers research/HRESCH"
}

# ---------------------------------------------------------------------------------------
# Facts of this request here, used both by `permitted` and by the refusals
# ---------------------------------------------------------------------------------------

# Rules, not calls of the shared functions: the compiled program keeps a rule's value for the
# rest of the decision, and runs a function again at every call (a deny evaluates `permitted`
# and then the refusals).
contract if data.fedgate.common.has_contract(domain, "HRESCH")
