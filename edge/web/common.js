/* Shared by the kiosk and staff pages: strings per language, class display names, small helpers.
   Plain JavaScript, no build step, nothing loaded from outside this station. */
"use strict";
(function () {
  const FD = {strings: {}, fallback: {}, labels: null, lang: "en"};

  FD.pickLang = function (available) {
    const asked = new URLSearchParams(location.search).get("lang") || localStorage.getItem("facediag-lang") ||
      (navigator.language || "en").slice(0, 2);
    return available.indexOf(asked) >= 0 ? asked : "en";
  };

  FD.loadStrings = async function (lang) {
    const get = async (l) => { const r = await fetch("/web/i18n/" + l + ".json"); return r.ok ? r.json() : {}; };
    if (!Object.keys(FD.fallback).length) { FD.fallback = await get("en"); }
    FD.strings = lang === "en" ? FD.fallback : await get(lang);
    FD.lang = lang;
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = FD.t(el.dataset.i18n); });
  };

  FD.t = function (key, vars) {
    let s = FD.strings[key];
    if (s === undefined) { s = FD.fallback[key]; }
    if (s === undefined) { s = key; }
    Object.entries(vars || {}).forEach(([k, v]) => { s = s.split("{" + k + "}").join(String(v)); });
    return s;
  };

  FD.loadLabels = async function () {
    try { const r = await fetch("/kiosk/labels.json"); FD.labels = r.ok ? await r.json() : null; } catch (e) { FD.labels = null; }
    return FD.labels;
  };

  /* A class's display name: the bundle's, in this language, then English, then the class name. */
  FD.className = function (name) {
    const L = FD.labels;
    if (!L || !name) { return name ? String(name).replace(/_/g, " ") : ""; }
    for (const lang of [FD.lang, "en"]) {
      const d = (L.display || {})[lang];
      if (d && d.classes && d.classes[name]) { return d.classes[name]; }
    }
    return (L.fallback || {})[name] || String(name).replace(/_/g, " ");
  };

  /* An outcome text from the bundle (per language) if it gives one, else the page's own string. */
  FD.outcomeText = function (key, vars) {
    const L = FD.labels;
    for (const lang of [FD.lang, "en"]) {
      const d = L && (L.display || {})[lang];
      if (d && d.texts && d.texts[key]) {
        let s = d.texts[key];
        Object.entries(vars || {}).forEach(([k, v]) => { s = s.split("{" + k + "}").join(String(v)); });
        return s;
      }
    }
    return FD.t("outcome." + key, vars);
  };

  FD.post = async function (url, body, extraHeaders) {
    const headers = Object.assign({"Content-Type": "application/json"}, extraHeaders || {});
    const r = await fetch(url, {method: "POST", headers: headers, body: JSON.stringify(body || {}),
      credentials: "same-origin"});
    let doc = {};
    try { doc = await r.json(); } catch (e) { doc = {}; }
    return {ok: r.ok, status: r.status, doc: doc};
  };

  window.FD = FD;
})();
