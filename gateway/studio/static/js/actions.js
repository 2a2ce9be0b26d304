// Engine actions through the management API (admin token), and the activity list
// that follows each one until its engine is READY or STOPPED.

import { ApiError, json } from "./api.js";
import { fmtDuration, h, replace, $ } from "./dom.js";
import { engineById, fleet, refreshSoon, subscribe } from "./fleet-state.js";

const activities = [];
const waiters = new Set();
let nextId = 1;

function addActivity(title) {
  const item = { id: nextId++, title, status: "running", detail: "sending…", started: Date.now() };
  activities.unshift(item);
  activities.length = Math.min(activities.length, 20);
  renderActivity();
  return item;
}

function update(item, status, detail) {
  item.status = status;
  item.detail = detail;
  if (status !== "running") item.ended = Date.now();
  renderActivity();
}

function renderActivity() {
  const list = $("#activity");
  if (!activities.length) {
    replace(list, h("li", { class: "muted", text: "Actions you take appear here with their progress." }));
    return;
  }
  replace(
    list,
    activities.map((item) => {
      const took = fmtDuration(((item.ended || Date.now()) - item.started) / 1000);
      return h(
        "li",
        { class: `activity ${item.status}`, "data-status": item.status },
        h("span", { class: "activity-mark", "aria-hidden": "true" }),
        h("strong", { text: item.title }),
        h("span", { class: "activity-detail", text: ` — ${item.detail} (${took})` }),
      );
    }),
  );
}

// Resolves with the engine (or null when it is gone) once `done(engine)` holds;
// rejects with the reason when `failed(engine)` returns one, or after `timeoutMs`.
function waitForEngine(engineId, { done, failed, onProgress, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const waiter = () => {
      const engine = engineById(engineId);
      if (!fleet.reachable) {
        onProgress("waiting for the gateway to answer again…");
        return;
      }
      if (done(engine)) {
        waiters.delete(waiter);
        resolve(engine);
        return;
      }
      const why = failed(engine);
      if (why) {
        waiters.delete(waiter);
        reject(new Error(why));
        return;
      }
      if (Date.now() - started > timeoutMs) {
        waiters.delete(waiter);
        reject(new Error(`not done after ${fmtDuration(timeoutMs / 1000)}; last state ${engine ? engine.state : "unknown"}`));
        return;
      }
      onProgress(engine ? `${engine.state}${engine.reason ? `: ${engine.reason}` : ""}` : "waiting for the agent's report…");
    };
    waiters.add(waiter);
    waiter();
  });
}

subscribe(() => {
  for (const waiter of [...waiters]) waiter();
  if (activities.some((a) => a.status === "running")) renderActivity();
});

function untilReady(item, engineId, timeoutS) {
  return waitForEngine(engineId, {
    done: (e) => e && e.state === "READY",
    failed: (e) => {
      if (e && e.state === "ERROR") return `ERROR: ${e.reason || "no reason given"}`;
      if (e && e.state === "STOPPED") return `STOPPED: ${e.reason || "no reason given"}`;
      return null;
    },
    onProgress: (text) => update(item, "running", text),
    timeoutMs: (timeoutS + 30) * 1000,
  });
}

function untilStopped(item, engineId, timeoutS) {
  return waitForEngine(engineId, {
    done: (e) => !e || e.state === "STOPPED",
    failed: (e) => (e && e.state === "ERROR" ? `ERROR: ${e.reason || "no reason given"}` : null),
    onProgress: (text) => update(item, "running", text),
    timeoutMs: (timeoutS + 30) * 1000,
  });
}

function message(error) {
  return error instanceof ApiError ? `refused: ${error.message}` : String(error.message || error);
}

async function startSpec(item, spec, host, onAccepted = () => {}) {
  const engine = await json("/v1/management/engines/start", {
    method: "POST",
    auth: "admin",
    body: { spec, host: host || null },
    timeoutMs: 120000,
  });
  item.title = `${item.title} → ${engine.id}`;
  update(item, "running", engine.state);
  onAccepted(engine);
  refreshSoon();
  const ready = await untilReady(item, engine.id, spec.startup_timeout_s || 900);
  update(item, "done", `READY at ${ready.url}`);
  return engine;
}

// Resolves once the start was accepted (true) or refused (false); the activity entry
// goes on following the engine to READY.
export function startEngine(spec, host) {
  const item = addActivity(`Start ${spec.served_model_name || spec.model}`);
  return new Promise((accepted) => {
    startSpec(item, spec, host, () => accepted({ ok: true, item })).catch((error) => {
      update(item, "failed", message(error));
      accepted({ ok: item.title.includes("→"), item });
    });
  });
}

async function stopEngine(engine, drain, title) {
  const item = addActivity(`${title} ${engine.id}`);
  try {
    await json("/v1/management/engines/stop", {
      method: "POST",
      auth: "admin",
      body: { engine_id: engine.id, drain },
      timeoutMs: 60000,
    });
    refreshSoon();
    const timeout = drain ? (engine.spec && engine.spec.drain_timeout_s) || 300 : 60;
    await untilStopped(item, engine.id, timeout);
    update(item, "done", "STOPPED");
    return true;
  } catch (error) {
    update(item, "failed", message(error));
    return false;
  }
}

