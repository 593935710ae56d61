# Inputs shared by the policy tests (docs/gateway-contract.md section 1). Not a test itself:
# only rules named test_* are run.
package fedgate.fixtures_test

custodian := "did:web:hospital-b.example"

org := "did:web:hospital-a.example"

other_org := "did:web:clinic-c.example"

clinician := "did:key:z6MkhClinicianA"

patient := "did:key:z6MkpPatientP"

# A patient identifier that must never appear in a reason.
patient_mrn := "MRN-4711-0815"

now := "2026-11-27T10:00:00Z"

privilege(role, specialty, facility, domains, actions) := {
	"issuer": "did:web:credentialing.example",
	"id": "urn:uuid:0b9b1b2e-privilege",
	"subject": {
		"id": clinician,
		"role": role,
		"specialty": specialty,
		"organization": org,
		"privileges": [{"facility": facility, "domains": domains, "actions": actions}],
	},
}

physician := privilege("physician", "207R00000X", custodian, ["clinical"], ["read", "detokenize"])

# Self-issued by the patient, under a DID the custodian has linked to them.
consent(provision, grantee, domains, purposes, classes) := {
	"issuer": patient,
	"id": "urn:uuid:5d1c-consent",
	"self_issued": true,
	"patient_linked": true,
	"subject": {
		"id": patient,
		"patientIdentifiers": [{"custodian": custodian, "system": "urn:oid:2.16.840.1.113883.3.1", "value": patient_mrn}],
		"custodians": [custodian],
		"grantee": {"id": grantee, "kind": "organization"},
		"provision": provision,
		"domains": domains,
		"purposes": purposes,
		"dataClasses": classes,
		"period": {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
	},
}

clinical_permit := consent(
	"permit", org, ["clinical"], ["TREAT", "ETREAT", "CAREMGT"],
	["Observation", "Condition", "DocumentReference", "Procedure", "CarePlan", "Patient"],
)

contract(domains, purposes) := {
	"custodian": custodian,
	"requester": org,
	"domains": domains,
	"purposes": purposes,
	"expires": null,
}

custodian_settings := {
	"did": custodian,
	"shifts": [
		{"roles": ["nurse"], "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "from_minute": 420, "to_minute": 1140},
		{"roles": ["nurse"], "days": ["Sat", "Sun"], "from_minute": 1140, "to_minute": 420},
	],
	"break_glass_minutes": 60,
	"min_cell_size": 11,
	"max_records": 5000,
	"utc_offset_minutes": 0,
	"require_patient_links": true,
}

request(domain, purpose, classes) := {
	"domain": domain,
	"purpose": purpose,
	"data_classes": classes,
	"patient_found": true,
	"justification": "",
	"time": now,
	"weekday": "Fri",
	"minute_of_day": 600,
	"requester": clinician,
	"requester_org": org,
}

# A physician asks for Observation and Condition for treatment, with consent and contract.
clinical_input := {
	"request": request("clinical", "TREAT", ["Observation", "Condition"]),
	"privilege": physician,
	"consents": [clinical_permit],
	"study": null,
	"contracts": [contract(["clinical"], ["TREAT", "ETREAT", "BTG", "CAREMGT"])],
	"custodian": custodian_settings,
	"token": null,
}

# A billing specialist asks for Claim and Coverage for payment.
billing_input := {
	"request": request("billing", "HPAYMT", ["Claim", "Coverage"]),
	"privilege": privilege("billing-specialist", "207R00000X", custodian, ["billing"], ["read"]),
	"consents": [consent(
		"permit", org, ["billing"], ["HPAYMT", "COVERAGE", "CLMATTCH"],
		["Claim", "Coverage", "ExplanationOfBenefit", "Patient", "Observation"],
	)],
	"study": null,
	"contracts": [contract(["billing"], ["HPAYMT", "COVERAGE", "CLMATTCH"])],
	"custodian": custodian_settings,
	"token": null,
}

study := {
	"issuer": "did:web:irb.example",
	"id": "urn:uuid:9e0f-study",
	"subject": {
		"id": "urn:fedgate:study:diabetes-2026",
		"title": "Diabetes outcomes",
		"sponsor": org,
		"irb": "IRB-2026-17",
		"purposes": ["HRESCH"],
		"dataClasses": ["Observation", "Condition"],
		"aggregateOnly": true,
		"minCellSize": 5,
	},
}

# The sponsoring organization queries its study's classes.
research_input := {
	"request": object.union(request("research", "HRESCH", ["Observation", "Condition"]), {"requester": org}),
	"privilege": null,
	"consents": [],
	"study": study,
	"contracts": [contract(["research"], ["HRESCH"])],
	"custodian": custodian_settings,
	"token": null,
}

# A physician of the recipient organization detokenizes an SSN token for treatment.
detokenize_input := {
	"request": request("detokenize", "TREAT", []),
	"privilege": physician,
	"consents": [],
	"study": null,
	"contracts": [contract(["clinical"], ["TREAT", "ETREAT"])],
	"custodian": custodian_settings,
	"token": {"recipient": org, "domain": "clinical", "class": "ssn"},
}

# The same consent, under a DID the custodian has not linked to the patient.
unlinked(c) := object.union(c, {"patient_linked": false})

# Changes to the request part of an input.
with_request(inp, patch) := object.union(inp, {"request": patch})

# Whether some reason contains the fragment.
has_reason(d, fragment) if {
	some r in d.reasons
	contains(r, fragment)
}

# No reason quotes the patient's DID or identifier, nor any DID: reasons interpolate only
# values of closed sets (purposes, domains, roles, classes), see REASON_TEMPLATES in
# federation/src/events.rs.
phi_free(d) if {
	every r in d.reasons {
		not contains(r, patient_mrn)
		not contains(r, patient)
		not contains(r, "did:")
	}
}
