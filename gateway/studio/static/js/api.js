// The one place that talks HTTP to the gateway. Every failure becomes an ApiError
// with a message fit to show a person (the API's own message when it sent one).

const KEYS = { admin: "sage.studio.adminToken", key: "sage.studio.apiKey" };
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
  get unreachable() {
    return this.status === 0;
  }
}

// Tokens live in sessionStorage only: gone when the browser tab closes.
export const credentials = {
  get(kind) {
    try {
      return sessionStorage.getItem(KEYS[kind]) || "";
    } catch {
      return "";
    }
  },
  set(kind, value) {
    try {
      if (value) sessionStorage.setItem(KEYS[kind], value);
      else sessionStorage.removeItem(KEYS[kind]);
    } catch {
      // Storage refused (private mode quotas): the token lasts until reload.
    }
    for (const listener of listeners) listener(kind);
  },
  onChange(listener) {
    listeners.add(listener);
  },
};

function headersFor(auth, body) {
  const headers = {};
  const token = auth ? credentials.get(auth) : "";
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  return headers;
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const data = await response.json();
    if (data && data.error) {
      message = data.error.message || message;
      code = data.error.code ?? null;
    } else if (data && data.detail) {
      message = String(data.detail);
    }
  } catch {
    // Not JSON: keep the status line.
  }
  if (response.status === 401) message = `${message} — set it under Credentials`;
  return new ApiError(response.status, message, code);
}

// fetch() with a deadline; the caller's signal (Stop button) aborts too.
export async function send(path, { method = "GET", body, auth = null, timeoutMs = 15000, signal } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new DOMException("timeout", "TimeoutError")), timeoutMs);
  if (signal) signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headersFor(auth, body),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    clearTimeout(timer);
    if (signal && signal.aborted) throw new ApiError(-1, "stopped", "aborted");
    const why = controller.signal.aborted ? "did not answer in time" : "is unreachable";
    throw new ApiError(0, `the gateway ${why}`, "unreachable");
  }
  clearTimeout(timer);
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function json(path, options = {}) {
  const response = await send(path, options);
  if (response.status === 204) return null;
  try {
    return await response.json();
  } catch {
    throw new ApiError(response.status, `the gateway sent an unreadable answer for ${path}`);
  }
}

export async function text(path, options = {}) {
  return (await send(path, options)).text();
}

// Streams a response body as SSE "data:" payloads (strings), until [DONE] or the end.
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}
