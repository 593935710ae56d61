# Detokenize: exchanging a vault token for the identifier it stands for. Only the
# organization the token was issued to, for treatment, by a clinician privileged to
# detokenize at this facility.
package fedgate.detokenize

# Shared rules are named by their full path (data.fedgate.common.*), not through
# `import data.fedgate.common`: with the import, a decision compiled for regorus's VM took
# twice as long (gateway/benches/decision.rs).

domain := "detokenize"

default decision := {
	"allow": false,
	"reasons": ["denied by default: no detokenize rule applied"],
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
	[sprintf("%s token of the %s domain may be detokenized for %s", [token.class, token.domain, data.fedgate.common.purpose])],
	[],
	data.fedgate.common.detokenize_obligations(token.class, data.fedgate.common.max_records),
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
	has_token
	token.recipient == input.request.requester_org
	token.domain == "clinical"
	token.class in data.fedgate.common.identifier_classes
	data.fedgate.common.has_privilege_credential
	data.fedgate.common.privilege_org_matches
	detokenize_privilege
	data.fedgate.common.role in data.fedgate.common.detokenize_roles
	contract
	data.fedgate.common.shift_ok
}

token := input.token

has_token if is_object(token)

refusals contains msg if {
	not data.fedgate.common.purpose_in_domain(domain)
	msg := sprintf("purpose %v does not allow detokenization", [data.fedgate.common.purpose])
}

refusals contains "unknown token" if not has_token

refusals contains "the token was not issued to the requester's organization" if {
	has_token
	token.recipient != input.request.requester_org
}

# Tokens come out of clinical exchanges; billing tokens stay tokens.
refusals contains "only tokens of the clinical domain can be detokenized" if {
	has_token
	token.domain != "clinical"
}

refusals contains "the token's class is not an identifier class" if {
	has_token
	not token.class in data.fedgate.common.identifier_classes
}

refusals contains "no clinician privilege credential of the requester was presented" if {
	not data.fedgate.common.has_privilege_credential
}

refusals contains "the privilege credential names another organization than the requester's" if {
	data.fedgate.common.has_privilege_credential
	not data.fedgate.common.privilege_org_matches
}

refusals contains msg if {
	has_token
	data.fedgate.common.has_privilege_credential
	not detokenize_privilege
	msg := sprintf("no detokenize privilege for %v at this custodian", [token.domain])
}

refusals contains msg if {
	data.fedgate.common.has_privilege_credential
	not data.fedgate.common.role in data.fedgate.common.detokenize_roles
	msg := sprintf("role %v may not detokenize", [data.fedgate.common.role])
}

refusals contains msg if {
	has_token
	not contract
	msg := sprintf(
		"no registry contract between this custodian and the requester's organization covers %v/%v",
		[token.domain, data.fedgate.common.purpose],
	)
}

refusals contains "outside the requester's shift at this custodian" if {
	not data.fedgate.common.shift_ok
}

# ---------------------------------------------------------------------------------------
# Facts of this request here, used both by `permitted` and by the refusals
# ---------------------------------------------------------------------------------------

# Rules, not calls of the shared functions: the compiled program keeps a rule's value for the
# rest of the decision, and runs a function again at every call (a deny evaluates `permitted`
# and then the refusals).
detokenize_privilege if data.fedgate.common.has_privilege(token.domain, "detokenize")

contract if data.fedgate.common.has_contract(token.domain, data.fedgate.common.purpose)
