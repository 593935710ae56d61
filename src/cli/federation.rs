//! `fedgate federation`: prepare, co-sign, verify and inspect the federation manifest.
//!
//! Two files, never mixed:
//! - the draft (`--manifest`): the plain manifest JSON, written by `init` and changed by
//!   `add-member`, `add-contract` and `trust-issuer`. Each edit is validated before the
//!   file is written and, when it changes anything, raises `version` by one. Two different
//!   drafts therefore never share a version, which holders would refuse as equivocation.
//! - the signed manifest (`sign --out`, `verify --signed`): the JWS (General JSON
//!   Serialization) that services load. `sign` never changes the draft: it adds one
//!   signature, to a new signed file or to an existing one that carries the same manifest.

use anyhow::anyhow;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use ::federation::credentials::{CredentialKind, Domain};
use ::federation::keys::KeyPair;
use ::federation::registry::{
    self, Contract, Endpoints, Governance, Manifest, Member, Role, SignedManifest,
};

const DRAFT_HELP: &str = "The draft (--manifest) is plain manifest JSON; every edit that \
changes it is validated first and raises its version by one. Signed manifests (--out, \
--signed) are separate files holding the signatures; `sign` adds one signature at a time.";

#[derive(Debug, clap::Subcommand)]
#[command(after_help = DRAFT_HELP)]
pub enum FederationCommand {
    /// Start a draft manifest: version 1, no members, the given governance.
    Init {
        /// Where to write the draft (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
        /// The federation's name.
        #[arg(long)]
        name: String,
        /// How many governance signatures a manifest needs.
        #[arg(long)]
        threshold: u32,
        /// Governance keys: key files from `fedgate keys generate` (did:key), or did:key ids.
        #[arg(long = "governance-key", required = true, num_args = 1..)]
        governance_keys: Vec<String>,
    },
    /// Add an organization to the draft (raises its version).
    AddMember {
        /// The draft manifest to edit.
        #[arg(long)]
        manifest: PathBuf,
        /// The organization's did:web.
        #[arg(long)]
        did: String,
        #[arg(long)]
        name: String,
        /// custodian, requester, credentialing-office, consent-registry, irb,
        /// research-network, auditor or visibility.
        #[arg(long = "role", required = true, num_args = 1..)]
        roles: Vec<Role>,
        /// Where the organization serves /.well-known/did.json.
        #[arg(long)]
        base_url: String,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        visibility: Option<String>,
        /// Allow plain http URLs to loopback hosts (demo and tests).
        #[arg(long)]
        dev: bool,
    },
    /// Record that a custodian shares data domains with a requester (raises the version).
    AddContract {
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        custodian: String,
        #[arg(long)]
        requester: String,
        /// clinical, billing or research.
        #[arg(long = "domain", required = true, num_args = 1..)]
        domains: Vec<Domain>,
        /// HL7 PurposeOfUse codes, e.g. TREAT, HRESCH.
        #[arg(long = "purpose", required = true, num_args = 1..)]
        purposes: Vec<String>,
        /// RFC 3339 date-time after which the contract no longer applies.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        dev: bool,
    },
    /// Trust a member to issue one credential type (raises the version).
    TrustIssuer {
        #[arg(long)]
        manifest: PathBuf,
        /// ClinicianPrivilegeCredential, PatientConsentCredential or ResearchStudyCredential.
        #[arg(long = "type")]
        kind: String,
        /// The issuer's DID (must be a member).
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        dev: bool,
    },
    /// Add one governance signature to a signed manifest (the draft is not changed).
    Sign {
        /// The draft manifest to sign.
        #[arg(long)]
        manifest: PathBuf,
        /// The governance key file.
        #[arg(long)]
        key: PathBuf,
        /// The signed manifest: created, or co-signed when it carries the same manifest.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        dev: bool,
    },
    /// Verify a signed manifest against the given governance (as a service would).
    Verify {
        #[arg(long)]
        signed: PathBuf,
        #[arg(long)]
        threshold: u32,
        /// Governance keys (did:key verification method ids or DIDs).
        #[arg(long = "governance-key", required = true, num_args = 1..)]
        governance_keys: Vec<String>,
        #[arg(long)]
        dev: bool,
    },
    /// Print a draft or a signed manifest (signatures are listed, not verified).
    Show {
        #[arg(
            long,
            required_unless_present = "manifest",
            conflicts_with = "manifest"
        )]
        signed: Option<PathBuf>,
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print the manifest JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `fedgate federation` command, printing to stdout. Errors are one line.
pub fn run(cmd: FederationCommand) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    execute(cmd, &mut stdout.lock()).map_err(|e| anyhow!("{}", e.to_string().replace('\n', " ")))
}

