//! The auditor dashboard: one static page (`GET /dashboard`) with its script and style
//! sheet served beside it (`/dashboard/app.js`, `/dashboard/app.css`), so that the page
//! runs under a strict Content-Security-Policy with no inline code at all.
//!
//! The page holds nothing secret of its own: the auditor pastes a session token (or opens
//! the page with `#token=...`, which the script reads and then removes from the address
//! bar); the token stays in the script's memory and is sent as a bearer token to the same
//! auditor API any other client uses. Every value from the API reaches the DOM through
//! `textContent`, never as markup.
//!
//! What it shows: the latest events (polled every second, newest first; no patient data),
//! the break-glass review queue with a note and a Resolve button per item, a per-patient
//! history query, and the log's size and checkpoint. When the size grows the script asks
//! for a consistency proof between the previous and the new checkpoint and verifies it
//! (RFC 6962 / RFC 9162 §2.1.4.2, SHA-256 by WebCrypto); a shrinking log, a changed root
//! at the same size or a proof that does not verify is flagged and stays flagged. The
//! checkpoint's signature is not verified in the page.

use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

/// Scripts, styles and requests from this origin only; nothing inline, no frames, no forms
/// posting elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CONTENT_SECURITY_POLICY, CSP)],
        body,
    )
        .into_response()
}

/// `GET /dashboard`.
/// The auditor dashboard.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`.
/// The dashboard's script.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard",
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript")))]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`.
/// The dashboard's style sheet.
#[utoipa::path(get, path = "/dashboard/app.css", tag = "dashboard",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css")))]
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>fedgate visibility: auditor dashboard</title>
<link rel="stylesheet" href="/dashboard/app.css">
<script src="/dashboard/app.js" defer></script>
</head>
<body>
<header>
  <h1>Auditor dashboard</h1>
  <form id="login" autocomplete="off">
    <label for="token">Session token</label>
    <input id="token" name="token" type="password" autocomplete="off" spellcheck="false">
    <button id="connect" type="submit">Connect</button>
    <button id="disconnect" type="button" hidden>Disconnect</button>
  </form>
  <p id="status" role="status">Not connected. Open an auditor session (POST /v1/audit/sessions) and paste its token.</p>
</header>
<main id="main" hidden>
  <section id="log">
    <h2>Log</h2>
    <dl>
      <dt>Size</dt><dd id="log-size">-</dd>
      <dt>Root</dt><dd id="log-root" class="mono">-</dd>
      <dt>Consistency</dt><dd id="log-consistency">-</dd>
      <dt>Checked</dt><dd id="log-checked">-</dd>
    </dl>
    <details><summary>Last checkpoint</summary><pre id="checkpoint"></pre></details>
  </section>
  <section id="reviews">
    <h2>Break-glass reviews <span id="review-count" class="count"></span></h2>
    <p id="review-notice" role="status"></p>
    <p id="review-empty">No break-glass access awaits review.</p>
    <table id="review-table" hidden>
      <thead><tr><th>Time</th><th>Custodian</th><th>Requester org</th><th>Purpose</th><th>Justification</th><th>Expires</th><th>Note</th><th></th></tr></thead>
      <tbody id="review-rows"></tbody>
    </table>
  </section>
  <section id="stream">
    <h2>Events <span class="hint">(latest 50, newest first, every second)</span></h2>
    <table>
      <thead><tr><th>Leaf</th><th>Time</th><th>Custodian</th><th>Requester org</th><th>Purpose</th><th>Decision</th><th>Break-glass</th><th>Decision id</th></tr></thead>
      <tbody id="event-rows"></tbody>
    </table>
  </section>
  <section id="patient">
    <h2>Patient history</h2>
    <form id="patient-form" autocomplete="off">
      <select id="patient-kind">
        <option value="patient_ref">Patient reference</option>
        <option value="patient_did_digest">Patient DID digest</option>
      </select>
      <input id="patient-value" type="text" spellcheck="false">
      <button type="submit">Search</button>
    </form>
    <p id="patient-status"></p>
    <table>
      <thead><tr><th>Leaf</th><th>Time</th><th>Custodian</th><th>Requester org</th><th>Purpose</th><th>Decision</th><th>Break-glass</th><th>Decision id</th></tr></thead>
      <tbody id="patient-rows"></tbody>
    </table>
  </section>