export const drain = (engine) => stopEngine(engine, true, "Drain");
export const stop = (engine) => stopEngine(engine, false, "Stop");

// restart (replaces the engine): stop without drain, then the reported spec again on
// the same agent. The new engine gets a new id.
export async function restart(engine) {
  if (!(await stopEngine(engine, false, "Restart: stop"))) return;
  const spec = Object.fromEntries(Object.entries(engine.spec).filter(([, v]) => v !== null));
  const item = addActivity(`Restart: start ${engine.model}`);
  try {
    await startSpec(item, spec, engine.agent_id);
  } catch (error) {
    update(item, "failed", message(error));
  }
}

// ---- the start form ----

function optionalNumber(form, name, problems, { integer = false, min, max } = {}) {
  const raw = form.elements[name].value.trim();
  if (!raw) return undefined;
  const value = Number(raw);
  const label = form.elements[name].labels[0]?.textContent || name;
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value)) || (min !== undefined && value < min) || (max !== undefined && value > max)) {
    const range = max === undefined ? `at least ${min}` : `from ${min} to ${max}`;
    problems.push(`${label} must be ${integer ? "a whole number" : "a number"} ${range}`);
    return undefined;
  }
  return value;
}

export function specFromForm(form) {
  const problems = [];
  const model = form.elements.model.value.trim();
  if (!model) problems.push("Model is required (a model id such as Qwen/Qwen2.5-0.5B-Instruct, or a name for the simulator)");
  const spec = {
    model,
    runtime: form.elements.runtime.value,
    kind: form.elements.kind.value,
  };
  const served = form.elements.served_model_name.value.trim();
  if (served) spec.served_model_name = served;
  const gpus = form.elements.gpus.value.trim();
  if (gpus) {
    if (!/^\d+(\s*,\s*\d+)*$/.test(gpus)) problems.push("GPUs must be indices separated by commas, such as 0,1");
    else spec.gpu_ids = gpus.split(",").map((g) => Number(g.trim()));
  }
  const numbers = {
    tensor_parallel_size: optionalNumber(form, "tensor_parallel_size", problems, { integer: true, min: 1, max: 64 }),
    gpu_memory_utilization: optionalNumber(form, "gpu_memory_utilization", problems, { min: 0.01, max: 1 }),
    max_model_len: optionalNumber(form, "max_model_len", problems, { integer: true, min: 16 }),
    max_num_seqs: optionalNumber(form, "max_num_seqs", problems, { integer: true, min: 1 }),
    port: optionalNumber(form, "port", problems, { integer: true, min: 1, max: 65535 }),
  };
  for (const [key, value] of Object.entries(numbers)) if (value !== undefined) spec[key] = value;
  const dtype = form.elements.dtype.value;
  if (dtype) spec.dtype = dtype;
  return { spec, host: form.elements.host.value || null, problems };
}

function renderHostOptions() {
  const select = $("#start-host");
  const chosen = select.value;
  const options = [h("option", { value: "", text: "automatic placement" })];
  for (const agent of fleet.agents) {
    const label = `${agent.agent_id} (${agent.host}${agent.lost ? ", lost" : ""})`;
    options.push(h("option", { value: agent.agent_id, text: label }));
  }
  replace(select, options);
  select.value = fleet.agents.some((a) => a.agent_id === chosen) ? chosen : "";
}

// On a fleet without GPUs (the demo, a laptop) only the simulator can run: offer it
// first, unless the person already chose a runtime.
let runtimeChosen = false;
function suggestRuntime() {
  const select = $("#start-runtime");
  if (runtimeChosen || !fleet.agents.length) return;
  const noGpus = fleet.agents.every((agent) => !(agent.gpus || []).length);
  select.value = noGpus ? "simulated" : "vllm";
}

export function initActions() {
  const form = $("#start-form");
  $("#start-runtime").addEventListener("change", () => {
    runtimeChosen = true;
  });
  subscribe(suggestRuntime);
  const result = $("#start-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { spec, host, problems } = specFromForm(form);
    if (problems.length) {
      replace(result, h("p", { class: "error", role: "alert", text: problems.join(". ") + "." }));
      return;
    }
    replace(result, h("p", { class: "muted", text: `Starting ${spec.model}… follow it under Activity.` }));
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const { ok, item } = await startEngine(spec, host);
      const text = ok ? `${item.title}: accepted; follow it under Activity.` : `${item.title}: ${item.detail}`;
      replace(result, h("p", { class: ok ? "ok-text" : "error", role: ok ? "status" : "alert", text }));
    } finally {
      button.disabled = false;
    }
  });
  subscribe(renderHostOptions);
  renderHostOptions();
  renderActivity();
  setInterval(() => {
    if (activities.some((a) => a.status === "running")) renderActivity();
  }, 1000);
}
