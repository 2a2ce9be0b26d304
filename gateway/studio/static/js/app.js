// Studio's entry point: tabs, credentials, the connection banner, and the views.

import { credentials } from "./api.js";
import { h, replace, $ } from "./dom.js";
import { initActions } from "./actions.js";
import { initFleet } from "./fleet.js";
import { fleet, runWatch, subscribe } from "./fleet-state.js";
import { initPlayground, setPlaygroundVisible } from "./playground.js";
import { initRouting, setRoutingVisible } from "./routing.js";

const TABS = ["fleet", "routing", "playground"];

function selectTab(name, focus = false) {
  for (const tab of TABS) {
    const button = $(`#tab-${tab}`);
    const selected = tab === name;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`#panel-${tab}`).hidden = !selected;
    if (selected && focus) button.focus();
  }
  setRoutingVisible(name === "routing");
  setPlaygroundVisible(name === "playground");
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function initTabs() {
  for (const [index, tab] of TABS.entries()) {
    const button = $(`#tab-${tab}`);
    button.addEventListener("click", () => selectTab(tab));
    button.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) {
        event.preventDefault();
        selectTab(TABS[(index + step + TABS.length) % TABS.length], true);
      } else if (event.key === "Home" || event.key === "End") {
        event.preventDefault();
        selectTab(TABS[event.key === "Home" ? 0 : TABS.length - 1], true);
      }
    });
  }
  const wanted = location.hash.slice(1);
  selectTab(TABS.includes(wanted) ? wanted : "fleet");
}

function initCredentials() {
  const dialog = $("#credentials-dialog");
  const form = $("#credentials-form");
  const describe = () => {
    const admin = credentials.get("admin") ? "admin token set" : "no admin token";
    const key = credentials.get("key") ? "API key set" : "no API key";
    $("#credentials-state").textContent = `${admin}, ${key}`;
  };
  $("#open-credentials").addEventListener("click", () => {
    form.elements.admin.value = credentials.get("admin");
    form.elements.key.value = credentials.get("key");
    dialog.showModal();
    form.elements.admin.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    credentials.set("admin", form.elements.admin.value.trim());
    credentials.set("key", form.elements.key.value.trim());
    describe();
    dialog.close();
  });
  $("#credentials-forget").addEventListener("click", () => {
    credentials.set("admin", "");
    credentials.set("key", "");
    describe();
    dialog.close();
  });
  $("#credentials-cancel").addEventListener("click", () => dialog.close());
  describe();
}

function renderConnection() {
  const pill = $("#gateway-status");
  const banner = $("#banner");
  if (fleet.reachable === false) {
    pill.className = "pill bad";
    pill.textContent = "gateway unreachable";
    banner.hidden = false;
    replace(
      banner,
      h("strong", { text: "The gateway is unreachable. " }),
      `${fleet.error || ""} — retrying; what you see may be out of date. Check that it runs: sage studio status.`,
    );
    return;
  }
  banner.hidden = true;
  if (fleet.authError) {
    pill.className = "pill warn";
    pill.textContent = "token needed";
  } else if (fleet.reachable) {
    pill.className = "pill ok";
    pill.textContent = "live";
  } else {
    pill.className = "pill";
    pill.textContent = "connecting…";
  }
}

function start() {
  initTabs();
  initCredentials();
  initFleet();
  initActions();
  initRouting();
  initPlayground();
  subscribe(renderConnection);
  runWatch();
}

window.addEventListener("error", (event) => {
  const banner = document.getElementById("banner");
  if (banner) {
    banner.hidden = false;
    banner.textContent = `Studio hit an error: ${event.message}. Reload the page; if it persists, report it.`;
  }
});

start();
