// The fleet as the console knows it, kept fresh by one watch loop:
// long-poll the routing table (GET /v1/management/backends?after=REV&wait=S) and
// re-read engines and agents when its revision moves, or at most every 5 s for
// GPU telemetry and load (every 30 s while the tab is hidden). Errors back off.

import { ApiError, credentials, json } from "./api.js";

const FULL_REFRESH_MS = 5000;
const HIDDEN_REFRESH_MS = 30000;

export const fleet = {
  revision: null,
  backends: [],
  engines: [],
  agents: [],
  mode: "unknown", // "control-plane" | "static" (no engines API) | "unknown"
  reachable: null,
  authError: null,
  error: null,
  updatedAt: null,
};

const subscribers = new Set();
export function subscribe(fn) {
  subscribers.add(fn);
}
function publish() {
  for (const fn of subscribers) {
    try {
      fn(fleet);
    } catch (error) {
      console.warn("studio: a view failed to render", error);
    }
  }
}

let wake = null;
// Ask the loop to refresh now (after an action, or new credentials).
export function refreshSoon() {
  if (wake) wake();
}

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

async function readAll() {
  const [engines, agents] = await Promise.all([
    json("/v1/management/engines", { auth: "admin" }).catch((error) => {
      if (error.status === 404 || error.status === 405) return null; // static mode
      throw error;
    }),
    json("/v1/management/agents", { auth: "admin" }).catch((error) => {
      if (error.status === 404 || error.status === 405) return null;
      throw error;
    }),
  ]);
  fleet.mode = engines === null ? "static" : "control-plane";
  fleet.engines = engines ? engines.engines : [];
  fleet.agents = agents ? agents.agents : [];
}

let forceFull = true;
credentials.onChange(() => {
  forceFull = true;
  fleet.revision = null;
  refreshSoon();
});

export async function runWatch() {
  let backoff = 1000;
  let lastFull = 0;
  for (;;) {
    const hidden = document.visibilityState === "hidden";
    const wait = fleet.revision === null ? 0 : hidden ? 25 : 5;
    const after = fleet.revision === null ? "" : `&after=${fleet.revision}`;
    const started = Date.now();
    try {
      const table = await json(`/v1/management/backends?wait=${wait}${after}`, {
        auth: "admin",
        timeoutMs: (wait + 10) * 1000,
      });
      const changed = table.revision !== fleet.revision;
      fleet.revision = table.revision;
      fleet.backends = table.backends || [];
      const every = hidden ? HIDDEN_REFRESH_MS : FULL_REFRESH_MS;
      if (changed || forceFull || Date.now() - lastFull >= every) {
        await readAll();
        lastFull = Date.now();
        forceFull = false;
      }
      fleet.reachable = true;
      fleet.authError = null;
      fleet.error = null;
      fleet.updatedAt = Date.now();
      backoff = 1000;
      publish();
      // A gateway without a watch (static mode) answers at once: do not spin.
      const elapsed = Date.now() - started;
      if (!changed && elapsed < Math.max(wait * 800, 1000)) {
        await sleep(Math.max(wait * 1000, 1000) - elapsed);
      }
    } catch (error) {
      const problem = error instanceof ApiError ? error : new ApiError(0, String(error));
      fleet.reachable = !problem.unreachable;
      fleet.authError = problem.status === 401 || problem.status === 403 ? problem.message : null;
      fleet.error = problem.message;
      fleet.revision = null;
      publish();
      // A refused token will not fix itself: wait for new credentials (or 30 s).
      const pause = fleet.authError ? 30000 : backoff;
      backoff = Math.min(backoff * 2, 15000);
      await sleep(pause);
    }
  }
}

export function engineById(id) {
  return fleet.engines.find((engine) => engine.id === id) || null;
}

export function isRouted(engineId) {
  return fleet.backends.some((backend) => backend.id === engineId);
}
