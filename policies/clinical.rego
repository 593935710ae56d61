# Clinical domain: treatment, emergency treatment, break-the-glass and care management.
package fedgate.clinical

# Shared rules are named by their full path (data.fedgate.common.*), not through
# `import data.fedgate.common`: with the import, a decision compiled for regorus's VM took
# twice as long (gateway/benches/decision.rs).

domain := "clinical"

default decision := {
	"allow": false,
	"reasons": ["denied by default: no clinical rule applied"],
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
	data.fedgate.common.treatment_obligations(data.fedgate.common.max_records),
) if {
	count(denials) == 0
	permitted
	not break_glass
	count(consent_granted) > 0
}

decision := data.fedgate.common.break_glass_allow(
	array.concat(
		[sprintf(
			"break-glass %s without consent for %s; review required",
			[data.fedgate.common.purpose, concat(", ", sort(granted))],
		)],
		dropped,
	),
	granted,
	data.fedgate.common.break_glass_obligations(data.fedgate.common.max_records),
	data.fedgate.common.break_glass_expires_at,
) if {
	count(denials) == 0
	permitted
	break_glass
}

# Why a request is refused. The domain's own reasons (`refusals`, below) are evaluated only
# when the request is not allowed: `permitted` establishes every condition they name, so on
# an allow they are empty, and evaluating them anyway was a quarter of an allow's time.
# `fedgate policy check` holds the two to agreement on every input it decides. A refusal an
# operator adds as `denials contains "..." if { ... }` is evaluated on every decision, an
# allow included, and denies when it applies.
denials contains msg if {
	not allowed
	some msg in refusals
}

# One of the two allows above applies.
allowed if {
	permitted
	not break_glass
	count(consent_granted) > 0
}

allowed if {
	permitted
	break_glass
}

# Every condition of an allow, each established positively (common.rego, "Fail closed under
# the compiled VM"); the refusals below name the one that is missing. Consent, or
# break-glass in its place, is checked by each allow.
permitted if {
	data.fedgate.common.purpose_in_domain(domain)
	data.fedgate.common.has_privilege_credential
	data.fedgate.common.privilege_org_matches
	read_privilege
	count(role_granted) > 0
	contract
	deny_consents_cleared
	on_shift_or_emergency
}

# Shifts bind everyone but a clinician breaking the glass.
on_shift_or_emergency if data.fedgate.common.shift_ok

on_shift_or_emergency if break_glass

# ---------------------------------------------------------------------------------------
# What may be returned
# ---------------------------------------------------------------------------------------

role_allowed := data.fedgate.common.role_allowed(domain)

consented := data.fedgate.common.permitted_classes(domain)

# Requested types the role may see.
role_granted := data.fedgate.common.requested & role_allowed

# Requested types both the role and a consent allow.
consent_granted := role_granted & consented

# No permit matches, the purpose is an emergency one, and the clinician said why.
break_glass if {
	data.fedgate.common.purpose in data.fedgate.common.break_glass_purposes
	count(consent_granted) == 0
	data.fedgate.common.justified
}

granted := role_granted if break_glass

granted := consent_granted if not break_glass

# One reason per cause, listing the classes: the count of reasons stays bounded whatever
# the request lists (access events carry at most 32).
dropped := sort({msg |
	not_for_role := data.fedgate.common.requested - role_allowed
	count(not_for_role) > 0
	msg := sprintf("%s dropped: not allowed for role %s", [concat(", ", sort(not_for_role)), data.fedgate.common.role])
} | {msg |
	not break_glass
	unconsented := role_granted - consented
	count(unconsented) > 0
	msg := sprintf("%s dropped: no consent covers it", [concat(", ", sort(unconsented))])
})

# ---------------------------------------------------------------------------------------
# Why not
# ---------------------------------------------------------------------------------------

refusals contains msg if {
	not data.fedgate.common.purpose_in_domain(domain)
	msg := sprintf("purpose %v is not a clinical purpose", [data.fedgate.common.purpose])
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
	msg := "no clinical read privilege at this custodian"
}

refusals contains msg if {
	data.fedgate.common.has_privilege_credential
	count(role_allowed) == 0
	msg := sprintf("role %v has no access to the clinical domain", [data.fedgate.common.role])
}

refusals contains msg if {
	count(role_allowed) > 0
	count(role_granted) == 0
	msg := sprintf("no requested data class is allowed for role %v", [data.fedgate.common.role])
}

refusals contains msg if {
	not contract
	msg := sprintf(
		"no registry contract between this custodian and the requester's organization covers clinical/%v",
		[data.fedgate.common.purpose],
	)
}

refusals contains msg if {
	explicit_deny
	msg := sprintf("an explicit deny consent for clinical/%v applies and wins over any permit", [data.fedgate.common.purpose])
}

refusals contains msg if {
	count(role_granted) > 0
	count(consent_granted) == 0
	not data.fedgate.common.purpose in data.fedgate.common.break_glass_purposes
	msg := sprintf("no consent permits clinical/%v for the requested data classes", [data.fedgate.common.purpose])
}

refusals contains "a self-issued consent was presented under a DID this custodian has not linked to the patient" if {
	count(role_granted) > 0
	count(consent_granted) == 0
	not data.fedgate.common.purpose in data.fedgate.common.break_glass_purposes
	data.fedgate.common.unlinked_permit(domain)
}

refusals contains msg if {
	count(role_granted) > 0
	count(consent_granted) == 0
	data.fedgate.common.purpose in data.fedgate.common.break_glass_purposes
	not data.fedgate.common.justified
	msg := sprintf(
		"no consent permits clinical/%v and break-glass needs a justification of at least %d characters",
		[data.fedgate.common.purpose, data.fedgate.common.break_glass_min_justification],
	)
}

refusals contains "outside the requester's shift at this custodian" if {
	not break_glass
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
