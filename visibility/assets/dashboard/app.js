"use strict";
// The auditor dashboard. Every value from the API reaches the DOM through textContent,
// never as markup. The session token lives in this script's memory only: it is sent as a
// bearer header to the auditor API, never put in a URL, and exports are fetched with it
// and handed to the browser as blobs.
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    timer: null,
    busy: false,
    prev: null, // { size, root } of the last checkpoint seen
    alarm: null, // a sticky consistency failure
    logKey: null, // { vkey, name, keyId, publicKey } from /v1/keys, pinned at connect
    reviewRows: new Map(), // event id -> <tr>, kept so typed notes survive a refresh
    reviewQuery: "",
    // Search: the query string without paging, the cursor of each page seen, the rows.
    query: "",
    cursors: [null],
    page: 0,
    rows: [],
    sort: { key: "time", dir: "descending" },
    charts: [],
  };
  const enc = new TextEncoder();
  const dec = new TextDecoder();

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

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  class Unauthorized extends Error {}

  function problemText(status, body, fallback) {
    const detail = body && typeof body === "object" ? (body.detail || body.title) : null;
    return status + ": " + (detail || fallback || "request failed");
  }

  async function request(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + state.token }, opts.headers);
    opts.cache = "no-store";
    opts.credentials = "omit";
    opts.referrerPolicy = "no-referrer";
    opts.signal = AbortSignal.timeout(20000);
    const res = await fetch(path, opts);
    if (res.status === 401) throw new Unauthorized("the session token was refused");
    return res;
  }

  async function api(path, options) {
    const res = await request(path, options);
    const type = res.headers.get("content-type") || "";
    const body = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) throw new Error(problemText(res.status, body, res.statusText));
    return body;
  }

  // ---- search -------------------------------------------------------------------------

  function filterParams() {
    const q = new URLSearchParams();
    const patient = $("f-patient").value.trim();
    if (patient) {
      const kind = $("f-patient-kind").value === "patient_did_digest" ? "patient_did_digest" : "patient_ref";
      q.set(kind, patient);
    }
    const text = [["f-custodian", "custodian"], ["f-requester-org", "requester_org"], ["f-requester", "requester"],
      ["f-from", "from"], ["f-to", "to"]];
    for (const [id, name] of text) {
      const v = $(id).value.trim();
      if (v) q.set(name, v);
    }
    const selects = [["f-purpose", "purpose"], ["f-domain", "domain"], ["f-decision", "decision"],
      ["f-failed-check", "failed_check"], ["f-break-glass", "break_glass"], ["f-review", "review"]];
    for (const [id, name] of selects) {
      const v = $(id).value;
      if (v) q.set(name, v);
    }
    return q;
  }

  function eventValue(item, key) {
    const e = item.event || {};
    switch (key) {
      case "leafIndex": return item.leafIndex;
      case "review": return item.review || "";
      case "breakGlass": return e.breakGlass ? 1 : 0;
      default: return e[key] == null ? "" : e[key];
    }
  }

  function eventRow(item) {
    const e = item.event || {};
    const tr = document.createElement("tr");
    tr.dataset.eventId = e.id || "";
    tr.dataset.decisionId = e.decisionId || "";
    tr.dataset.leaf = String(item.leafIndex);
    if (item.review === "overdue") tr.className = "overdue";
    else if (e.breakGlass) tr.className = "glass";
    cell(tr, item.leafIndex);
    cell(tr, e.time);
    cell(tr, e.custodian);
    cell(tr, e.requesterOrg || "-");
    cell(tr, e.purpose);
    cell(tr, e.domain);
    cell(tr, e.decision === "deny" ? "denied" : "allowed", e.decision === "deny" ? "deny" : "allow");
    cell(tr, e.failedCheck || "-");
    cell(tr, e.breakGlass ? "yes" : "no");
    const review = cell(tr, "");
    if (item.review) review.appendChild(el("span", item.review, "badge " + item.review));
    const open = cell(tr, "");
    const button = el("button", "Details", "details");
    button.type = "button";
    button.setAttribute("aria-label", "Details of leaf " + item.leafIndex);
    button.addEventListener("click", () => openDetail(item.leafIndex));
    open.appendChild(button);
    return tr;
  }

  function renderRows() {
    const { key, dir } = state.sort;
    const rows = state.rows.slice();
    rows.sort((a, b) => {
      const x = eventValue(a, key);
      const y = eventValue(b, key);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return dir === "ascending" ? c : -c;
    });
    const frag = document.createDocumentFragment();
    for (const item of rows) frag.appendChild(eventRow(item));
    const tbody = $("event-rows");
    clear(tbody);
    tbody.appendChild(frag);
    for (const th of document.querySelectorAll("#results th[aria-sort]")) {
      const b = th.querySelector("button.sort");
      th.setAttribute("aria-sort", b && b.dataset.key === key ? dir : "none");
    }
  }

  function sortBy(key) {
    if (state.sort.key === key) {
      state.sort.dir = state.sort.dir === "ascending" ? "descending" : "ascending";
    } else {
      // The rows arrive newest first: a first press on any column sorts it ascending, so
      // that the press always changes what is shown.
      state.sort = { key, dir: "ascending" };
    }
    renderRows();
  }

  async function loadPage() {
    const q = new URLSearchParams(state.query);
    q.set("limit", $("f-limit").value);
    const cursor = state.cursors[state.page];
    if (cursor) q.set("cursor", cursor);
    $("search-status").textContent = "Searching\u2026";
    try {
      const page = await api("/v1/audit/events?" + q.toString());
      state.rows = page.events || [];
      if (page.cursor) state.cursors[state.page + 1] = page.cursor;
      else state.cursors.length = state.page + 1;
      renderRows();
      const limit = Number($("f-limit").value);
      const first = state.page * limit + 1;
      $("page-info").textContent = state.rows.length
        ? "Page " + (state.page + 1) + ": events " + first + "\u2013" + (first + state.rows.length - 1)
        : "Page " + (state.page + 1);
      $("page-newer").disabled = state.page === 0;
      $("page-older").disabled = !page.cursor;
      $("search-status").textContent = state.rows.length + " event(s) on this page" +
        (page.cursor ? "; older events follow." : "; no older events.");
    } catch (err) {
      $("search-status").textContent = "Search refused: " + String(err.message || err);
      if (err instanceof Unauthorized) failed(err);
    }
  }

  function search(ev) {
    if (ev) ev.preventDefault();
    state.query = filterParams().toString();
    state.cursors = [null];
    state.page = 0;
    return loadPage();
  }

  // ---- exports ------------------------------------------------------------------------

  async function download(path, fallbackName) {
    const status = $("export-status");
    status.textContent = "Preparing " + fallbackName + "\u2026";
    try {
      const res = await request(path);
      if (!res.ok) {
        const type = res.headers.get("content-type") || "";
        const body = type.includes("json") ? await res.json() : await res.text();
        throw new Error(problemText(res.status, body, res.statusText));
      }
      const blob = await res.blob();
      const m = /filename="([A-Za-z0-9._-]+)"/.exec(res.headers.get("content-disposition") || "");
      const name = m ? m[1] : fallbackName;
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = url;
      a.download = name;
      a.hidden = true;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      const more = res.headers.get("fedgate-next-cursor");
      status.textContent = "Downloaded " + name + " (" + blob.size + " bytes)" +
        (more ? "; more events match than one file holds: narrow the filters." : ".");
      status.dataset.file = name;
    } catch (err) {
      status.textContent = "Export refused: " + String(err.message || err);
      if (err instanceof Unauthorized) failed(err);
    }
  }

  // One file holds up to 1,000 events (the API's largest page).
  function exportWith(path, name) {
    const q = filterParams();
    q.set("limit", "1000");
    return download(path + "?" + q.toString(), name);
  }

  // ---- hashing, proofs, signatures ------------------------------------------------------

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

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  async function leafHash(bytes) {
    const buf = new Uint8Array(bytes.length + 1);
    buf[0] = 0;
    buf.set(bytes, 1);
    return sha256(buf);
  }

  async function nodeHash(left, right) {
    const buf = new Uint8Array(65);
    buf[0] = 1;
    buf.set(left, 1);
    buf.set(right, 33);
    return sha256(buf);
  }

  // RFC 9162 section 2.1.3.2; sizes stay far below 2^53, so plain numbers do.
  async function verifyInclusion(index, size, leaf, proof, root) {
    if (index >= size) return false;
    let fn = index;
    let sn = size - 1;
    let r = leaf;
    for (const p of proof) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) {
            fn = Math.floor(fn / 2);
            sn = Math.floor(sn / 2);
          }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 && equal(r, root);
  }

  // RFC 9162 section 2.1.4.2.
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

  // A C2SP signed note: body lines, a blank line, signature lines "— name base64".
  function parseCheckpoint(note) {
    const blank = note.indexOf("\n\n");
    if (blank < 0) throw new Error("malformed checkpoint: no signature block");
    const body = note.slice(0, blank + 1);
    const lines = body.split("\n");
    if (lines.length < 4 || !/^[0-9]+$/.test(lines[1])) throw new Error("malformed checkpoint");
    const size = Number(lines[1]);
    const root = b64(lines[2]);
    if (!Number.isSafeInteger(size) || root.length !== 32) throw new Error("malformed checkpoint");
    const signatures = [];
    for (const line of note.slice(blank + 2).split("\n")) {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (m) signatures.push({ name: m[1], blob: b64(m[2]) });
    }
    return { origin: lines[0], size, root, body, signatures };
  }

  // A note verifier key: name+hexkeyid+base64(0x01 || Ed25519 public key).
  function parseVkey(vkey) {
    const first = vkey.indexOf("+");
    const second = vkey.indexOf("+", first + 1);
    if (first < 1 || second < 0) throw new Error("malformed verifier key");
    const name = vkey.slice(0, first);
    const keyId = vkey.slice(first + 1, second);
    const raw = b64(vkey.slice(second + 1));
    if (!/^[0-9a-f]{8}$/.test(keyId) || raw.length !== 33 || raw[0] !== 1) throw new Error("malformed verifier key");
    return { vkey, name, keyId, publicKey: raw.slice(1) };
  }

  // Whether the note carries a valid Ed25519 signature by `key`: the line naming it,
  // with its key id, over the body. null when this browser has no Ed25519.
  async function verifyNoteSignature(cp, key) {
    const line = cp.signatures.find((s) => s.name === key.name && s.blob.length === 68 && toHex(s.blob.slice(0, 4)) === key.keyId);
    if (!line) return false;
    let k;
    try {
      k = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, ["verify"]);
    } catch (_) {
      return null;
    }
    return crypto.subtle.verify({ name: "Ed25519" }, k, line.blob.slice(4), enc.encode(cp.body));
  }

  // ---- one event in detail --------------------------------------------------------------

  function field(dl, name, value) {
    if (value == null || value === "" || (Array.isArray(value) && value.length === 0)) return;
    dl.appendChild(el("dt", name));
    dl.appendChild(el("dd", Array.isArray(value) ? value.join(", ") : value));
  }

  function step(text, ok) {
    const li = el("li", (ok ? "\u2713 " : "\u2717 ") + text, ok ? "good" : "bad");
    $("proof-steps").appendChild(li);
    return ok;
  }

  async function openDetail(leafIndex) {
    const box = $("detail");
    box.hidden = false;
    $("detail-leaf").textContent = "at leaf " + leafIndex;
    clear($("detail-fields"));
    clear($("proof-steps"));
    clear($("detail-notes"));
    $("detail-notes-box").hidden = true;
    const status = $("proof-status");
    status.className = "";
    status.textContent = "Fetching the leaf and its proof\u2026";
    box.focus();
    try {
      const d = await api("/v1/audit/leaves/" + encodeURIComponent(String(leafIndex)));
      // What is shown is what was hashed: the leaf's own bytes, parsed here.
      const bytes = b64(d.leaf);
      const entry = JSON.parse(dec.decode(bytes));
      const dl = $("detail-fields");
      if (entry.kind === "access") {
        const e = entry.event || {};
        field(dl, "Event id", e.id);
        field(dl, "Time", e.time);
        field(dl, "Custodian", e.custodian);
        field(dl, "Requester organization", e.requesterOrg);
        field(dl, "Requester", e.requester);
        field(dl, "Patient reference", e.patientRef);
        field(dl, "Patient DID digests", e.patientDidDigests);
        field(dl, "Domain", e.domain);
        field(dl, "Purpose", e.purpose);
        field(dl, "Data classes", e.dataClasses);
        field(dl, "Records", e.recordCount);
        field(dl, "Decision", e.decision === "deny" ? "denied" : "allowed");
        field(dl, "Failing check", e.failedCheck);
        field(dl, "Reasons", e.reasons);
        field(dl, "Break-glass", e.breakGlass ? "yes" : null);
        field(dl, "Justification", e.justification);
        field(dl, "Review", d.review ? d.review + " (due " + d.reviewDue + ")" : null);
        field(dl, "Decision id", e.decisionId);
        field(dl, "Policy digest", e.policyDigest);
        if (e.privacy) field(dl, "Privacy budget", e.privacy.study + ": \u03b5 " + e.privacy.epsilonMicro / 1e6 + " spent, " + e.privacy.budgetLeftMicro / 1e6 + " left");
      } else {
        field(dl, "Kind", "break-glass review resolution");
        field(dl, "Event id", entry.event_id);
        field(dl, "Resolved by", entry.resolved_by);
        field(dl, "Note digest", entry.note_digest);
        field(dl, "Time", entry.time);
      }
      for (const n of d.notes || []) {
        $("detail-notes-box").hidden = false;
        $("detail-notes").appendChild(el("li", n.time + " by " + n.resolvedBy + ": " + n.note));
      }
      status.textContent = "Verifying in this browser\u2026";
      const ok = await verifyDetail(d, bytes);
      status.textContent = ok
        ? "Verified in this browser: leaf " + d.leafIndex + " is in the log of " + d.treeSize + " entries whose checkpoint is signed by the log."
        : "NOT VERIFIED: see the failed step below.";
      status.className = ok ? "good" : "bad";
    } catch (err) {
      status.textContent = "NOT VERIFIED: " + String(err.message || err);
      status.className = "bad";
      if (err instanceof Unauthorized) failed(err);
    }
  }

  async function verifyDetail(d, bytes) {
    const leaf = await leafHash(bytes);
    step("Leaf hash SHA-256(0x00 \u2016 leaf, " + bytes.length + " bytes) = " + toHex(leaf), true);
    const cp = parseCheckpoint(d.checkpoint);
    if (!step("The checkpoint is for tree size " + cp.size + " with root " + toHex(cp.root), cp.size === d.treeSize)) return false;
    const proof = (d.proof || []).map(hexBytes);
    const included = await verifyInclusion(d.leafIndex, cp.size, leaf, proof, cp.root);
    if (!step("RFC 9162 inclusion proof: " + proof.length + " hashes lead from the leaf to that root", included)) return false;
    const key = parseVkey(d.checkpointVerifierKey);
    const pinned = state.logKey && state.logKey.vkey === key.vkey;
    if (!step("The checkpoint key " + key.name + " (key id " + key.keyId + ") is the one this page pinned from /v1/keys", !!pinned)) return false;
    const signed = await verifyNoteSignature(cp, key);
    if (signed === null) {
      step("This browser cannot verify Ed25519 signatures: the checkpoint signature was not checked", false);
      return false;
    }
    return step("Ed25519 signature of the checkpoint by " + key.name + " verified (WebCrypto)", signed);
  }

  // ---- reviews ------------------------------------------------------------------------

  function reviewRow(item) {
    const e = item.event || {};
    const tr = document.createElement("tr");
    tr.dataset.eventId = e.id || "";
    if (item.overdue) tr.className = "overdue";
    const st = cell(tr, "");
    st.appendChild(el("span", item.overdue ? "OVERDUE" : "awaiting", "badge " + (item.overdue ? "overdue" : "pending")));
    cell(tr, e.time);
    cell(tr, item.reviewDue || "-");
    cell(tr, e.custodian);
    cell(tr, e.requesterOrg || "-");
    cell(tr, e.requester || "-", "mono");
    cell(tr, e.purpose);
    cell(tr, (e.dataClasses || []).join(", "));
    cell(tr, e.recordCount);
    cell(tr, e.justification || "");
    const noteCell = cell(tr, "");
    const note = document.createElement("input");
    note.type = "text";
    note.className = "note";
    note.maxLength = 4000;
    note.placeholder = "review note";
    note.setAttribute("aria-label", "Review note for the access at " + e.time);
    noteCell.appendChild(note);
    const buttonCell = cell(tr, "");
    const button = el("button", "Resolve", "resolve");
    button.type = "button";
    button.addEventListener("click", () => resolve(e.id, note, button));
    note.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") resolve(e.id, note, button);
    });
    buttonCell.appendChild(button);
    return tr;
  }

  function reviewParams() {
    const q = new URLSearchParams();
    const c = $("r-custodian").value.trim();
    const o = $("r-requester-org").value.trim();
    if (c) q.set("custodian", c);
    if (o) q.set("requester_org", o);
    if ($("r-overdue").checked) q.set("overdue", "true");
    return q.toString();
  }

  async function refreshReviews() {
    const q = state.reviewQuery;
    const body = await api("/v1/audit/reviews" + (q ? "?" + q : ""));
    const items = body.reviews || [];
    const tbody = $("review-rows");
    const seen = new Set();
    for (const item of items) {
      const id = item.event && item.event.id;
      if (!id) continue;
      seen.add(id);
      const old = state.reviewRows.get(id);
      if (!old) {
        const tr = reviewRow(item);
        state.reviewRows.set(id, tr);
        tbody.appendChild(tr);
      } else if (item.overdue && !old.classList.contains("overdue")) {
        old.classList.add("overdue");
        const badge = old.querySelector(".badge");
        if (badge) {
          badge.textContent = "OVERDUE";
          badge.className = "badge overdue";
        }
      }
    }
    for (const [id, tr] of state.reviewRows) {
      if (!seen.has(id)) {
        tr.remove();
        state.reviewRows.delete(id);
      }
    }
    const overdue = items.filter((i) => i.overdue).length;
    $("review-count").textContent = "(" + state.reviewRows.size + (overdue ? ", " + overdue + " overdue" : "") + ")";
    $("review-table").hidden = state.reviewRows.size === 0;
    $("review-empty").hidden = state.reviewRows.size !== 0;
  }

  function filterReviews(ev) {
    ev.preventDefault();
    state.reviewQuery = reviewParams();
    for (const tr of state.reviewRows.values()) tr.remove();
    state.reviewRows.clear();
    refreshReviews().catch(failed);
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

  // ---- charts -------------------------------------------------------------------------

  const PALETTE = ["#1a56db", "#a3001b", "#0a7c3a", "#8a4b00", "#6b2fa3", "#00707a", "#b0006a", "#4a4a4a"];

  function seconds(labels) {
    return labels.map((t) => Math.floor(Date.parse(t) / 1000));
  }

  function lineChart(target, labels, seriesMap, bars) {
    const names = Object.keys(seriesMap);
    const data = [seconds(labels)];
    const series = [{}];
    names.forEach((name, i) => {
      data.push(seriesMap[name]);
      const s = { label: name, stroke: PALETTE[i % PALETTE.length], width: 2 };
      if (bars && window.uPlot.paths && window.uPlot.paths.bars) {
        s.paths = window.uPlot.paths.bars({ size: [0.6 / names.length, 60], align: 0 });
        s.fill = PALETTE[i % PALETTE.length];
      }
      series.push(s);
    });
    const box = $(target);
    clear(box);
    const total = names.map((n) => n + ": " + seriesMap[n].reduce((a, b) => a + b, 0)).join("; ");
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", total ? "Totals in the range: " + total : "No events in the range");
    if (!names.length) {
      box.appendChild(el("p", "No events in this range.", "hint"));
      return;
    }
    const width = Math.max(320, box.clientWidth || 560);
    const chart = new window.uPlot({ width, height: 220, series, axes: [{}, { size: 50 }], scales: { x: { time: true } } }, data, box);
    state.charts.push(chart);
  }

  function barRows(tbody, rows, deny) {
    clear(tbody);
    const max = Math.max(1, ...rows.map((r) => r[1]));
    for (const [label, n, extra] of rows) {
      const tr = document.createElement("tr");
      cell(tr, label, "mono");
      cell(tr, n + (extra ? " (" + extra + ")" : ""));
      const bar = cell(tr, "", "bar");
      const fill = el("span", null, deny ? "fill deny" : "fill");
      fill.style.width = (100 * n / max).toFixed(1) + "%";
      bar.appendChild(fill);
      tbody.appendChild(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      cell(tr, "none in this range", "hint");
      tbody.appendChild(tr);
    }
  }

  async function drawCharts(ev) {
    if (ev) ev.preventDefault();
    const hours = Number($("c-range").value) || 720;
    const to = new Date();
    const from = new Date(to.getTime() - hours * 3600 * 1000);
    const q = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
    const c = $("c-custodian").value.trim();
    if (c) q.set("custodian", c);
    $("chart-status").textContent = "Counting\u2026";
    try {
      const s = await api("/v1/audit/stats?" + q.toString());
      for (const chart of state.charts) chart.destroy();
      state.charts = [];
      if (!window.uPlot) throw new Error("the chart library did not load");
      lineChart("chart-custodian", s.buckets, s.byCustodian || {});
      lineChart("chart-decision", s.buckets, s.byDecision || {});
      lineChart("chart-checks", s.buckets, s.denialsByCheckOverTime || {});
      const g = s.breakGlassWeekly || { weeks: [], count: [], unreviewedOverdue: [] };
      lineChart("chart-glass", g.weeks, { "break-glass": g.count, "unreviewed past deadline": g.unreviewedOverdue }, true);
      barRows($("denials-rows"), Object.entries(s.denialsByCheck || {}).sort((a, b) => b[1] - a[1]), true);
      barRows($("orgs-rows"), (s.topRequesterOrgs || []).map((o) => [o.org, o.count, o.denied + " denied"]), false);
      const privacy = s.privacy || [];
      const tbody = $("privacy-rows");
      clear(tbody);
      for (const p of privacy) {
        const tr = document.createElement("tr");
        cell(tr, p.study, "mono");
        cell(tr, p.custodian, "mono");
        cell(tr, p.queries);
        cell(tr, (p.epsilonSpentMicro / 1e6).toFixed(3));
        cell(tr, (p.budgetLeftMicro / 1e6).toFixed(3));
        tbody.appendChild(tr);
      }
      $("privacy-table").hidden = privacy.length === 0;
      $("privacy-empty").hidden = privacy.length !== 0;
      $("chart-status").textContent = "Charted " + s.counted + " event(s) from " + s.from + " to " + s.to +
        " by " + s.bucket + (s.truncated ? " (the log is larger than one count covers: narrow the range)" : "") + ".";
    } catch (err) {
      $("chart-status").textContent = "Charts refused: " + String(err.message || err);
      if (err instanceof Unauthorized) failed(err);
    }
  }

  // ---- checkpoint and consistency -----------------------------------------------------

  function showConsistency(text, good) {
    const dd = $("log-consistency");
    dd.textContent = text;
    dd.className = good ? "good" : "bad";
  }

  async function pinLogKey() {
    const res = await fetch("/v1/keys", { cache: "no-store", credentials: "omit", signal: AbortSignal.timeout(10000) });
    if (!res.ok) throw new Error("keys: " + res.status);
    const body = await res.json();
    state.logKey = parseVkey(body.checkpointVerifierKey);
    $("log-signer").textContent = state.logKey.vkey;
  }

  async function refreshCheckpoint() {
    if (!state.logKey) await pinLogKey();
    const res = await fetch("/v1/checkpoint", { cache: "no-store", credentials: "omit", signal: AbortSignal.timeout(10000) });
    if (!res.ok) throw new Error("checkpoint: " + res.status);
    const note = await res.text();
    const cp = parseCheckpoint(note);
    $("checkpoint").textContent = note;
    $("log-size").textContent = String(cp.size);
    $("log-root").textContent = toHex(cp.root);
    $("log-checked").textContent = new Date().toISOString();
    const signed = await verifyNoteSignature(cp, state.logKey);
    const sig = $("log-signature");
    sig.textContent = signed === null ? "not checked (no Ed25519 in this browser)" : signed ? "Ed25519 signature verified" : "SIGNATURE DOES NOT VERIFY";
    sig.className = signed ? "good" : "bad";
    if (signed === false) state.alarm = state.alarm || "the checkpoint's signature does not verify";
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
      await Promise.all([refreshReviews(), refreshCheckpoint()]);
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
    $("nav").hidden = false;
    $("connect").hidden = true;
    $("disconnect").hidden = false;
    $("token").disabled = true;
    setStatus("Connecting\u2026", false);
    if (state.timer) clearInterval(state.timer);
    state.timer = setInterval(tick, 2000);
    tick();
    search();
    drawCharts();
  }

  function disconnect() {
    state.token = null;
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
    $("main").hidden = true;
    $("nav").hidden = true;
    $("connect").hidden = false;
    $("disconnect").hidden = true;
    $("token").disabled = false;
    for (const tr of state.reviewRows.values()) tr.remove();
    state.reviewRows.clear();
    state.rows = [];
    clear($("event-rows"));
    $("detail").hidden = true;
    setStatus("Disconnected.", false);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      connect($("token").value);
    });
    $("disconnect").addEventListener("click", disconnect);
    $("filters").addEventListener("submit", search);
    $("reset-button").addEventListener("click", () => {
      $("filters").reset();
      search();
    });
    $("page-older").addEventListener("click", () => {
      if (!state.cursors[state.page + 1]) return;
      state.page += 1;
      loadPage();
    });
    $("page-newer").addEventListener("click", () => {
      if (state.page === 0) return;
      state.page -= 1;
      loadPage();
    });
    for (const b of document.querySelectorAll("#results button.sort")) {
      b.addEventListener("click", () => sortBy(b.dataset.key));
    }
    $("detail-close").addEventListener("click", () => {
      $("detail").hidden = true;
      const row = document.querySelector("#event-rows button.details");
      if (row) row.focus();
    });
    $("export-fhir").addEventListener("click", () => exportWith("/v1/audit/export", "audit-events.fhir.json"));
    $("export-csv").addEventListener("click", () => exportWith("/v1/audit/export/csv", "audit-events.csv"));
    $("export-evidence").addEventListener("click", () => exportWith("/v1/audit/evidence", "evidence.json"));
    $("export-decisions").addEventListener("click", () => download("/v1/audit/reviews/decisions", "review-decisions.csv"));
    $("review-filters").addEventListener("submit", filterReviews);
    $("chart-form").addEventListener("submit", drawCharts);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && !$("detail").hidden) $("detail-close").click();
    });
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