fn at(path: &Path) -> impl Fn(registry::RegistryError) -> anyhow::Error + '_ {
    move |e| match e {
        registry::RegistryError::Io { .. } => e.into(),
        other => anyhow!("{}: {other}", path.display()),
    }
}

fn say(out: &mut dyn Write, line: impl Display) -> anyhow::Result<()> {
    Ok(writeln!(out, "{line}")?)
}

fn execute(cmd: FederationCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        FederationCommand::Init {
            out: path,
            name,
            threshold,
            governance_keys,
        } => {
            if path.exists() {
                return Err(anyhow!(
                    "{} already exists; refusing to overwrite a manifest",
                    path.display()
                ));
            }
            let keys = governance_keys
                .iter()
                .map(|k| governance_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let manifest = Manifest::new(&name, Governance { threshold, keys });
            manifest.validate(false)?;
            save_draft(&path, &manifest)?;
            say(
                out,
                format!("{}: version {}", path.display(), manifest.version),
            )
        }
        FederationCommand::AddMember {
            manifest,
            did,
            name,
            roles,
            base_url,
            gateway,
            issuer,
            visibility,
            dev,
        } => edit(&manifest, dev, out, |m| {
            if m.members.iter().any(|x| x.did == did) {
                return Err(anyhow!("{did} is already a member"));
            }
            m.members.push(Member {
                did,
                name,
                roles,
                endpoints: Endpoints {
                    gateway,
                    issuer,
                    visibility,
                },
                base_url,
            });
            Ok(true)
        }),
        FederationCommand::AddContract {
            manifest,
            custodian,
            requester,
            domains,
            purposes,
            expires,
            dev,
        } => edit(&manifest, dev, out, |m| {
            let contract = Contract {
                custodian,
                requester,
                domains: dedup(domains),
                purposes: dedup(purposes),
                expires,
            };
            if m.contracts.contains(&contract) {
                return Ok(false);
            }
            m.contracts.push(contract);
            Ok(true)
        }),
        FederationCommand::TrustIssuer {
            manifest,
            kind,
            issuer,
            dev,
        } => {
            let kind = CredentialKind::from_type_name(&kind).ok_or_else(|| {
                let names: Vec<&str> = CredentialKind::ALL.iter().map(|k| k.type_name()).collect();
                anyhow!(
                    "unknown credential type {kind:?} (one of {})",
                    names.join(", ")
                )
            })?;
            edit(&manifest, dev, out, |m| {
                let list = m.trusted_issuers.entry(kind).or_default();
                if list.contains(&issuer) {
                    return Ok(false);
                }
                list.push(issuer);
                Ok(true)
            })
        }
        FederationCommand::Sign {
            manifest: draft_path,
            key,
            out: signed_path,
            dev,
        } => {
            let manifest = load_draft(&draft_path)?;
            manifest.validate(dev).map_err(at(&draft_path))?;
            let key = KeyPair::load(&key)?;
            let mut signed = if signed_path.exists() {
                let signed = SignedManifest::load(&signed_path).map_err(at(&signed_path))?;
                if !signed.carries(&manifest).map_err(at(&signed_path))? {
                    let held = signed
                        .unverified_manifest()
                        .map(|m| m.version)
                        .unwrap_or_default();
                    return Err(anyhow!(
                        "{}: {}; write the signatures of version {} to another file",
                        signed_path.display(),
                        registry::RegistryError::PayloadMismatch {
                            signed: held,
                            offered: manifest.version
                        },
                        manifest.version
                    ));
                }
                signed
            } else {
                SignedManifest::sign(&manifest, &[]).map_err(at(&draft_path))?
            };
            signed.add_signature(&key)?;
            signed.save(&signed_path)?;
            let vm = key.verification_method();
            if !manifest.governance.keys.iter().any(|k| k == vm) {
                say(
                    out,
                    format!("note: {vm} is not among this manifest's governance keys"),
                )?;
            }
            say(
                out,
                format!(
                    "{}: version {}, {} signature(s)",
                    signed_path.display(),
                    manifest.version,
                    signed.signature_count()
                ),
            )
        }
        FederationCommand::Verify {
            signed,
            threshold,
            governance_keys,
            dev,
        } => {
            let keys = governance_keys
                .iter()
                .map(|k| registry::governance_key_id(k))
                .collect::<Result<Vec<_>, _>>()?;
            let governance = Governance { threshold, keys };
            let verified = SignedManifest::load(&signed)
                .and_then(|s| s.verify_detailed(&governance, dev))
                .map_err(at(&signed))?;
            say(
                out,
                format!(
                    "valid: version {}, {} signatures",
                    verified.manifest.version,
                    verified.signers.len()
                ),
            )
        }
        FederationCommand::Show {
            signed,
            manifest,
            json,
        } => {
            let (m, signers) = match (signed, manifest) {
                (Some(path), _) => {
                    let s = SignedManifest::load(&path).map_err(at(&path))?;
                    let m = s.unverified_manifest().map_err(at(&path))?;
                    (m, Some((s.signature_count(), s.signers())))
                }
                (None, Some(path)) => (load_draft(&path)?, None),
                (None, None) => return Err(anyhow!("give --signed or --manifest")),
            };
            if json {
                let text = serde_json::to_string_pretty(&m)?;
                return say(out, text);
            }
            summary(&m, signers, out)
        }
    }
}

