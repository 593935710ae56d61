# Billing domain: payment, coverage and claim attachments. No break-glass here.
package fedgate.billing

# Shared rules are named by their full path (data.fedgate.common.*), not through
# `import data.fedgate.common`: with the import, a decision compiled for regorus's VM took
# twice as long (gateway/benches/decision.rs).

domain := "billing"

default decision := {
	"allow": false,
	"reasons": ["denied by default: no billing rule applied"],
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
	array.concat([sprintf("consent permits %s for %s", [data.fedgate.common.purpose, concat(", ", sort(granted))])], dropped),
	granted,
	data.fedgate.common.billing_obligations(data.fedgate.common.max_records),
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
	data.fedgate.common.has_privilege_credential
	data.fedgate.common.privilege_org_matches
	read_privilege
	count(role_granted) > 0
	contract
	deny_consents_cleared
	count(granted) > 0
	data.fedgate.common.shift_ok
}

# Billing never returns clinical resource types, whatever the role table says.
role_allowed := data.fedgate.common.role_allowed(domain) & data.fedgate.common.billing_classes

consented := data.fedgate.common.permitted_classes(domain)

role_granted := data.fedgate.common.requested & role_allowed

granted := role_granted & consented

# One reason per cause, listing the classes (see clinical.rego).
dropped := sort({msg |
	not_billing := data.fedgate.common.requested - role_allowed
	count(not_billing) > 0
	msg := sprintf("%s dropped: not a billing class for role %s", [concat(", ", sort(not_billing)), data.fedgate.common.role])
} | {msg |
	unconsented := role_granted - consented
	count(unconsented) > 0
	msg := sprintf("%s dropped: no consent covers it", [concat(", ", sort(unconsented))])
})

refusals contains msg if {
	not data.fedgate.common.purpose_in_domain(domain)
	msg := sprintf("purpose %v is not a billing purpose", [data.fedgate.common.purpose])
}

# Whether the patient is known here is not a reason: a requester without a permitting
# consent must get the same answer either way, or every denial is an oracle for MRNs. The
# gateway answers "not known" only after an allow (input.request.patient_found stays in
# the input for the record).

refusals contains "no clinician privilege credential of the requester was presented" if {
	not data.fedgate.common.has_privilege_credential
}

refusals contains "the privilege credential names another organization than the requester's" if {
	data.fedgate.common.has_privilege_credential
	not data.fedgate.common.privilege_org_matches
}

refusals contains msg if {
	data.fedgate.common.has_privilege_credential
	not read_privilege
	msg := "no billing read privilege at this custodian"
}

refusals contains msg if {
	data.fedgate.common.has_privilege_credential
	count(role_allowed) == 0
	msg := sprintf("role %v has no access to the billing domain", [data.fedgate.common.role])
}

refusals contains msg if {
	count(role_allowed) > 0
	count(role_granted) == 0
	msg := sprintf("no requested data class is a billing class allowed for role %v", [data.fedgate.common.role])
}

refusals contains msg if {
	not contract
	msg := sprintf(
		"no registry contract between this custodian and the requester's organization covers billing/%v",
		[data.fedgate.common.purpose],
	)
}

refusals contains msg if {
	explicit_deny
	msg := sprintf("an explicit deny consent for billing/%v applies and wins over any permit", [data.fedgate.common.purpose])
}

refusals contains msg if {
	count(role_granted) > 0
	count(granted) == 0
	msg := sprintf("no consent permits billing/%v for the requested data classes", [data.fedgate.common.purpose])
}

refusals contains "a self-issued consent was presented under a DID this custodian has not linked to the patient" if {
	count(role_granted) > 0
	count(granted) == 0
	data.fedgate.common.unlinked_permit(domain)
}

refusals contains "outside the requester's shift at this custodian" if {
	not data.fedgate.common.shift_ok
}

refusals contains "a deny consent was presented whose scope or period could not be read" if {
	unreadable_deny
}

# ---------------------------------------------------------------------------------------
# Facts of this request here, used both by `permitted` and by the refusals
# ---------------------------------------------------------------------------------------

# Rules, not calls of the shared functions: the compiled program keeps a rule's value for the
# rest of the decision, and runs a function again at every call (a deny evaluates `permitted`
# and then the refusals).
read_privilege if data.fedgate.common.has_privilege(domain, "read")

contract if data.fedgate.common.has_contract(domain, data.fedgate.common.purpose)

deny_consents_cleared if data.fedgate.common.no_deny_consent(domain)

explicit_deny if data.fedgate.common.explicit_deny(domain)

# A deny consent that neither is cleared nor could be shown to apply: its dates could not be
# read (only the compiled VM gets here; the interpreter fails the decision instead).
unreadable_deny if {
	not deny_consents_cleared
	not explicit_deny
}
