// Playground: chat with a model through the gateway, streamed, in a stored session
// (the gateway's /sessions API and the session_id extension of chat completions).

import { ApiError, events, json, send } from "./api.js";
import { confirmButton, fmtNumber, h, replace, $ } from "./dom.js";
import { fleet, subscribe } from "./fleet-state.js";

let current = null; // the open session's id
let sessions = [];
let generation = null; // AbortController of the answer being streamed
let lastRevision = null;

function status(text, kind = "muted") {
  replace($("#sessions-status"), text ? h("span", { class: kind, text }) : "");
}

// ---- models ----

async function refreshModels() {
  const select = $("#chat-model");
  const chosen = select.value;
  let models;
  try {
    models = (await json("/v1/models", { auth: "key" })).data.map((m) => m.id);
  } catch (error) {
    replace(select, h("option", { value: "", text: "no models (see below)" }));
    replace($("#chat-stats"), h("span", { class: "error", role: "alert", text: `Models could not be listed: ${error.message}` }));
    return;
  }
  const embedding = new Set(fleet.backends.filter((b) => b.kind === "embedding").map((b) => b.model));
  const chat = models.filter((m) => !embedding.has(m));
  if (!chat.length) {
    replace(select, h("option", { value: "", text: "no model is ready" }));
    return;
  }
  replace(select, chat.map((m) => h("option", { value: m, text: m })));
  select.value = chat.includes(chosen) ? chosen : chat[0];
}

// ---- sessions ----

// `note` (what an action just did, or why it failed) stays in front of the counts: the
// refresh after an action must not wipe its outcome.
async function refreshSessions(note = "", kind = "muted") {
  try {
    const data = await json("/sessions", { auth: "key" });
    sessions = data.sessions;
    renderSessions();
    const stats = data.stats;
    const counts = `${stats.total_sessions} conversation(s), ${stats.total_messages} message(s)`;
    status(note ? `${note} ${counts}` : counts, kind);
  } catch (error) {
    status(`${note} Conversations could not be listed: ${error.message}`.trim(), "error");
  }
}

function renameForm(session, item) {
  const input = h("input", { type: "text", value: session.title, maxLength: 60, "aria-label": "New title", required: true });
  const cancel = () => renderSessions();
  const form = h(
    "form",
    {
      class: "rename",
      onsubmit: async (event) => {
        event.preventDefault();
        const title = input.value.trim();
        if (!title) {
          status("A title cannot be empty.", "error");
          input.focus();
          return;
        }
        let note = `Renamed to “${title}”.`;
        let kind = "muted";
        try {
          await json(`/sessions/${encodeURIComponent(session.id)}/title`, { method: "PATCH", auth: "key", body: { title } });
        } catch (error) {
          [note, kind] = [`Rename failed: ${error.message}.`, "error"];
        }
        await refreshSessions(note, kind);
        if (current === session.id) $("#chat-title").textContent = title;
      },
      onkeydown: (event) => {
        if (event.key === "Escape") cancel();
      },
    },
    input,
    h("button", { type: "submit", text: "Save" }),
    h("button", { type: "button", text: "Cancel", onclick: cancel }),
  );
  replace(item, form);
  input.focus();
  input.select();
}

async function sessionAction(session, action) {
  const path = `/sessions/${encodeURIComponent(session.id)}`;
  let note;
  let kind = "muted";
  try {
    if (action === "clear") {
      await json(`${path}/clear`, { method: "POST", auth: "key" });
      note = `Cleared “${session.title}”.`;
      if (current === session.id) await openSession(session.id);
    } else {
      await json(path, { method: "DELETE", auth: "key" });
      note = `Deleted “${session.title}”.`;
      if (current === session.id) newConversation();
    }
  } catch (error) {
    [note, kind] = [`${action === "clear" ? "Clear" : "Delete"} failed: ${error.message}.`, "error"];
  }
  await refreshSessions(note, kind);
}

function sessionItem(session) {
  const item = h("li", { class: session.id === current ? "session current" : "session", "data-session": session.id });
  item.append(
    h(
      "button",
      { type: "button", class: "session-open", "aria-current": session.id === current ? "true" : null, onclick: () => openSession(session.id) },
      h("span", { class: "session-title", text: session.title }),
      h("span", { class: "muted small", text: ` ${session.message_count} msg` }),
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", text: "Rename", "aria-label": `Rename ${session.title}`, onclick: () => renameForm(session, item) }),
      confirmButton("Clear", "Confirm clear", () => sessionAction(session, "clear"), { "aria-label": `Clear ${session.title}` }),
      confirmButton("Delete", "Confirm delete", () => sessionAction(session, "delete"), { "aria-label": `Delete ${session.title}` }),
    ),
  );
  return item;
}

function renderSessions() {
  const list = $("#session-list");
  if (!sessions.length) {
    replace(list, h("li", { class: "muted", text: "No conversations yet: send a message to start one." }));
    return;
  }
  replace(list, sessions.map(sessionItem));
}

function bubble(role, content, metadata = {}) {
  const text = typeof content === "string" ? content : JSON.stringify(content);
  const note = metadata.incomplete ? h("span", { class: "note", text: ` (incomplete: ${metadata.reason || "cut short"})` }) : null;
  return h("div", { class: `bubble ${role}` }, h("span", { class: "who", text: role === "user" ? "You" : "Model" }), h("p", { class: "text", text }), note);
}

async function openSession(id) {
  if (generation) return;
  try {
    const session = await json(`/sessions/${encodeURIComponent(id)}`, { auth: "key" });
    current = id;
    $("#chat-title").textContent = session.metadata.title;
    replace($("#chat-log"), session.messages.map((m) => bubble(m.role, m.content, m.metadata)));
    renderSessions();
  } catch (error) {
    status(`The conversation could not be opened: ${error.message}`, "error");
    await refreshSessions();
  }
}

