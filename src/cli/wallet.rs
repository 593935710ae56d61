//! `fedgate wallet`: a holder's wallet (clinician, research network or patient).
//!
//! Every command takes `--dir DIR`, the wallet folder: `holder.key.json` (the holder's
//! did:key, mode 0600) and `credentials.redb` (the credentials). Output is for people
//! unless `--json` is given; errors come back as one line.
//!
//! `import` verifies a credential before storing it, with the issuers and did:web
//! endpoints named in a trust file (`--trust FILE`, else `DIR/trust.json` or
//! `DIR/trust.toml`); its format is in `TRUST_HELP` (printed by `--help`).

use anyhow::anyhow;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use federation::credentials::{Domain, Grantee, PatientIdentifier, ProofFormat};
use federation::keys::KeyAlgorithm;
use serde_json::{json, Value};
use wallet::{
    ConsentGrant, GatewayClient, PresentationRequest, Provision, StoredCredential, TrustConfig,
    Wallet,
};

/// Largest credential file read by `import`.
const MAX_CREDENTIAL_BYTES: u64 = 1024 * 1024;

const TRUST_HELP: &str = "The trust file (--trust FILE, else DIR/trust.json or DIR/trust.toml) \
names whom `import` trusts. JSON, or TOML with the same keys:
  {
    \"trustedIssuers\": {
      \"ClinicianPrivilegeCredential\": [\"did:web:credentialing.hospital-a.example\"],
      \"ResearchStudyCredential\": [\"did:web:irb.university.example\"]
    },
    \"didWeb\": {
      \"did:web:credentialing.hospital-a.example\": \"https://credentialing.hospital-a.example/\"
    },
    \"devMode\": false
  }
