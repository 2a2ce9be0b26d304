// Fleet tab: hosts (agents) with their GPUs, and engines with their state and actions.

import { confirmButton, fmtAgo, fmtBytes, fmtDuration, fmtNumber, h, replace, $ } from "./dom.js";
import { fleet, isRouted, subscribe } from "./fleet-state.js";
import { drain, restart, stop } from "./actions.js";

const STATE_CLASS = {
  READY: "ok",
  STARTING: "busy",
  DRAINING: "busy",
  STOPPED: "off",
  ERROR: "bad",
};

function stateBadge(state) {
  return h("span", { class: `badge ${STATE_CLASS[state] || "off"}`, text: state });
}

function holders(agentId, gpuIndex) {
  return fleet.engines
    .filter((e) => e.agent_id === agentId && (e.gpu_ids || []).includes(gpuIndex) && e.state !== "STOPPED")
    .map((e) => e.id);
}

function gpuRow(agent, gpu) {
  const used = gpu.memory_used_bytes;
  const total = gpu.memory_total_bytes;
  const share = used !== null && used !== undefined && total ? used / total : null;
  const meter =
    share === null
      ? "–"
      : h(
          "span",
          { class: "meter-wrap" },
          h("meter", { min: 0, max: 1, value: share, "aria-label": `GPU ${gpu.index} memory used` }),
          ` ${fmtBytes(used)} / ${fmtBytes(total)}`,
        );
  const held = holders(agent.agent_id, gpu.index);
  // Older agents omit `healthy`: only an explicit false is a quarantine.
  const quarantined = gpu.healthy === false;
  const fault = gpu.fault || "fault";
  const holder = held.length ? held.join(", ") : quarantined ? "none (quarantined)" : "free";
  return h(
    "tr",
    { class: quarantined ? "quarantined" : null, "data-gpu": String(gpu.index) },
    h(
      "td",
      {},
      String(gpu.index),
      quarantined
        ? [" ", h("span", { class: "badge bad", text: "QUARANTINED", title: `quarantined: ${fault}` })]
        : null,
      quarantined ? h("div", { class: "reason small", text: `Fault: ${fault}. Cleared with sage llm gpu clear.` }) : null,
    ),
    h("td", { text: gpu.name || "–" }),
    h("td", {}, meter),
    h("td", { text: gpu.utilization_percent == null ? "–" : `${fmtNumber(gpu.utilization_percent, 0)} %` }),
    h("td", { text: gpu.temperature_c == null ? "–" : `${fmtNumber(gpu.temperature_c, 0)} °C` }),
    h("td", { text: holder }),
  );
}

// A draining host is cordoned too: one badge says the stronger of the two.
function cordonBadge(agent) {
  if (agent.draining) {
    return {
      badge: h("span", { class: "badge busy", text: "DRAINING" }),
      note: "Draining: no new engines are placed here, and its engines are being moved off or drained (sage agent uncordon ends it).",
    };
  }
  if (agent.cordoned) {
    return {
      badge: h("span", { class: "badge busy", text: "CORDONED" }),
      note: "Cordoned: no new engines are placed here; running engines keep serving (sage agent uncordon ends it).",
    };
  }
  return null;
}