function newConversation() {
  current = null;
  $("#chat-title").textContent = "New conversation";
  replace($("#chat-log"), h("p", { class: "muted", text: "Pick a model, type a message, press Send (or Ctrl+Enter)." }));
  renderSessions();
}

// ---- chat ----

function chatSettings() {
  const form = $("#chat-form");
  const problems = [];
  const maxTokens = Number(form.elements.max_tokens.value || 256);
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > 32768) problems.push("Max tokens must be a whole number from 1 to 32768");
  const temperature = Number(form.elements.temperature.value || 0.7);
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 2) problems.push("Temperature must be a number from 0 to 2");
  return { maxTokens, temperature, problems };
}

function setBusy(busy) {
  $("#chat-send").disabled = busy;
  $("#chat-stop").disabled = !busy;
}

async function streamAnswer(target, body, stats) {
  const started = performance.now();
  const progress = { first: null, chunks: 0, completionTokens: null, text: "" };
  const signal = generation.signal;
  const response = await send("/v1/chat/completions", { method: "POST", auth: "key", body, timeoutMs: 600000, signal });
  try {
    await readAnswer(response, target, progress);
  } catch (error) {
    if (signal.aborted) throw new ApiError(-1, "stopped", "aborted");
    if (!(error instanceof ApiError)) error = new ApiError(502, `the answer broke off: ${error.message}`);
    error.midStream = true;
    throw error;
  }
  const end = performance.now();
  const { first, chunks, completionTokens, text } = progress;
  const tokens = completionTokens ?? chunks;
  const ttft = first === null ? null : (first - started) / 1000;
  const rate = first !== null && end > first ? tokens / ((end - first) / 1000) : null;
  stats.textContent = `Time to first token ${ttft === null ? "–" : `${fmtNumber(ttft * 1000, 0)} ms`} · ${tokens} tokens · ${rate === null ? "–" : fmtNumber(rate, 1)} tokens/s`;
  if (!text) target.textContent = "(empty answer)";
}

// Reads the SSE answer into `target`, keeping counts in `progress`.
async function readAnswer(response, target, progress) {
  for await (const data of events(response)) {
    if (data === "[DONE]") break;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      continue;
    }
    if (chunk.error) throw new ApiError(502, chunk.error.message || "the engine reported an error");
    if (chunk.usage && chunk.usage.completion_tokens != null) progress.completionTokens = chunk.usage.completion_tokens;
    const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
    if (delta && delta.content) {
      if (progress.first === null) progress.first = performance.now();
      progress.chunks += 1;
      progress.text += delta.content;
      target.textContent = progress.text;
      const log = $("#chat-log");
      log.scrollTop = log.scrollHeight;
    }
  }
}

async function sendMessage(event) {
  event.preventDefault();
  const input = $("#chat-input");
  const stats = $("#chat-stats");
  const content = input.value.trim();
  const model = $("#chat-model").value;
  const { maxTokens, temperature, problems } = chatSettings();
  if (!content) problems.push("Type a message first");
  if (!model) problems.push("No model is ready: start an engine on the Fleet tab, then come back");
  if (problems.length) {
    replace(stats, h("span", { class: "error", role: "alert", text: problems.join(". ") + "." }));
    return;
  }
  if (generation) return;
  generation = new AbortController();
  setBusy(true);
  replace(stats, h("span", { class: "muted", text: "Waiting for the first token…" }));
  try {
    if (current === null) {
      const session = await json("/sessions", { method: "POST", auth: "key", body: {} });
      current = session.id;
      replace($("#chat-log"));
    }
    const log = $("#chat-log");
    log.append(bubble("user", content));
    const answer = bubble("assistant", "…");
    log.append(answer);
    input.value = "";
    const target = answer.querySelector(".text");
    try {
      await streamAnswer(
        target,
        { model, messages: [{ role: "user", content }], stream: true, stream_options: { include_usage: true }, session_id: current, max_tokens: maxTokens, temperature },
        stats,
      );
    } catch (error) {
      if (error.code === "aborted") {
        answer.append(h("span", { class: "note", text: " (stopped)" }));
        replace(stats, h("span", { class: "muted", text: "Stopped. What arrived is kept in the conversation." }));
      } else {
        answer.classList.add("failed");
        target.textContent = `Error: ${error.message}`;
        target.setAttribute("role", "alert");
        const kept = error.midStream ? "what arrived is kept, marked incomplete" : "nothing was stored for it";
        replace(stats, h("span", { class: "error", text: `The answer failed; ${kept}.` }));
      }
    }
  } catch (error) {
    replace(stats, h("span", { class: "error", role: "alert", text: `Could not start the conversation: ${error.message}` }));
  } finally {
    generation = null;
    setBusy(false);
    await refreshSessions();
    const title = sessions.find((s) => s.id === current);
    if (title) $("#chat-title").textContent = title.title;
  }
}

export function setPlaygroundVisible(show) {
  if (show) {
    refreshModels();
    refreshSessions();
  }
}

export function initPlayground() {
  $("#chat-form").addEventListener("submit", sendMessage);
  $("#chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#chat-form").requestSubmit();
  });
  $("#chat-stop").addEventListener("click", () => generation && generation.abort());
  $("#new-session").addEventListener("click", newConversation);
  subscribe(() => {
    if (fleet.revision !== lastRevision && $("#panel-playground").hidden === false) {
      lastRevision = fleet.revision;
      refreshModels();
    }
  });
  newConversation();
}