trustedIssuers: issuer DIDs per credential type (a patient's self-issued consent needs none).
didWeb: base URL of every did:web issuer (its DID document and status lists); nothing else is fetched.
devMode: allow plain http to loopback URLs (tests and the demo only).";

/// The wallet folder, common to every command.
#[derive(Debug, Clone, clap::Args)]
pub struct WalletDir {
    /// The wallet folder (holder key and credential store).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Which gateway to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Base URL of the gateway, e.g. https://gateway.hospital-b.example/
    #[arg(long, value_name = "URL")]
    gateway: String,
    /// Allow plain http to a loopback gateway (tests and the demo only).
    #[arg(long)]
    dev: bool,
}

#[derive(Debug, clap::Subcommand)]
#[command(after_help = TRUST_HELP)]
pub enum WalletCommand {
    /// Create a wallet: a new holder did:key (key file 0600) and an empty store.
    Init {
        #[command(flatten)]
        wallet: WalletDir,
        /// Ed25519 (default) or P-256.
        #[arg(long, default_value = "Ed25519")]
        alg: KeyAlgorithm,
    },
    /// Verify a credential and keep it if it is addressed to this wallet's holder.
    Import {
        #[command(flatten)]
        wallet: WalletDir,
        /// A file holding a JWT or a JSON credential; `-` reads standard input.
        file: PathBuf,
        /// The trust file (see below); default DIR/trust.json or DIR/trust.toml.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
    },
    /// Receive a credential offered by OpenID4VCI (pre-authorized code): verify it and
    /// keep it if it is addressed to this wallet's holder.
    Receive {
        #[command(flatten)]
        wallet: WalletDir,
        /// The offer: `openid-credential-offer://?credential_offer=...` or
        /// `...?credential_offer_uri=...`, or the offer's https URI.
        offer: String,
        /// The transaction code the office gave you apart from the offer.
        #[arg(long, value_name = "CODE")]
        tx_code: Option<String>,
        /// The format to ask for: ldp_vc, jwt_vc_json or dc+sd-jwt (default: the first
        /// the offer has of these).
        #[arg(long)]
        format: Option<String>,
        /// The trust file (see below); default DIR/trust.json or DIR/trust.toml.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// Allow plain http to a loopback issuer (tests and the demo only).
        #[arg(long)]
        dev: bool,
    },
    /// List the stored credentials.
    List {
        #[command(flatten)]
        wallet: WalletDir,
    },
    /// Show one stored credential in full.
    Show {
        #[command(flatten)]
        wallet: WalletDir,
        id: String,
        /// A consent as a FHIR R4 Consent resource instead of the credential.
        #[arg(long)]
        fhir: bool,
    },
    /// Remove a stored credential.
    Remove {
        #[command(flatten)]
        wallet: WalletDir,
        id: String,
    },
    /// Sign a presentation for a gateway, bound to a challenge it issues.
    Present {
        #[command(flatten)]
        wallet: WalletDir,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The gateway's organization DID; the gateway must answer as this DID.
        #[arg(long, value_name = "DID")]
        facility: String,
        /// clinical, billing or research.
        #[arg(long)]
        domain: Domain,
        /// HL7 v3 PurposeOfUse code, e.g. TREAT.
        #[arg(long)]
        purpose: String,
        /// The patient's DID, to include their consents.
        #[arg(long, value_name = "DID")]
        patient: Option<String>,
        /// jwt or data-integrity.
        #[arg(long, default_value = "data-integrity")]
        format: ProofFormat,
        /// Write the presentation to this file (0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Answer an OpenID4VP authorization request (`openid4vp://?client_id=…&request_uri=…`):
    /// check the signed request object against the verifier's DID (the trust file's didWeb
    /// entry names where its DID document is), present what its DCQL query asks of the
    /// stored credentials, post it, and print the verifier's answer (`redirect_uri` on the
    /// same device).
    Respond {
        #[command(flatten)]
        wallet: WalletDir,
        /// The authorization request URL.
        url: String,
        /// The trust file (see below); default DIR/trust.json or DIR/trust.toml.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// The patient's DID, to include their consents.
        #[arg(long, value_name = "DID")]
        patient: Option<String>,
        /// Allow plain http to a loopback verifier (tests and the demo only).
        #[arg(long)]
        dev: bool,
    },
    /// A patient's consents: grant, list, register, withdraw.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ConsentCommand {
    /// Self-issue a consent (the holder is the patient) and keep it.
    Grant {
        #[command(flatten)]
        wallet: WalletDir,
        /// The patient's identifier at a custodian: CUSTODIAN_DID,SYSTEM,VALUE
        /// (e.g. did:web:hospital-b.example,urn:oid:2.16.840.1.113883.4.1,MRN-0001).
        #[arg(long = "identifier", value_name = "DID,SYSTEM,VALUE", required = true)]
        identifiers: Vec<String>,
        /// DID of an organization whose records the consent covers (repeat or comma-separate).
        #[arg(
            long = "custodian",
            value_name = "DID",
            required = true,
            value_delimiter = ','
        )]
        custodians: Vec<String>,
        /// Who is granted (or denied): a DID, or a study id (urn:fedgate:study:...).
        #[arg(long, value_name = "ID")]
        grantee: String,
        #[arg(long, default_value = "clinician", value_parser = ["clinician", "organization", "study"])]
        grantee_kind: String,
        /// permit or deny.
        #[arg(long, default_value = "permit")]
        provision: Provision,
        /// clinical, billing or research (repeat or comma-separate).
        #[arg(long = "domain", required = true, value_delimiter = ',')]
        domains: Vec<Domain>,
        /// HL7 v3 PurposeOfUse codes, e.g. TREAT (repeat or comma-separate).
        #[arg(long = "purpose", required = true, value_delimiter = ',')]
        purposes: Vec<String>,
        /// FHIR R4 resource types, e.g. Observation (repeat or comma-separate).
        #[arg(long = "data-class", required = true, value_delimiter = ',')]
        data_classes: Vec<String>,
        /// Start of the period: now, YYYY-MM-DD or an RFC 3339 date-time.
        #[arg(long, default_value = "now")]
        start: String,
        /// End of the period (open-ended when not given).
        #[arg(long)]
        end: Option<String>,
        /// jwt or data-integrity.
        #[arg(long, default_value = "data-integrity")]
        format: ProofFormat,
    },
    /// List the consents in the wallet (granted by or to the holder).
    List {
        #[command(flatten)]
        wallet: WalletDir,
    },
    /// Tell a custodian's gateway the consent is withdrawn, then mark it withdrawn here.
    Withdraw {
        #[command(flatten)]
        wallet: WalletDir,
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Register the consent with a custodian's gateway.
    Register {
        #[command(flatten)]
        wallet: WalletDir,
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

pub async fn run(cmd: WalletCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::Init { wallet, alg } => {
            let w = Wallet::init(&wallet.dir, alg)?;
            let key_file = wallet.dir.join(wallet::holder::KEY_FILE);
            if json {
                print_json(&json!({
                    "dir": wallet.dir,
                    "did": w.did(),
                    "algorithm": alg.to_string(),
                    "keyFile": key_file,
                }))
            } else {
                print_line(&format!(
                    "wallet created in {}\nholder DID: {}\nkey file:   {} (mode 0600)",
                    wallet.dir.display(),
                    w.did(),
                    key_file.display()
                ))
            }
        }
        WalletCommand::Import {
            wallet,
            file,
            trust,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let verifier = trust_config(&wallet.dir, trust.as_deref())?.verifier()?;
            let credential = read_credential(&file)?;
            let stored = w.import(credential, &verifier).await?;
            if json {
                print_json(&brief(&stored))
            } else {
                print_line(&format!(
                    "stored {}: {} from {}\n  {}",
                    stored.id, stored.kind, stored.issuer, stored.summary
                ))
            }
        }
        WalletCommand::Receive {
            wallet,
            offer,
            tx_code,
            format,
            trust,
            dev,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let verifier = trust_config(&wallet.dir, trust.as_deref())?.verifier()?;
            let received = w
                .receive(
                    &offer,
                    tx_code.as_deref(),
                    format.as_deref(),
                    &verifier,
                    dev,
                )
                .await?;
            let stored = &received.stored;
            if json {
                let mut out = brief(stored);
                out["configuration"] = json!(received.configuration_id);
                out["oid4vciFormat"] = json!(received.format);
                print_json(&out)
            } else {
                print_line(&format!(
                    "received {} ({}) and stored {}: {} from {}\n  {}",
                    received.configuration_id,
                    received.format,
                    stored.id,
                    stored.kind,
                    stored.issuer,
                    stored.summary
                ))
            }
        }
        WalletCommand::List { wallet } => {
            let w = Wallet::open(&wallet.dir)?;
            print_list(&w.list()?, json)
        }
        WalletCommand::Show { wallet, id, fhir } => {
            let w = Wallet::open(&wallet.dir)?;
            if fhir {
                return print_json(&w.consent_fhir(&id)?);
            }
            let stored = w.show(&id)?;
            print_json(&serde_json::to_value(&stored)?)
        }
        WalletCommand::Remove { wallet, id } => {
            let w = Wallet::open(&wallet.dir)?;
            w.remove(&id)?;
            if json {
                print_json(&json!({ "removed": id }))
            } else {
                print_line(&format!("removed {id}"))
            }
        }
        WalletCommand::Present {
            wallet,
            gateway,
            facility,
            domain,
            purpose,
            patient,
            format,
            out,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let client = gateway_client(&gateway)?;
            let request = PresentationRequest {
                facility,
                domain,
                purpose,
                patient,
                format,
            };
            let vp = w.present(&request, &client).await?;
            match out {
                Some(path) => {
                    let text = match &vp {
                        Value::String(jwt) => jwt.clone(),
                        other => serde_json::to_string_pretty(other)?,
                    };
                    write_private(&path, &text)?;
                    if json {
                        print_json(&json!({ "out": path }))
                    } else {
                        print_line(&format!("presentation written to {}", path.display()))
                    }
                }
                None if json => print_json(&json!({ "presentation": vp })),
                None => match &vp {
                    Value::String(jwt) => print_line(jwt),
                    other => print_json(other),
                },
            }
        }
        WalletCommand::Respond {
            wallet,
            url,
            trust,
            patient,
            dev,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let verifier = trust_config(&wallet.dir, trust.as_deref())?.verifier()?;
            let answer =
                wallet::oid4vp::respond(&w, &url, &verifier.resolver, patient.as_deref(), dev)
                    .await?;
            if json {
                print_json(&answer)
            } else {
                match answer.get("redirect_uri").and_then(Value::as_str) {
                    Some(uri) => print_line(&format!("answered; continue at {uri}")),
                    None => print_line("answered; the requester collects the result"),
                }
            }
        }
        WalletCommand::Consent { command } => consent(command, json).await,
    }
}

async fn consent(cmd: ConsentCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ConsentCommand::Grant {
            wallet,
            identifiers,
            custodians,
            grantee,
            grantee_kind,
            provision,
            domains,
            purposes,
            data_classes,
            start,
            end,
            format,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let patient_identifiers = identifiers
                .iter()
                .map(|s| parse_identifier(s))
                .collect::<Result<Vec<_>, _>>()?;
            let grant = ConsentGrant {
                patient_identifiers,
                custodians,
                grantee: Grantee {
                    id: grantee,
                    kind: grantee_kind,
                },
                provision,
                domains,
                purposes,
                data_classes,
                period_start: wallet::parse_time(&start).map_err(|e| anyhow!("--start: {e}"))?,
                period_end: end
                    .as_deref()
                    .map(wallet::parse_time)
                    .transpose()
                    .map_err(|e| anyhow!("--end: {e}"))?,
                format,
            };
            let credential = w.consent_grant(grant).await?;
            let stored = w
                .consent_list()?
                .into_iter()
                .find(|c| c.credential == credential)
                .ok_or_else(|| anyhow!("the consent was signed but is not in the store"))?;
            if json {
                print_json(&json!({ "id": stored.id, "credential": credential }))
            } else {
                print_line(&format!("granted {}\n  {}", stored.id, stored.summary))
            }
        }
        ConsentCommand::List { wallet } => {
            let w = Wallet::open(&wallet.dir)?;
            print_list(&w.consent_list()?, json)
        }
        ConsentCommand::Withdraw {
            wallet,
            id,
            gateway,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let client = gateway_client(&gateway)?;
            let answer = w.consent_withdraw(&id, &client).await?;
            if json {
                print_json(&json!({ "id": id, "withdrawn": true, "gateway": answer }))
            } else {
                print_line(&format!(
                    "withdrawn {id} (acknowledged by {})",
                    client.base()
                ))
            }
        }
        ConsentCommand::Register {
            wallet,
            id,
            gateway,
        } => {
            let w = Wallet::open(&wallet.dir)?;
            let client = gateway_client(&gateway)?;
            let answer = w.consent_register(&id, &client).await?;
            if json {
                print_json(&json!({ "id": id, "registered": true, "gateway": answer }))
            } else {
                print_line(&format!("registered {id} with {}", client.base()))?;
                for note in registration_notes(&answer) {
                    print_line(&format!("note: {note}"))?;
                }
                Ok(())
            }
        }
    }
}

/// What a patient should know about a registration the custodian accepted but cannot
/// act on yet.
fn registration_notes(answer: &Value) -> Vec<&'static str> {
    let mut notes = Vec::new();
    for r in answer["registered"].as_array().into_iter().flatten() {
        if r["patientKnown"] == false {
            notes.push("the custodian found no patient with the identifiers in this consent");
        } else if r["speaksForPatient"] == false {
            notes.push(
                "the custodian has not linked this wallet's DID to your record yet; until it does, \
                 this consent grants nothing there (ask its registration desk or patient portal)",
            );
        }
    }
    notes.dedup();
    notes
}