function agentCard(agent) {
  const lease = agent.lost
    ? h("span", { class: "badge bad", text: "LOST" })
    : h("span", { class: "badge ok", text: `lease ${fmtNumber(agent.lease_expires_in_s, 0)}s` });
  const cordon = cordonBadge(agent);
  const metrics = agent.host_metrics || {};
  const facts = h(
    "dl",
    { class: "facts" },
    h("dt", { text: "Host" }),
    h("dd", { text: agent.host }),
    h("dt", { text: "Version" }),
    h("dd", { text: agent.version || "–" }),
    h("dt", { text: "Last report" }),
    h("dd", { text: fmtAgo(agent.last_report_at) }),
    h("dt", { text: "Engines" }),
    h("dd", { text: String(agent.engines) }),
    h("dt", { text: "CPU" }),
    h("dd", { text: metrics.cpu_percent == null ? "–" : `${fmtNumber(metrics.cpu_percent, 0)} % of ${metrics.cpu_count}` }),
    h("dt", { text: "Memory free" }),
    h("dd", { text: metrics.memory_total_bytes ? `${fmtBytes(metrics.memory_available_bytes)} of ${fmtBytes(metrics.memory_total_bytes)}` : "–" }),
  );
  const gpus = agent.gpus || [];
  const gpuTable = gpus.length
    ? h(
        "div",
        { class: "scroll" },
        h(
          "table",
          {},
          h("caption", { class: "sr-only", text: `GPUs of ${agent.agent_id}` }),
          h("thead", {}, h("tr", {}, ...["GPU", "Name", "Memory", "Util", "Temp", "Held by"].map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, gpus.map((gpu) => gpuRow(agent, gpu))),
        ),
      )
    : h("p", { class: "muted", text: agent.gpu_error ? `No GPUs: ${agent.gpu_error}` : "No GPUs on this host (CPU engines and the simulator only)." });
  return h(
    "article",
    { class: "card", "aria-label": `Agent ${agent.agent_id}` },
    h("h3", {}, agent.agent_id, " ", lease, cordon ? [" ", cordon.badge] : null),
    cordon ? h("p", { class: "notice small", text: cordon.note }) : null,
    facts,
    gpuTable,
  );
}

function loadText(load) {
  if (!load || load.running == null) return "–";
  const kv = load.kv_cache_usage == null ? "" : `, KV ${fmtNumber(load.kv_cache_usage * 100, 0)} %`;
  return `${load.running} running, ${load.waiting || 0} waiting${kv}`;
}

function engineActions(engine) {
  const cell = h("div", { class: "actions" });
  const label = (verb) => `${verb} ${engine.id}`;
  if (engine.state === "READY") {
    cell.append(h("button", { type: "button", text: "Drain", "aria-label": label("Drain"), onclick: () => drain(engine) }));
  }
  if (engine.state !== "STOPPED") {
    cell.append(confirmButton("Stop", "Confirm stop", () => stop(engine), { "aria-label": label("Stop") }));
  }
  if (engine.spec && engine.agent_id) {
    cell.append(
      confirmButton("Restart", "Confirm restart", () => restart(engine), {
        "aria-label": `Restart (replaces the engine) ${engine.id}`,
        title: "restart (replaces the engine): stop it, then start the same spec on the same host",
      }),
    );
  }
  return cell;
}

function uptimeText(engine) {
  if (engine.state === "STOPPED" || !engine.created_at) return "–";
  return fmtDuration(Date.now() / 1000 - engine.created_at);
}

function engineRow(engine) {
  const routed = isRouted(engine.id);
  return h(
    "tr",
    { "data-engine": engine.id, "data-state": engine.state },
    h("th", { scope: "row" }, h("code", { text: engine.id })),
    h("td", { text: engine.model }),
    h("td", { text: `${engine.runtime} · ${engine.kind}` }),
    h("td", {}, stateBadge(engine.state)),
    h("td", { class: "reason", text: engine.reason || "–" }),
    h("td", { text: `${engine.agent_id || "registered"} · ${engine.host}:${engine.port}` }),
    h("td", { text: (engine.gpu_ids || []).join(", ") || "–" }),
    h("td", { text: loadText(engine.load) }),
    h("td", { text: String(engine.restarts) }),
    h("td", { class: "uptime", text: uptimeText(engine) }),
    h("td", { class: routed ? "yes" : "no", text: routed ? "yes" : "no" }),
    h("td", {}, engineActions(engine)),
  );
}

// Rows are kept while their engine is unchanged, so a focused button or an armed
// "Confirm stop" survives the refresh every few seconds.
const rows = new Map();

function rowSignature(engine) {
  return JSON.stringify([
    engine.state, engine.reason, engine.load, engine.restarts, engine.gpu_ids,
    engine.incarnation, engine.host, engine.port, Boolean(engine.spec), isRouted(engine.id),
  ]);
}

function engineTable() {
  const columns = ["Engine", "Model", "Runtime", "State", "Reason", "Agent · address", "GPUs", "Load", "Restarts", "Uptime", "In routing", "Actions"];
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { id: "engines-table" },
      h("caption", { class: "sr-only", text: "Engines" }),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c })))),
      h("tbody"),
    ),
  );
}

function renderEngines() {
  const target = $("#engines");
  if (fleet.mode === "static" || !fleet.engines.length) {
    rows.clear();
    if (fleet.mode === "static") {
      replace(
        target,
        h("p", { class: "notice", text: "This gateway serves a fixed list of engines (static mode): there is no control plane, so engines cannot be started or stopped here." }),
        h("ul", {}, fleet.backends.map((b) => h("li", {}, h("code", { text: b.id }), ` ${b.model} at ${b.url}`))),
      );
    } else {
      replace(target, h("p", { class: "muted", text: "No engines yet. Start one with the form above." }));
    }
    return;
  }
  let table = target.querySelector("#engines-table");
  if (!table) {
    rows.clear();
    replace(target, engineTable());
    table = target.querySelector("#engines-table");
  }
  const tbody = table.tBodies[0];
  const wanted = [];
  const ids = new Set();
  for (const engine of fleet.engines) {
    ids.add(engine.id);
    const sig = rowSignature(engine);
    let row = rows.get(engine.id);
    if (!row || row.sig !== sig) {
      const tr = engineRow(engine);
      if (row) row.tr.replaceWith(tr);
      row = { sig, tr };
      rows.set(engine.id, row);
    } else {
      row.tr.querySelector(".uptime").textContent = uptimeText(engine);
    }
    wanted.push(row.tr);
  }
  for (const [id, row] of rows) {
    if (!ids.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  const current = [...tbody.children];
  if (current.length !== wanted.length || current.some((tr, i) => tr !== wanted[i])) {
    tbody.replaceChildren(...wanted);
  }
}

function renderHosts() {
  const target = $("#hosts");
  if (fleet.mode === "static") {
    replace(target, h("p", { class: "muted", text: "No agents: static mode." }));
    return;
  }
  if (!fleet.agents.length) {
    replace(target, h("p", { class: "muted", text: "No agent has reported yet. Start one with `sage agent run`, or run the gateway with its local agent." }));
    return;
  }
  replace(target, fleet.agents.map(agentCard));
}

function renderFleet() {
  const summary = $("#fleet-summary");
  if (fleet.authError) {
    replace(summary, h("p", { class: "notice", role: "alert", text: `The fleet cannot be read: ${fleet.authError}` }));
    rows.clear();
    const hint = "Shown once the gateway accepts your admin token (Credentials, top right).";
    replace($("#engines"), h("p", { class: "muted", text: hint }));
    replace($("#hosts"), h("p", { class: "muted", text: hint }));
    return;
  }
  if (fleet.updatedAt === null) {
    replace(summary, h("p", { class: "muted", text: fleet.error ? `Waiting for the gateway: ${fleet.error}` : "Loading the fleet…" }));
    return;
  }
  const ready = fleet.engines.filter((e) => e.state === "READY").length;
  replace(
    summary,
    h("p", { text: `${fleet.agents.length} host(s), ${fleet.engines.length} engine(s), ${ready} ready, ${fleet.backends.length} in routing (table revision ${fleet.revision ?? "–"}).` }),
  );
  renderEngines();
  renderHosts();
}

export function initFleet() {
  subscribe(renderFleet);
  renderFleet();
}