</main>
</body>
</html>
"#;

const STYLE: &str = r"body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #1b1b1b; }
h1 { font-size: 1.4em; }
h2 { font-size: 1.1em; margin-top: 1.5em; }
header form { display: flex; gap: .5em; align-items: center; }
#token { width: 28em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.mono, pre { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: .5em; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
dd { margin: 0; }
.deny { color: #a00; font-weight: 600; }
.allow { color: #070; }
.glass { background: #fff3cd; }
.bad { color: #fff; background: #b00; padding: 0 .3em; }
.good { color: #070; }
.hint, .count { color: #666; font-weight: normal; font-size: .9em; }
#status.error { color: #a00; }
";

const SCRIPT: &str = r#""use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    timer: null,
    busy: false,
    prev: null, // { size, root (Uint8Array) } of the last checkpoint seen
    alarm: null, // a sticky consistency failure
    reviewRows: new Map(), // event id -> <tr>, kept so typed notes survive a refresh
  };

  function setStatus(text, error) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!error);
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  class Unauthorized extends Error {}

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + state.token }, opts.headers);
    opts.cache = "no-store";
    opts.credentials = "omit";
    opts.signal = AbortSignal.timeout(10000);
    const res = await fetch(path, opts);
    if (res.status === 401) throw new Unauthorized("the session token was refused");
    const type = res.headers.get("content-type") || "";
    const body = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) {
      const detail = body && typeof body === "object" ? (body.detail || body.title) : body;
      throw new Error(res.status + ": " + (detail || res.statusText));
    }
    return body;
  }

  // ---- events -------------------------------------------------------------------------

  function eventRow(item) {
    const e = item.event || {};
    const tr = document.createElement("tr");
    tr.dataset.eventId = e.id || "";
    tr.dataset.decisionId = e.decisionId || "";
    if (e.breakGlass) tr.className = "glass";
    cell(tr, item.leafIndex);
    cell(tr, e.time);
    cell(tr, e.custodian);
    cell(tr, e.requesterOrg || "-");
    cell(tr, e.purpose);
    cell(tr, e.decision, e.decision === "deny" ? "deny" : "allow");
    cell(tr, e.breakGlass ? "yes" : "no");
    cell(tr, e.decisionId, "mono");
    return tr;
  }

  function renderEvents(tbody, events) {
    const frag = document.createDocumentFragment();
    for (const item of events) frag.appendChild(eventRow(item));
    clear(tbody);
    tbody.appendChild(frag);
  }

  async function refreshEvents() {
    const page = await api("/v1/audit/events?limit=50");
    renderEvents($("event-rows"), page.events || []);
  }

  // ---- reviews ------------------------------------------------------------------------

  function reviewRow(item) {
    const e = item.event || {};
    const tr = document.createElement("tr");
    tr.dataset.eventId = e.id || "";
    cell(tr, e.time);
    cell(tr, e.custodian);
    cell(tr, e.requesterOrg || "-");
    cell(tr, e.purpose);
    cell(tr, e.justification || "");
    cell(tr, e.expiresAt || "-");
    const noteCell = cell(tr, "");
    const note = document.createElement("input");
    note.type = "text";
    note.className = "note";
    note.maxLength = 4000;
    note.placeholder = "review note";
    noteCell.appendChild(note);
    const buttonCell = cell(tr, "");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "resolve";
    button.textContent = "Resolve";
    button.addEventListener("click", () => resolve(e.id, note, button));
    buttonCell.appendChild(button);
    return tr;
  }

  async function refreshReviews() {
    const body = await api("/v1/audit/reviews");
    const items = body.reviews || [];
    const tbody = $("review-rows");
    const seen = new Set();
    for (const item of items) {
      const id = item.event && item.event.id;
      if (!id) continue;
      seen.add(id);
      if (!state.reviewRows.has(id)) {
        const tr = reviewRow(item);
        state.reviewRows.set(id, tr);
        tbody.appendChild(tr);
      }
    }
    for (const [id, tr] of state.reviewRows) {
      if (!seen.has(id)) {
        tr.remove();
        state.reviewRows.delete(id);
      }
    }
    $("review-count").textContent = "(" + state.reviewRows.size + ")";
    $("review-table").hidden = state.reviewRows.size === 0;
    $("review-empty").hidden = state.reviewRows.size !== 0;
  }

  async function resolve(eventId, noteInput, button) {
    const note = noteInput.value.trim();
    const notice = $("review-notice");
    if (!note) {
      notice.textContent = "A note is required to resolve a review.";
      noteInput.focus();
      return;
    }
    button.disabled = true;
    try {
      const done = await api("/v1/audit/reviews/" + encodeURIComponent(eventId) + "/resolve", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ note }),
      });
      notice.textContent = "Resolved " + eventId + " (review leaf " + done.leafIndex + ").";
      await refreshReviews();
    } catch (err) {
      button.disabled = false;
      notice.textContent = "Could not resolve " + eventId + ": " + String(err.message || err);
      if (err instanceof Unauthorized) failed(err);
    }
  }

  // ---- checkpoint and consistency -----------------------------------------------------

  function b64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function hexBytes(text) {
    if (!/^[0-9a-f]{64}$/i.test(text)) throw new Error("a proof hash is not 32 bytes of hex");
    const out = new Uint8Array(32);
    for (let i = 0; i < 32; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
    return out;
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  async function nodeHash(left, right) {
    const buf = new Uint8Array(65);
    buf[0] = 1;
    buf.set(left, 1);
    buf.set(right, 33);
    return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
  }

  // RFC 9162 section 2.1.4.2; sizes stay far below 2^53, so plain numbers do.
  async function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
    if (oldSize > newSize) return false;
    if (oldSize === newSize) return proof.length === 0 && equal(oldRoot, newRoot);
    if (oldSize === 0) return true;
    const path = (oldSize & (oldSize - 1)) === 0 ? [oldRoot].concat(proof) : proof.slice();
    if (path.length === 0) return false;
    let fn = oldSize - 1;
    let sn = newSize - 1;
    while (fn % 2 === 1) {
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    let fr = path[0];
    let sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) {
            fn = Math.floor(fn / 2);
            sn = Math.floor(sn / 2);
          }
        }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 && equal(fr, oldRoot) && equal(sr, newRoot);
  }

  function parseCheckpoint(note) {
    const lines = note.split("\n");
    if (lines.length < 3 || !/^[0-9]+$/.test(lines[1])) throw new Error("malformed checkpoint");
    const size = Number(lines[1]);
    const root = b64(lines[2]);
    if (!Number.isSafeInteger(size) || root.length !== 32) throw new Error("malformed checkpoint");
    return { origin: lines[0], size, root };
  }

  function showConsistency(text, good) {
    const dd = $("log-consistency");
    dd.textContent = text;
    dd.className = good ? "good" : "bad";
  }

  async function refreshCheckpoint() {
    const res = await fetch("/v1/checkpoint", { cache: "no-store", credentials: "omit", signal: AbortSignal.timeout(10000) });
    if (!res.ok) throw new Error("checkpoint: " + res.status);
    const note = await res.text();
    const cp = parseCheckpoint(note);
    $("checkpoint").textContent = note;
    $("log-size").textContent = String(cp.size);
    $("log-root").textContent = toHex(cp.root);
    $("log-checked").textContent = new Date().toISOString();
    const prev = state.prev;
    if (state.alarm) {
      showConsistency(state.alarm, false);
    } else if (!prev) {
      showConsistency("first checkpoint seen at size " + cp.size, true);
    } else if (cp.size < prev.size) {
      state.alarm = "LOG SHRANK from " + prev.size + " to " + cp.size;
    } else if (cp.size === prev.size) {
      if (!equal(cp.root, prev.root)) state.alarm = "ROOT CHANGED at size " + cp.size;
    } else if (prev.size === 0) {
      showConsistency("grew from 0 to " + cp.size, true);
    } else {
      const proof = await fetch(
        "/v1/proofs/consistency?old=" + prev.size + "&new=" + cp.size,
        { cache: "no-store", credentials: "omit", signal: AbortSignal.timeout(10000) },
      );
      if (!proof.ok) throw new Error("consistency proof " + prev.size + "->" + cp.size + ": " + proof.status);
      const body = await proof.json();
      const hashes = (body.proof || []).map(hexBytes);
      if (await verifyConsistency(prev.size, cp.size, prev.root, cp.root, hashes)) {
        showConsistency("verified " + prev.size + " \u2192 " + cp.size + " (" + hashes.length + " hashes)", true);
      } else {
        state.alarm = "INCONSISTENT: the proof " + prev.size + " \u2192 " + cp.size + " does not verify";
      }
    }
    if (state.alarm) {
      showConsistency(state.alarm, false);
      return; // keep the last good checkpoint as the reference
    }
    state.prev = { size: cp.size, root: cp.root };
  }

  // ---- patient history ----------------------------------------------------------------

  async function searchPatient(ev) {
    ev.preventDefault();
    const kind = $("patient-kind").value === "patient_did_digest" ? "patient_did_digest" : "patient_ref";
    const value = $("patient-value").value.trim();
    if (!value) return;
    const q = new URLSearchParams();
    q.set(kind, value);
    q.set("limit", "1000");
    $("patient-status").textContent = "Searching\u2026";
    try {
      const page = await api("/v1/audit/events?" + q.toString());
      const events = page.events || [];
      renderEvents($("patient-rows"), events);
      $("patient-status").textContent =
        events.length + " event(s)" + (page.next != null ? " (more before leaf " + page.next + ")" : "");
    } catch (err) {
      $("patient-status").textContent = String(err.message || err);
      if (err instanceof Unauthorized) failed(err);
    }
  }

  // ---- session and polling ------------------------------------------------------------

  function failed(err) {
    if (err instanceof Unauthorized) {
      disconnect();
      setStatus("Session refused or expired: paste a new token.", true);
    } else {
      setStatus("Error: " + String(err && err.message ? err.message : err), true);
    }
  }

  async function tick() {
    if (state.busy || !state.token) return;
    state.busy = true;
    try {
      await Promise.all([refreshEvents(), refreshReviews(), refreshCheckpoint()]);
      setStatus("Connected; updated " + new Date().toLocaleTimeString(), false);
    } catch (err) {
      failed(err);
    } finally {
      state.busy = false;
    }
  }

  function connect(token) {
    token = (token || "").trim();
    if (!token) return;
    state.token = token;
    $("token").value = "";
    $("main").hidden = false;
    $("connect").hidden = true;
    $("disconnect").hidden = false;
    $("token").disabled = true;
    setStatus("Connecting\u2026", false);
    if (state.timer) clearInterval(state.timer);
    state.timer = setInterval(tick, 1000);
    tick();
  }

  function disconnect() {
    state.token = null;
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
    $("main").hidden = true;
    $("connect").hidden = false;
    $("disconnect").hidden = true;
    $("token").disabled = false;
    for (const tr of state.reviewRows.values()) tr.remove();
    state.reviewRows.clear();
    clear($("event-rows"));
    clear($("patient-rows"));
    setStatus("Disconnected.", false);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      connect($("token").value);
    });
    $("disconnect").addEventListener("click", disconnect);
    $("patient-form").addEventListener("submit", searchPatient);
    // A token handed over in the fragment is taken, then removed from the address bar
    // and the history entry (the fragment never reaches the server).
    takeFragmentToken();
  });
  window.addEventListener("hashchange", takeFragmentToken);

  function takeFragmentToken() {
    const m = /^#token=([^&]+)/.exec(location.hash);
    if (m) {
      history.replaceState(null, "", location.pathname + location.search);
      if (state.token) disconnect();
      connect(decodeURIComponent(m[1]));
    }
  }
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets_and_inserts_no_markup() {
        assert!(PAGE.contains(r#"src="/dashboard/app.js""#));
        assert!(PAGE.contains(r#"href="/dashboard/app.css""#));
        assert!(!PAGE.contains("<script>"), "no inline script");
        assert!(!PAGE.contains("style="), "no inline style");
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
        assert!(!SCRIPT.contains("eval(") && !SCRIPT.contains("document.write"));
        assert!(!CSP.contains("unsafe"));
    }
}