fn print_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").map_err(|e| anyhow!("cannot write output: {e}"))
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    print_line(&serde_json::to_string_pretty(value)?)
}

/// What `list` shows of a record: everything but the credential itself.
fn brief(c: &StoredCredential) -> Value {
    json!({
        "id": c.id,
        "kind": c.kind,
        "format": c.format,
        "issuer": c.issuer,
        "subject": c.subject,
        "summary": c.summary,
        "validUntil": c.valid_until.map(federation::time::rfc3339),
        "withdrawn": c.withdrawn,
    })
}

fn print_list(list: &[StoredCredential], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&Value::Array(list.iter().map(brief).collect()));
    }
    if list.is_empty() {
        return print_line("no credentials");
    }
    let mut lines = vec![format!(
        "{:<46} {:<29} {:<15} {:<21} SUMMARY",
        "ID", "KIND", "FORMAT", "VALID UNTIL"
    )];
    for c in list {
        let format = match c.format {
            ProofFormat::Jwt => "jwt",
            ProofFormat::DataIntegrity => "data-integrity",
            ProofFormat::SdJwt => "sd-jwt",
        };
        let until = c
            .valid_until
            .map(federation::time::rfc3339)
            .unwrap_or_else(|| "-".into());
        let flag = if c.withdrawn { "[withdrawn] " } else { "" };
        lines.push(format!(
            "{:<46} {:<29} {:<15} {:<21} {flag}{}",
            c.id,
            c.kind.to_string(),
            format,
            until,
            c.summary
        ));
    }
    print_line(&lines.join("\n"))
}

