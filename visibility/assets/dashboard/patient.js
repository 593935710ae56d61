"use strict";
// The patient's own history, in plain language. The presentation is sent once to
// POST /v1/patients/history and kept nowhere; every value reaches the page as text.
(() => {
  const $ = (id) => document.getElementById(id);

  const PURPOSES = {
    TREAT: "to treat you",
    ETREAT: "to treat you in an emergency",
    BTG: "in an emergency (break-the-glass)",
    HPAYMT: "for payment of your care",
    HOPERAT: "for the hospital's own operations",
    HRESCH: "for a research study",
    CAREMGT: "to coordinate your care",
    PUBHLTH: "for public health",
    HSYSADMIN: "to administer their systems",
    PATRQT: "because you asked for it",
    COVERAGE: "to check your insurance coverage",
    CLMATTCH: "for an insurance claim",
  };
  const DOMAINS = {
    clinical: "your medical records",
    billing: "your billing records",
    research: "research figures that included you",
    consent: "your consent choices",
    detokenize: "an identifier of yours that had been hidden",
  };
  const CLASSES = {
    Patient: "your personal details",
    Observation: "test results and measurements",
    Condition: "diagnoses",
    MedicationRequest: "prescriptions",
    MedicationStatement: "medicines",
    Encounter: "visits",
    Procedure: "procedures",
    AllergyIntolerance: "allergies",
    Immunization: "vaccinations",
    DiagnosticReport: "reports",
    DocumentReference: "documents",
  };

  // did:web:hospital-b.example -> hospital-b.example; other DIDs are shortened.
  function org(did) {
    if (!did) return "an unknown organization";
    if (did.startsWith("did:web:")) return decodeURIComponent(did.slice(8).split(":")[0]);
    return did.length > 24 ? did.slice(0, 20) + "\u2026" : did;
  }

  function when(t) {
    const d = new Date(t);
    if (Number.isNaN(d.getTime())) return String(t);
    return d.toLocaleString(undefined, { dateStyle: "long", timeStyle: "short" });
  }

  function sentence(e) {
    const who = e.requesterOrg ? "Someone at " + org(e.requesterOrg) : "A requester";
    const what = e.dataClasses && e.dataClasses.length
      ? e.dataClasses.map((c) => CLASSES[c] || c).join(", ")
      : DOMAINS[e.domain] || "your records";
    const why = PURPOSES[e.purpose] || "for the purpose coded " + e.purpose;
    const holder = org(e.custodian);
    const allowed = e.decision === "allow";
    let text = when(e.time) + ": " + who + " asked " + holder + " for " + what + " " + why + ". ";
    if (allowed) {
      text += holder + " allowed it" + (e.recordCount ? " and shared " + e.recordCount + " record" + (e.recordCount === 1 ? "" : "s") : "") + ".";
    } else {
      text += holder + " refused it" + (e.failedCheck ? " (the requester's credentials failed a check)" : "") + ".";
    }
    return text;
  }

  async function getChallenge() {
    $("patient-status").textContent = "Asking for a challenge\u2026";
    try {
      const res = await fetch("/v1/challenges", { method: "POST", cache: "no-store", credentials: "omit" });
      const body = await res.json();
      if (!res.ok) throw new Error(body.detail || body.title || res.status);
      $("challenge").textContent = body.challenge;
      $("domain").textContent = body.domain;
      $("challenge-expires").textContent = when(body.expiresAt);
      $("challenge-box").hidden = false;
      $("patient-status").textContent = "Have your wallet sign a presentation with this challenge and domain, then paste it below.";
    } catch (err) {
      $("patient-status").textContent = "No challenge: " + String(err.message || err);
    }
  }

  async function showHistory(ev) {
    ev.preventDefault();
    const raw = $("presentation").value.trim();
    if (!raw) {
      $("patient-status").textContent = "Paste the presentation your wallet signed first.";
      return;
    }
    let presentation = raw;
    if (raw.startsWith("{") || raw.startsWith("\"")) {
      try {
        presentation = JSON.parse(raw);
      } catch (_) {
        $("patient-status").textContent = "That is not a presentation: it is neither a signed token nor JSON.";
        return;
      }
    }
    $("patient-status").textContent = "Checking your proof\u2026";
    try {
      const res = await fetch("/v1/patients/history", {
        method: "POST",
        cache: "no-store",
        credentials: "omit",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ presentation }),
      });
      const body = await res.json();
      if (!res.ok) throw new Error(body.detail || body.title || String(res.status));
      $("presentation").value = "";
      render(body.events || [], !!body.truncated);
      $("patient-status").textContent = "Your proof was accepted.";
    } catch (err) {
      $("patient-status").textContent = "Your proof was not accepted: " + String(err.message || err) + ". Get a new challenge and try again.";
    }
  }

  function render(items, truncated) {
    const list = $("history");
    while (list.firstChild) list.removeChild(list.firstChild);
    const glass = items.filter((i) => i.event && i.event.breakGlass).length;
    $("history-summary").textContent = items.length
      ? items.length + " request" + (items.length === 1 ? "" : "s") + " named you" +
        (glass ? ", " + glass + " of them in an emergency without your consent (break-the-glass)" : "") +
        (truncated ? ". Only the most recent 1,000 are shown." : ".")
      : "No request has named you.";
    for (const item of items) {
      const e = item.event || {};
      const li = document.createElement("li");
      li.textContent = sentence(e);
      if (e.breakGlass) {
        li.className = "glass";
        const note = document.createElement("p");
        note.textContent = "This was an emergency access without your consent (break-the-glass)" +
          (e.justification ? ", explained as: \u201c" + e.justification + "\u201d" : "") +
          ". The privacy office reviews every such access.";
        li.appendChild(note);
      }
      if (e.requester) {
        const who = document.createElement("p");
        who.className = "hint";
        who.textContent = "Requester's identifier: " + e.requester;
        li.appendChild(who);
      }
      list.appendChild(li);
    }
    $("history-section").hidden = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("get-challenge").addEventListener("click", getChallenge);
    $("proof-form").addEventListener("submit", showHistory);
  });
})();
