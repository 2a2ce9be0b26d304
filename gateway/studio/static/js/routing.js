// Routing tab: per-engine request rates and errors from the gateway's /metrics, and
// recent routing decisions with their reasons (where the gateway records them).

import { json, text } from "./api.js";
import { fmtNumber, h, replace, $ } from "./dom.js";
import { parseMetrics, perBackend, perModel, rates } from "./metrics.js";

const REFRESH_MS = 5000;
let visible = false;
let timer = null;
let previous = null;
let previousAt = 0;

function rateText(value) {
  return value === null ? "…" : fmtNumber(value, 2);
}

async function refreshMetrics() {
  const target = $("#routing-rates");
  let samples;
  try {
    samples = parseMetrics(await text("/metrics", { timeoutMs: 10000 }));
  } catch (error) {
    replace(target, h("p", { class: "error", role: "alert", text: `Metrics are not available: ${error.message}` }));
    return;
  }
  const now = Date.now();
  const current = perBackend(samples);
  const rows = rates(previous, current, (now - previousAt) / 1000);
  previous = current;
  previousAt = now;
  const retries = perModel(samples, "sage_gateway_retries_total");
  const interrupted = perModel(samples, "sage_gateway_streams_interrupted_total");
  const ejections = perModel(samples, "sage_gateway_ejections_total");
  const models = [...new Set([...Object.keys(retries), ...Object.keys(interrupted), ...Object.keys(ejections)])];
  if (!rows.length) {
    replace(target, h("p", { class: "muted", text: "No requests routed yet. Send one from the Playground." }));
    return;
  }
  const columns = ["Engine", "Model", "Requests/s", "5xx/s", "4xx/s", "Requests", "In flight", "Ejected"];
  replace(
    target,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "rates-table" },
        h("caption", { class: "sr-only", text: "Requests per engine" }),
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c })))),
        h(
          "tbody",
          {},
          rows.map((r) =>
            h(
              "tr",
              { "data-backend": r.backend },
              h("th", { scope: "row" }, h("code", { text: r.backend })),
              h("td", { text: r.model }),
              h("td", { text: rateText(r.rps) }),
              h("td", { class: r.eps ? "bad-text" : "", text: rateText(r.eps) }),
              h("td", { text: rateText(r.ceps) }),
              h("td", { text: String(r.total) }),
              h("td", { text: String(r.inFlight) }),
              h("td", { class: r.ejected ? "bad-text" : "", text: r.ejected ? "yes" : "no" }),
            ),
          ),
        ),
      ),
    ),
    models.length
      ? h(
          "p",
          { class: "muted" },
          models.map((m) => `${m}: ${retries[m] || 0} retried, ${ejections[m] || 0} ejections, ${interrupted[m] || 0} streams interrupted. `),
        )
      : null,
  );
}

function decisionRow(d) {
  const when = new Date(d.at * 1000).toLocaleTimeString();
  const capture = d.captured_tokens == null ? "–" : `${d.captured_tokens}/${d.available_tokens ?? "–"}`;
  return h(
    "tr",
    {},
    h("td", { text: when }),
    h("td", { text: d.model || "–" }),
    h("td", {}, h("code", { text: d.engine_id || "–" })),
    h("td", { text: d.policy || "–" }),
    h("td", { class: "reason", text: d.reason || "–" }),
    h("td", { text: `${d.attempts ?? 1}${d.retried ? " (retried)" : ""}` }),
    h("td", { text: d.status == null ? "–" : String(d.status) }),
    h("td", { text: capture }),
    h("td", { text: d.ttft_s == null ? "–" : `${fmtNumber(d.ttft_s * 1000, 0)} ms` }),
  );
}

async function refreshDecisions() {
  const target = $("#routing-decisions");
  const form = $("#decisions-filter");
  const params = new URLSearchParams({ limit: "50" });
  for (const name of ["model", "engine"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  let data;
  try {
    data = await json(`/v1/management/routing/decisions?${params}`, { auth: "admin", timeoutMs: 10000 });
  } catch (error) {
    if (error.status === 404) {
      replace(target, h("p", { class: "notice", text: "Routing decisions are not available on this gateway." }));
    } else {
      replace(target, h("p", { class: "error", role: "alert", text: `Routing decisions could not be read: ${error.message}` }));
    }
    return;
  }
  const decisions = (data && data.decisions) || [];
  if (!decisions.length) {
    replace(target, h("p", { class: "muted", text: "No routing decisions recorded yet." }));
    return;
  }
  const columns = ["Time", "Model", "Engine", "Policy", "Reason", "Attempts", "Status", "Cache captured/available", "TTFT"];
  replace(
    target,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        {},
        h("caption", { class: "sr-only", text: "Recent routing decisions" }),
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c })))),
        h("tbody", {}, decisions.map(decisionRow)),
      ),
    ),
  );
}

async function tick() {
  timer = null;
  if (!visible) return;
  await Promise.all([refreshMetrics(), refreshDecisions()]);
  if (visible && timer === null) timer = setTimeout(tick, REFRESH_MS);
}

export function setRoutingVisible(show) {
  visible = show;
  if (show && timer === null) tick();
  if (!show && timer !== null) {
    clearTimeout(timer);
    timer = null;
  }
}

export function initRouting() {
  $("#decisions-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    refreshDecisions();
  });
}
