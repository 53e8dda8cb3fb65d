// trial-fhir dashboard: asks for a bearer token when access control is on, and sends it in an Authorization header
// (never a cookie; kept in this variable only, so reloading the page forgets it). Served by the service itself.
"use strict";
(function () {
  let token = "";
  const panel = document.getElementById("studies");
  const form = document.getElementById("token-form");
  const status = document.getElementById("status");

  function headers(extra) {
    const out = Object.assign({}, extra || {});
    if (token) out.Authorization = "Bearer " + token;
    return out;
  }

  function say(text, error) {
    status.textContent = text;
    status.className = error ? "status error" : "status";
  }

  async function problem(response) {
    try {
      const body = await response.json();
      const issue = body.issue && body.issue[0];
      return (issue && (issue.diagnostics || issue.code)) || body.error_description || body.error || response.statusText;
    } catch (e) {
      return response.statusText;
    }
  }

  async function load() {
    say("Loading the studies…");
    const response = await fetch("/dashboard/studies", { headers: headers(), cache: "no-store" });
    if (!response.ok) {
      say(response.status + ": " + (await problem(response)), true);
      return;
    }
    panel.innerHTML = await response.text();
    say("");
  }

  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const input = document.getElementById("token");
      token = input.value.trim();
      input.value = "";
      load().catch(function (e) { say(String(e), true); });
    });
  }

  // with a token, a link to the study's report, summary or charts is fetched with it and opened as a blob
  // in a new window (a plain link would reach the server without the token)
  async function openWithToken(link) {
    const win = window.open("about:blank", "_blank");
    const response = await fetch(link.getAttribute("href"), { headers: headers(), cache: "no-store" });
    if (!response.ok) {
      if (win) win.close();
      say(response.status + ": " + (await problem(response)), true);
      return;
    }
    const blob = new Blob([await response.arrayBuffer()], { type: response.headers.get("content-type") || "" });
    const url = URL.createObjectURL(blob);
    if (win) win.location.href = url; else window.location.href = url;
  }

  // Bulk export of the study's Group: the kick-off (Prefer: respond-async), then the status URL to poll
  async function startExport(button) {
    const out = button.closest("section").querySelector("output.export-status");
    out.textContent = "Starting the export…";
    const response = await fetch(button.dataset.export, {
      headers: headers({ Prefer: "respond-async", Accept: "application/fhir+json" }), cache: "no-store" });
    if (response.status === 202) {
      out.textContent = "Export started: poll " + response.headers.get("content-location") +
        (token ? " with the same token" : "");
    } else {
      out.textContent = "Export refused: " + response.status + " " + (await problem(response));
    }
  }

  document.addEventListener("click", function (event) {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    const link = target.closest("a[data-fetch]");
    if (link && token) {
      event.preventDefault();
      openWithToken(link).catch(function (e) { say(String(e), true); });
      return;
    }
    const button = target.closest("button[data-export]");
    if (button) {
      event.preventDefault();
      startExport(button).catch(function (e) { say(String(e), true); });
    }
  });
})();
