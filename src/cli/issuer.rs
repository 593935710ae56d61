//! `fedgate issuer offer`: asks a running issuer (its admin API, with the admin token) for
//! an OpenID4VCI offer, prints the offer URL and the transaction code, and writes the QR
//! codes.

use std::path::PathBuf;

use anyhow::anyhow;
use base64::Engine as _;
use serde_json::{json, Value};

/// Largest request body file read.
const MAX_BODY_BYTES: u64 = 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct OfferArgs {
    /// The issuer's base URL, e.g. https://credentialing.hospital-a.example/
    #[arg(long, value_name = "URL")]
    issuer: String,
    /// File holding the issuer's admin token.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Offer this unsigned credential (JSON file, as for `/credentials/issue`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["joiner", "mover"])]
    credential: Option<PathBuf>,
    /// Offer a joiner's privilege: a JSON file with the body of `POST /v1/privileges`.
    #[arg(long, value_name = "FILE", conflicts_with = "mover")]
    joiner: Option<PathBuf>,
    /// Offer a mover's new privilege replacing this credential id; the body of
    /// `POST /v1/privileges/{id}/move` is read from --body. The old credential is revoked
    /// when the wallet receives the new one.
    #[arg(long, value_name = "ID", requires = "body")]
    mover: Option<String>,
    /// The mover's body (JSON file).
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// A format to offer (ldp_vc, jwt_vc_json, dc+sd-jwt); repeat for several. Default:
    /// every format the office has for the type.
    #[arg(long = "format", value_name = "FORMAT")]
    formats: Vec<String>,
    /// No transaction code (anyone holding the offer can redeem it).
    #[arg(long)]
    no_tx_code: bool,
    /// Seconds the offer can be redeemed (default: the issuer's, 600).
    #[arg(long, value_name = "SECS")]
    expires_in: Option<u64>,
    /// Write the offer's QR code as PNG here.
    #[arg(long, value_name = "FILE")]
    qr_png: Option<PathBuf>,
    /// Write the offer's QR code as SVG here.
    #[arg(long, value_name = "FILE")]
    qr_svg: Option<PathBuf>,
    /// Allow plain http to a loopback issuer (tests and the demo only).
    #[arg(long)]
    dev: bool,
    /// Print the whole answer as JSON.
    #[arg(long)]
    json: bool,
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BODY_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(anyhow!("{}: larger than 1 MiB", path.display()));
    }
    federation::json::parse_strict(&bytes)
        .map_err(|e| anyhow!("{}: not strict JSON: {}", path.display(), e.summary()))
}

pub async fn offer(args: OfferArgs) -> anyhow::Result<()> {
    let base = reqwest::Url::parse(&args.issuer).map_err(|e| anyhow!("--issuer: {e}"))?;
    federation::client::loopback_only_http(&base, args.dev)?;
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| anyhow!("{}: {e}", args.token_file.display()))?;
    let mut options = json!({});
    if !args.formats.is_empty() {
        options["formats"] = json!(args.formats);
    }
    if args.no_tx_code {
        options["txCode"] = json!(false);
    }
    if let Some(secs) = args.expires_in {
        options["expiresInSecs"] = json!(secs);
    }
    let (path, body) = match (&args.credential, &args.joiner, &args.mover) {
        (Some(file), None, None) => {
            let mut body = options;
            body["credential"] = read_json(file)?;
            ("v1/oid4vci/offers".to_string(), body)
        }
        (None, Some(file), None) => {
            let mut body = read_json(file)?;
            body["offer"] = options;
            ("v1/privileges".to_string(), body)
        }
        (None, None, Some(id)) => {
            let file = args
                .body
                .as_ref()
                .ok_or_else(|| anyhow!("--mover needs --body FILE"))?;
            let mut body = read_json(file)?;
            body["offer"] = options;
            let id: String = id
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        char::from(b).to_string()
                    }
                    other => format!("%{other:02X}"),
                })
                .collect();
            (format!("v1/privileges/{id}/move"), body)
        }
        _ => {
            return Err(anyhow!(
                "name what to offer: --credential, --joiner or --mover"
            ))
        }
    };
    let url = base.join(&path).map_err(|e| anyhow!("--issuer: {e}"))?;
    let resp = federation::client::try_http_client()?
        .post(url.clone())
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow!("issuer {url} is unreachable: {}", e.without_url()))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| anyhow!("issuer {url}: {}", e.without_url()))?;
    let answer = federation::json::parse_strict(&bytes).unwrap_or(Value::Null);
    if status.as_u16() != 201 {
        let detail = answer
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("no detail given");
        let detail: String = detail
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        return Err(anyhow!("issuer refused the offer ({status}): {detail}"));
    }
    if let Some(path) = &args.qr_png {
        let png = answer
            .get("qrPng")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| anyhow!("the issuer's answer has no PNG QR code"))?;
        std::fs::write(path, png).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.qr_svg {
        let svg = answer
            .get("qrSvg")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the issuer's answer has no SVG QR code"))?;
        std::fs::write(path, svg).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let field = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or("-");
    println!("offer:      {}", field("credentialOfferUrl"));
    println!("by reference: {}", field("credentialOfferUriUrl"));
    println!(
        "tx code:    {} (give it to the holder apart from the offer; it is not shown again)",
        field("txCode")
    );
    println!("expires at: {}", field("expiresAt"));
    Ok(())
}
