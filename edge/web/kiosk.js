/* The screening page: shows what the daemon's event stream says; Start / Cancel are POSTs with the page key.
   <body data-state> is always the current state; the outcome card carries data-decision. */
"use strict";
(function () {
  const FD = window.FD;
  const key = document.querySelector('meta[name="facediag-page-key"]').content;
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  let current = {state: "loading", trigger: "button"};
  let progress = null;
  let outcome = null;
  window.facediagKiosk = {log: []};  // state changes with their time, for tests and benchmarks

  function setState(ev) {
    current = ev;
    const state = ev.state;
    if (body.dataset.state !== state) {
      body.dataset.state = state;
      window.facediagKiosk.log.push({state: state, at: Date.now(), event_at: ev.at ? ev.at * 1000 : null});
    }
    body.dataset.trigger = ev.trigger || "button";
    body.classList.toggle("can-start", !!ev.can_start);
    $("camera-reason").textContent = state === "camera-missing" ? (ev.reason || "") : "";
    $("degraded-detail").textContent = state === "degraded" ? (ev.reason || "") : "";
    $("degraded-reason").textContent = "";
    const preview = $("preview");
    if (state === "screening") {
      if (!preview.getAttribute("src")) { preview.setAttribute("src", "/kiosk/preview.mjpg?k=" + encodeURIComponent(key)); }
      if (!progress) { showProgress({good: 0, needed: 0, instruction: "face_camera", box: null}); }
      $("cancel").focus();
    } else {
      if (preview.getAttribute("src")) { preview.removeAttribute("src"); }  // closes the stream
      progress = null;
    }
    if (state === "idle" || state === "degraded") {
      const b = state === "idle" ? $("start") : $("start-degraded");
      if (document.activeElement !== b) { b.focus(); }
    }
  }

  function showProgress(p) {
    progress = p;
    const instr = $("instruction");
    instr.dataset.key = p.instruction;
    instr.textContent = FD.t("instr." + p.instruction);
    const text = $("progress-text");
    text.dataset.good = p.good;
    text.dataset.needed = p.needed;
    text.textContent = FD.t("progress", {good: p.good, needed: p.needed});
    const bar = $("progress-bar");
    bar.setAttribute("aria-valuenow", String(p.good));
    bar.setAttribute("aria-valuemax", String(p.needed || 1));
    $("progress-fill").style.width = (p.needed ? 100 * p.good / p.needed : 0) + "%";
    const box = $("facebox");
    if (p.box) {
      const [x0, y0, x1, y1] = p.box;  // the preview is mirrored: so is the box
      box.style.left = (100 * (1 - x1)) + "%";
      box.style.top = (100 * y0) + "%";
      box.style.width = (100 * (x1 - x0)) + "%";
      box.style.height = (100 * (y1 - y0)) + "%";
      box.classList.add("on");
      box.classList.toggle("good", p.instruction === "hold");
    } else {
      box.classList.remove("on");
    }
  }

  function showOutcome(o) {
    outcome = o;
    const card = $("outcome");
    card.dataset.decision = o.decision;
    const top = (o.top || [])[0];
    const condition = FD.className(o.condition || (top && top["class"]) || "");
    $("outcome-title").textContent = FD.outcomeText(o.decision);
    let detail = "";
    if (o.decision === "refer") { detail = FD.outcomeText("refer_detail", {condition: condition}); }
    else if (o.decision === "no_finding") { detail = FD.outcomeText("no_finding_detail"); }
    else { detail = FD.t("retake." + (o.reason_key || "retry")); }
    $("outcome-detail").textContent = detail;
  }

  function relabel() {
    if (progress) { showProgress(progress); }
    if (outcome) { showOutcome(outcome); }
  }

  async function post(path) {
    const r = await FD.post(path, {}, {"X-Kiosk-Key": key});
    if (!r.ok && r.doc && r.doc.error) { console.warn(path, r.status, r.doc.error); }
  }
  const start = () => post("/kiosk/session/start");
  $("start").addEventListener("click", start);
  $("start-degraded").addEventListener("click", start);
  $("cancel").addEventListener("click", () => post("/kiosk/session/cancel"));
  document.addEventListener("keydown", (e) => {  // a USB button that types a key, or a keyboard
    if (e.repeat) { return; }
    if (e.key === "Escape" && body.dataset.state === "screening") { post("/kiosk/session/cancel"); }
    else if ((e.key === "Enter" || e.key === " ") && body.classList.contains("can-start") &&
             (body.dataset.state === "idle" || body.dataset.state === "degraded" || body.dataset.state === "result") &&
             !(e.target instanceof HTMLButtonElement)) { e.preventDefault(); start(); }
  });

  function connect() {
    const es = new EventSource("/kiosk/events?k=" + encodeURIComponent(key));
    es.addEventListener("state", (e) => setState(JSON.parse(e.data)));
    es.addEventListener("progress", (e) => showProgress(JSON.parse(e.data)));
    es.addEventListener("result", (e) => showOutcome(JSON.parse(e.data)));
    es.onerror = () => {  // the daemon went away (stopping or restarting): say so while the browser retries
      const wait = body.dataset.state === "stopping" ? 2000 : 0;  // "stopping" stays readable a moment
      setTimeout(() => {
        if (es.readyState !== EventSource.OPEN) { setState({state: "loading", trigger: current.trigger}); }
      }, wait);
    };
  }

  async function init() {
    const labels = await FD.loadLabels();
    const langs = (labels && labels.languages) || ["en"];
    await FD.loadStrings(FD.pickLang(langs));
    const nav = $("langs");
    langs.forEach((l) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "lang";
      b.lang = l;
      b.dataset.lang = l;
      b.textContent = l.toUpperCase();
      b.addEventListener("click", async () => { localStorage.setItem("facediag-lang", l); await FD.loadStrings(l); relabel(); });
      nav.appendChild(b);
    });
    connect();
  }
  init();
})();