fn trust_config(dir: &Path, explicit: Option<&Path>) -> anyhow::Result<TrustConfig> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => ["trust.json", "trust.toml"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "no trust file: pass --trust FILE or put trust.json in {} (see `fedgate wallet --help`)",
                    dir.display()
                )
            })?,
    };
    Ok(TrustConfig::load(&path)?)
}

fn gateway_client(args: &GatewayArgs) -> anyhow::Result<GatewayClient> {
    let url = reqwest_url(&args.gateway)?;
    Ok(GatewayClient::new(url, args.dev)?)
}

fn reqwest_url(text: &str) -> anyhow::Result<wallet::gateway::Url> {
    wallet::gateway::Url::parse(text).map_err(|e| anyhow!("--gateway {text:?}: {e}"))
}

/// Reads a credential: a JWT (compact JWS) or a JSON document (an object, or a JSON
/// string holding a JWT).
fn read_credential(file: &Path) -> anyhow::Result<Value> {
    let mut bytes = Vec::new();
    let limit = MAX_CREDENTIAL_BYTES + 1;
    let read = if file == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| anyhow!("{}: {e}", file.display()))?;
    if bytes.len() as u64 > MAX_CREDENTIAL_BYTES {
        return Err(anyhow!("{}: larger than 1 MiB", file.display()));
    }
    federation::verify::read_secured(&bytes)
        .map_err(|e| anyhow!("{}: not a credential: {e}", file.display()))
}