/// A governance key given as a key file or as a did:key id.
fn governance_key(arg: &str) -> anyhow::Result<String> {
    if arg.starts_with("did:") {
        return Ok(registry::governance_key_id(arg)?);
    }
    let key = KeyPair::load(Path::new(arg))?;
    registry::governance_key_id(key.verification_method())
        .map_err(|_| anyhow!("{arg}: {} is not a did:key governance key", key.did()))
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn load_draft(path: &Path) -> anyhow::Result<Manifest> {
    let bytes = registry::read_limited(path)?;
    Manifest::from_json(&bytes).map_err(at(path))
}

fn save_draft(path: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(manifest)?;
    bytes.push(b'\n');
    Ok(registry::write_atomically(path, &bytes)?)
}

/// Loads the draft, applies `change`, and when it changed something raises the version,
/// validates and writes it. An invalid result is never written.
fn edit(
    path: &Path,
    dev: bool,
    out: &mut dyn Write,
    change: impl FnOnce(&mut Manifest) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut manifest = load_draft(path)?;
    if !change(&mut manifest)? {
        return say(
            out,
            format!(
                "{}: unchanged, version {}",
                path.display(),
                manifest.version
            ),
        );
    }
    manifest.bump_version()?;
    manifest.validate(dev).map_err(at(path))?;
    save_draft(path, &manifest)?;
    say(
        out,
        format!("{}: version {}", path.display(), manifest.version),
    )
}

fn summary(
    m: &Manifest,
    signers: Option<(usize, Vec<String>)>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut lines = vec![
        format!("federation: {}", m.federation),
        format!("version: {} (issued {})", m.version, m.issued_at),
        format!(
            "governance: {} of {} keys",
            m.governance.threshold,
            m.governance.keys.len()
        ),
    ];
    lines.extend(m.governance.keys.iter().map(|k| format!("  {k}")));
    lines.push(format!("members: {}", m.members.len()));
    for member in &m.members {
        let roles: Vec<&str> = member.roles.iter().map(|r| r.as_str()).collect();
        lines.push(format!(
            "  {} \"{}\" [{}] {}",
            member.did,
            member.name,
            roles.join(", "),
            member.base_url
        ));
        let endpoints = [
            ("gateway", &member.endpoints.gateway),
            ("issuer", &member.endpoints.issuer),
            ("visibility", &member.endpoints.visibility),
        ];
        for (name, url) in endpoints {
            if let Some(url) = url {
                lines.push(format!("    {name}: {url}"));
            }
        }
    }
    lines.push("trusted issuers:".into());
    for (kind, issuers) in &m.trusted_issuers {
        lines.push(format!("  {kind}: {}", issuers.join(", ")));
    }
    lines.push(format!("contracts: {}", m.contracts.len()));
    for c in &m.contracts {
        let domains: Vec<&str> = c.domains.iter().map(|d| d.as_str()).collect();
        lines.push(format!(
            "  {} -> {} [{}] for {} ({})",
            c.custodian,
            c.requester,
            domains.join(", "),
            c.purposes.join(", "),
            c.expires
                .as_deref()
                .map(|t| format!("expires {t}"))
                .unwrap_or_else(|| "no expiry".into())
        ));
    }
    if let Some(v) = &m.visibility {
        lines.push(format!("visibility: {} {}", v.did, v.endpoint));
    }
    if let Some((count, kids)) = signers {
        lines.push(format!(
            "signatures: {count} (not verified here; use `fedgate federation verify`)"
        ));
        lines.extend(kids.iter().map(|k| format!("  {k}")));
    }
    for line in lines {
        say(out, line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::federation::keys::KeyAlgorithm;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: FederationCommand,
    }

    /// Runs one command line (words separated by whitespace) and returns what it printed.
    fn fed(line: &str) -> anyhow::Result<String> {
        let argv = std::iter::once("federation").chain(line.split_whitespace());
        let cli = Cli::try_parse_from(argv)?;
        let mut out = Vec::new();
        execute(cli.cmd, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    struct Setup {
        dir: tempfile::TempDir,
        keys: Vec<KeyPair>,
    }

    impl Setup {
        /// Three governance key files gov0..gov2 (gov1 is P-256).
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<KeyPair> = (0..3)
                .map(|i| {
                    let alg = if i == 1 {
                        KeyAlgorithm::P256
                    } else {
                        KeyAlgorithm::Ed25519
                    };
                    let key = KeyPair::generate_did_key(alg).unwrap();
                    key.save(&dir.path().join(format!("gov{i}.key.json")))
                        .unwrap();
                    key
                })
                .collect();
            Setup { dir, keys }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn vm(&self, i: usize) -> &str {
            self.keys[i].verification_method()
        }
    }

    fn version_of(path: &str) -> u64 {
        load_draft(Path::new(path)).unwrap().version
    }

    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("raises its version by one"), "{help}");
    }

    #[test]
    fn draft_edit_sign_verify_round_trip() {
        let s = Setup::new();
        let draft = s.path("manifest.json");
        let signed = s.path("manifest.signed.json");
        let k = |i: usize| s.path(&format!("gov{i}.key.json"));

        let out = fed(&format!(
            "init --out {draft} --name TestFederation --threshold 2 --governance-key {} {} {}",
            k(0),
            k(1),
            s.vm(2)
        ))
        .unwrap();
        assert!(out.contains("version 1"), "{out}");
        let e = fed(&format!(
            "init --out {draft} --name X --threshold 1 --governance-key {}",
            k(0)
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("already exists"), "{e}");

        for (host, roles) in [
            ("office.test", "--role credentialing-office"),
            ("hospital-a.test", "--role custodian --role requester"),
            ("hospital-b.test", "--role custodian"),
        ] {
            fed(&format!(
                "add-member --manifest {draft} --did did:web:{host} --name {host} {roles} \
                 --base-url https://{host}/ --gateway https://{host}/gateway"
            ))
            .unwrap();
        }
        assert_eq!(version_of(&draft), 4);
        fed(&format!(
            "add-contract --manifest {draft} --custodian did:web:hospital-b.test \
             --requester did:web:hospital-a.test --domain clinical billing --purpose TREAT \
             --expires 2030-01-01T00:00:00Z"
        ))
        .unwrap();
        let trust_office = format!(
            "trust-issuer --manifest {draft} --type ClinicianPrivilegeCredential \
             --issuer did:web:office.test"
        );
        fed(&trust_office).unwrap();
        assert_eq!(version_of(&draft), 6);
        // A repeated edit changes nothing, so the version stays.
        let out = fed(&trust_office).unwrap();
        assert!(out.contains("unchanged"), "{out}");
        assert_eq!(version_of(&draft), 6);

        let sign = |i: usize, out: &str| {
            fed(&format!(
                "sign --manifest {draft} --key {} --out {out}",
                k(i)
            ))
        };
        let verify = |keys: &[&str]| {
            fed(&format!(
                "verify --signed {signed} --threshold 2 --governance-key {}",
                keys.join(" ")
            ))
        };
        let all = [s.vm(0), s.vm(1), s.vm(2)];
        // 1 of 3 is below the threshold.
        sign(0, &signed).unwrap();
        let e = verify(&all).unwrap_err().to_string();
        assert!(
            e.contains("1 valid governance signature(s), 2 required"),
            "{e}"
        );
        // The same key twice is refused; a second key co-signs.
        assert!(sign(0, &signed)
            .unwrap_err()
            .to_string()
            .contains("already signed"));
        sign(1, &signed).unwrap();
        assert_eq!(
            verify(&all).unwrap().trim(),
            "valid: version 6, 2 signatures"
        );
        // DIDs are accepted for the governance keys too.
        verify(&[s.keys[0].did(), s.keys[1].did(), s.keys[2].did()]).unwrap();
        // A verifier whose governance does not list the second signer refuses the manifest.
        let e = verify(&[s.vm(0), s.vm(2)]).unwrap_err().to_string();
        assert!(e.contains("not a governance key"), "{e}");

        // A service loads the same file.
        let m = SignedManifest::load(Path::new(&signed))
            .unwrap()
            .verify(&Governance {
                threshold: 2,
                keys: all.iter().map(|k| k.to_string()).collect(),
            })
            .unwrap();
        assert_eq!(m.members.len(), 3);
        assert_eq!(
            m.contracts[0].domains,
            vec![Domain::Clinical, Domain::Billing]
        );

        // After an edit the draft no longer matches the signed file.
        fed(&format!(
            "trust-issuer --manifest {draft} --type ResearchStudyCredential \
             --issuer did:web:hospital-a.test"
        ))
        .unwrap();
        let e = sign(2, &signed).unwrap_err().to_string();
        assert!(
            e.contains("another manifest (version 6)") && e.contains("version 7"),
            "{e}"
        );
        sign(2, &s.path("manifest-7.signed.json")).unwrap();

        let out = fed(&format!("show --signed {signed}")).unwrap();
        assert!(
            out.contains("version: 6") && out.contains("signatures: 2"),
            "{out}"
        );
        let out = fed(&format!("show --manifest {draft} --json")).unwrap();
        let shown: Manifest = serde_json::from_str(&out).unwrap();
        assert_eq!(shown.version, 7);
        assert!(fed("show --json").is_err());
    }

    #[test]
    fn invalid_edits_are_never_written() {
        let s = Setup::new();
        let draft = s.path("manifest.json");
        let k0 = s.path("gov0.key.json");
        fed(&format!(
            "init --out {draft} --name F --threshold 1 --governance-key {k0}"
        ))
        .unwrap();
        let before = std::fs::read(&draft).unwrap();

        let e = fed(&format!(
            "add-contract --manifest {draft} --custodian did:web:a.test \
             --requester did:web:b.test --domain clinical --purpose TREAT"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("contracts[0].custodian") && e.contains("not a member"),
            "{e}"
        );
        let add_a = |base: &str, extra: &str| {
            fed(&format!(
                "add-member --manifest {draft} --did did:web:a.test --name A \
                 --role custodian --base-url {base} {extra}"
            ))
        };
        let e = add_a("http://a.test/", "").unwrap_err().to_string();
        assert!(e.contains("members[0].baseUrl"), "{e}");
        let e = fed(&format!(
            "trust-issuer --manifest {draft} --type NurseCredential --issuer did:web:a.test"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown credential type"), "{e}");
        // Unknown roles are refused by the argument parser.
        assert!(fed(&format!(
            "add-member --manifest {draft} --did did:web:a.test --name A --role overlord \
             --base-url https://a.test/"
        ))
        .is_err());
        assert_eq!(std::fs::read(&draft).unwrap(), before);

        // Plain http to loopback is accepted with --dev.
        add_a("http://127.0.0.1:8443/", "--dev").unwrap();
        assert_eq!(version_of(&draft), 2);
        let e = add_a("https://a.test/", "").unwrap_err().to_string();
        assert!(e.contains("already a member"), "{e}");

        // A threshold above the number of keys is refused at init; nothing is written.
        let other = s.path("other.json");
        let e = fed(&format!(
            "init --out {other} --name F --threshold 2 --governance-key {k0}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("governance.threshold"), "{e}");
        assert!(!Path::new(&other).exists());
    }

    #[test]
    fn a_did_web_key_is_not_a_governance_key() {
        let s = Setup::new();
        let web = KeyPair::generate_did_web("did:web:org.test", KeyAlgorithm::Ed25519).unwrap();
        let web_path = s.path("web.key.json");
        web.save(Path::new(&web_path)).unwrap();
        let e = fed(&format!(
            "init --out {} --name F --threshold 1 --governance-key {web_path}",
            s.path("m.json")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a did:key governance key"), "{e}");
    }
}
