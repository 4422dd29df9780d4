/* The staff page: log in once (session cookie), then live state, recent results, visit id, health. */
"use strict";
(function () {
  const FD = window.FD;
  const $ = (id) => document.getElementById(id);
  const page = document.body.dataset.page;

  async function initLogin() {
    $("login").addEventListener("submit", async (e) => {
      e.preventDefault();
      const r = await FD.post("/staff/login", {token: $("token").value});
      if (r.ok) { location.reload(); } else { $("login-error").textContent = FD.t("staff_login_failed"); }
    });
    $("token").focus();
  }

  function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; }

  async function loadResults() {
    const r = await fetch("/staff/api/results", {credentials: "same-origin"});
    if (r.status === 401) { location.reload(); return; }
    const doc = await r.json();
    const tbody = $("results").querySelector("tbody");
    tbody.textContent = "";
    (doc.results || []).slice().reverse().forEach((res) => {
      const tr = document.createElement("tr");
      tr.dataset.sessionId = res.session_id;
      tr.dataset.decision = res.decision;
      tr.dataset.visitId = res.visit_id || "";
      cell(tr, new Date(res.decided_at).toLocaleString(FD.lang));
      cell(tr, res.visit_id || "–");
      cell(tr, FD.t("decision." + res.decision));
      const top = Object.entries(res.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 2)
        .map(([k, v]) => FD.className(k) + " " + Math.round(100 * v) + "%").join(", ");
      cell(tr, top || "–");
      const ack = cell(tr, "");
      if (res.acknowledged) { ack.textContent = "✓"; } else {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = FD.t("staff_ack_button");
        b.addEventListener("click", async () => { await FD.post("/staff/api/ack", {session_id: res.session_id}); loadResults(); });
        ack.appendChild(b);
      }
      tbody.appendChild(tr);
    });
  }

  async function loadHealth() {
    const r = await fetch("/staff/api/status", {credentials: "same-origin"});
    if (!r.ok) { return; }
    const s = await r.json();
    const rows = [
      ["ready", s.ready], ["healthy", s.healthy], ["reason", s.unhealthy_reason || "–"],
      ["degraded", s.degraded ? (s.degraded_reason || "yes") : "no"],
      ["source", s.source && s.source.state], ["engine", s.engine && (s.engine.backend + " " + s.engine.precision)],
      ["bundle", s.engine && String(s.engine.bundle_id || "").slice(0, 16)], ["fps", s.fps],
      ["frames", s.frames_processed], ["results", s.results],
      ["decisions", JSON.stringify(s.decisions || {})], ["uptime s", s.uptime_s],
      // the fleet uplink (an add-on: absent when [uplink] is off); its state reads "uplink: backlog full" when full
      ["uplink", s.uplink ? s.uplink.state + (s.uplink.unsent ? " (" + s.uplink.unsent + " unsent)" : "") : "off"],
    ];
    const dl = $("health");
    dl.textContent = "";
    rows.forEach(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v === undefined || v === null ? "–" : String(v);
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  function showState(ev) {
    document.body.dataset.state = ev.state;
    $("live-state").textContent = FD.t("state." + ev.state) + (ev.reason ? " (" + ev.reason + ")" : "");
    const pending = $("visit-pending");
    if (!ev.visit_pending) { pending.textContent = ""; }
    else if (!pending.textContent) { pending.textContent = FD.t("staff_visit_pending", {visit: "✓"}); }
  }

  async function initStaff() {
    $("logout").addEventListener("click", async () => { await FD.post("/staff/logout"); location.reload(); });
    $("visit-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const v = $("visit").value.trim();
      const r = await FD.post("/staff/api/visit", {visit_id: v});
      if (r.ok) { $("visit-pending").textContent = FD.t("staff_visit_pending", {visit: v}); $("visit").value = ""; }
      else { $("visit-pending").textContent = (r.doc && r.doc.error) || "error"; }
    });
    $("staff-start").addEventListener("click", () => FD.post("/staff/api/start"));
    $("staff-cancel").addEventListener("click", () => FD.post("/staff/api/cancel"));
    const es = new EventSource("/staff/events");
    es.addEventListener("state", (e) => showState(JSON.parse(e.data)));
    es.addEventListener("recorded", () => { loadResults(); loadHealth(); });
    es.addEventListener("acknowledged", () => loadResults());
    es.onerror = () => showState({state: "loading"});
    await loadResults();
    await loadHealth();
    setInterval(loadHealth, 5000);
  }

  async function init() {
    await FD.loadLabels();
    const langs = (FD.labels && FD.labels.languages) || ["en"];
    await FD.loadStrings(FD.pickLang(langs));
    if (page === "login") { await initLogin(); } else { await initStaff(); }
  }
  init();
})();