fn parse_identifier(text: &str) -> anyhow::Result<PatientIdentifier> {
    let mut parts = text.splitn(3, ',');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(custodian), Some(system), Some(value))
            if !custodian.is_empty() && !system.is_empty() && !value.is_empty() =>
        {
            Ok(PatientIdentifier {
                custodian: custodian.trim().to_string(),
                system: system.trim().to_string(),
                value: value.trim().to_string(),
            })
        }
        _ => Err(anyhow!(
            "--identifier {text:?} is not CUSTODIAN_DID,SYSTEM,VALUE"
        )),
    }
}

/// Writes a presentation readable by its owner only: until its challenge is used, whoever
/// holds it can hand it to that gateway.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    federation::keys::write_private(path, text.as_bytes())
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_the_custodian_cannot_act_on_is_explained() {
        let linked =
            json!({"registered": [{"id": "a", "patientKnown": true, "speaksForPatient": true}]});
        assert!(registration_notes(&linked).is_empty());
        let unlinked =
            json!({"registered": [{"id": "a", "patientKnown": true, "speaksForPatient": false}]});
        assert!(registration_notes(&unlinked)[0].contains("not linked"));
        let unknown =
            json!({"registered": [{"id": "a", "patientKnown": false, "speaksForPatient": false}]});
        assert!(registration_notes(&unknown)[0].contains("no patient"));
        assert!(registration_notes(&json!({})).is_empty());
    }
}
