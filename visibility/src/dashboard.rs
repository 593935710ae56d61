//! The auditor dashboard (`GET /dashboard`) and the patient's page (`GET
//! /dashboard/patient`): static pages with their scripts, style sheets and the vendored
//! chart library (uPlot, MIT, `assets/vendor/uplot/`) served beside them from this binary,
//! so that they run under a strict Content-Security-Policy with no inline code at all and
//! nothing is loaded from another origin.
//!
//! The pages hold nothing secret of their own: the auditor pastes a session token (or opens
//! the page with `#token=...`, which the script reads and then removes from the address
//! bar); the token stays in the script's memory and is sent as a bearer token to the same
//! auditor API any other client uses, never in a URL; exports are fetched with it and
//! handed to the browser as blobs. Every response here says `Referrer-Policy: no-referrer`.
//! Every value from the API reaches the DOM through `textContent`, never as markup.
//!
//! What the dashboard does: searches the events with every filter of the auditor API,
//! pages through them with the API's cursor, sorts a page by any column, and opens one
//! event with its inclusion proof verified in the page (leaf hash, RFC 9162 inclusion proof
//! to the checkpoint's root, Ed25519 signature of the checkpoint by the key pinned from
//! `/v1/keys`, by WebCrypto); downloads the FHIR AuditEvent Bundle, CSV and a signed
//! evidence package for the filters shown; runs the break-glass review queue (filters,
//! context, overdue highlighted, resolve with a note, decisions as CSV); charts the log
//! over an hour to a year; and watches the log's checkpoints (signature and consistency
//! proofs verified, a shrinking log or changed root flagged and kept flagged).

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};

use crate::VisibilityError;

/// Scripts, styles and requests from this origin only; nothing inline, no frames, no forms
/// posting elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const PAGE: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/app.js");
const STYLE: &str = include_str!("../assets/dashboard/app.css");
const PATIENT_PAGE: &str = include_str!("../assets/dashboard/patient.html");
const PATIENT_SCRIPT: &str = include_str!("../assets/dashboard/patient.js");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/vendor/uplot/LICENSE");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The files under `/dashboard/`, by name.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, SCRIPT),
    ("app.css", CSS, STYLE),
    ("patient", HTML, PATIENT_PAGE),
    ("patient.js", JS, PATIENT_SCRIPT),
    ("uplot.js", JS, UPLOT_JS),
    ("uplot.css", CSS, UPLOT_CSS),
    ("uplot-LICENSE.txt", TEXT, UPLOT_LICENSE),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (REFERRER_POLICY, "no-referrer"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`.
/// The auditor dashboard.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    asset(HTML, PAGE)
}

/// `GET /dashboard/{file}`: the dashboard's script and style sheet (`app.js`, `app.css`),
/// the patient's page and script (`patient`, `patient.js`), and the vendored chart
/// library with its licence (`uplot.js`, `uplot.css`, `uplot-LICENSE.txt`).
/// The dashboard's files and the patient's page.
#[utoipa::path(get, path = "/dashboard/{file}", tag = "dashboard",
    params(("file" = String, Path, description = "app.js, app.css, patient, patient.js, uplot.js, uplot.css or uplot-LICENSE.txt")),
    responses((status = 200, description = "The file", body = String),
        service::openapi::NotFound))]
pub(crate) async fn file(Path(name): Path<String>) -> Result<Response, VisibilityError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, body)| asset(content_type, body))
        .ok_or_else(|| VisibilityError::NotFound("no such dashboard file".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_load_only_their_own_assets_and_insert_no_markup() {
        for page in [PAGE, PATIENT_PAGE] {
            assert!(!page.contains("<script>"), "no inline script");
            assert!(!page.contains("style="), "no inline style");
            // No inline event handlers: no ` on<letters>=` attribute.
            for (at, _) in page.match_indices(" on") {
                let name: String = page[at + 3..]
                    .chars()
                    .take_while(char::is_ascii_alphabetic)
                    .collect();
                let after = page[at + 3 + name.len()..].chars().next();
                assert!(after != Some('='), "inline handler on{name}");
            }
            assert!(!page.contains("http://") && !page.contains("https://"));
            for src in page
                .split("src=\"")
                .skip(1)
                .chain(page.split("href=\"").skip(1))
            {
                let url = &src[..src.find('"').unwrap()];
                assert!(
                    url.starts_with("/dashboard") || url.starts_with('#'),
                    "{url}"
                );
            }
        }
        assert!(PAGE.contains(r#"src="/dashboard/app.js""#));
        assert!(PAGE.contains(r#"src="/dashboard/uplot.js""#));
        for script in [SCRIPT, PATIENT_SCRIPT, UPLOT_JS] {
            assert!(!script.contains("innerHTML") && !script.contains("insertAdjacentHTML"));
            assert!(!script.contains("eval(") && !script.contains("document.write"));
            assert!(!script.contains("new Function"));
        }
        assert!(!CSP.contains("unsafe"));
        // The token goes into a header, never a URL, and never into storage.
        assert!(!SCRIPT.contains("localStorage") && !SCRIPT.contains("sessionStorage"));
        assert!(!SCRIPT.contains("?token") && !SCRIPT.contains("&token"));
    }

    /// WCAG 2 relative luminance of `#rrggbb`.
    fn luminance(hex: &str) -> f64 {
        let c = |i: usize| {
            let v = f64::from(u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap()) / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * c(0) + 0.7152 * c(1) + 0.0722 * c(2)
    }

    #[test]
    fn text_colours_meet_wcag_aa_contrast() {
        // (foreground, background) of every text colour in app.css.
        let pairs = [
            ("#1b1b1b", "#ffffff"),
            ("#1b1b1b", "#f3f3f3"),
            ("#1b1b1b", "#eeeeee"),
            ("#1b1b1b", "#fff3cd"),
            ("#1b1b1b", "#fde2e1"),
            ("#1b1b1b", "#ffe08a"),
            ("#333333", "#ffffff"),
            ("#0b4fa8", "#ffffff"),
            ("#a30000", "#ffffff"),
            ("#a30000", "#fde2e1"),
            ("#a30000", "#fff3cd"),
            ("#0a5c0a", "#ffffff"),
            ("#0a5c0a", "#fff3cd"),
            ("#ffffff", "#a3001b"),
            ("#ffffff", "#0a5c0a"),
            ("#595959", "#ffffff"),
            ("#595959", "#fff3cd"),
            ("#6b6b6b", "#f3f3f3"),
        ];
        for (fg, bg) in pairs {
            assert!(
                STYLE.contains(fg) && STYLE.contains(bg),
                "{fg} on {bg} not in app.css"
            );
            let (a, b) = (luminance(fg), luminance(bg));
            let ratio = (a.max(b) + 0.05) / (a.min(b) + 0.05);
            assert!(ratio >= 4.5, "{fg} on {bg}: {ratio:.2}");
        }
    }
}
