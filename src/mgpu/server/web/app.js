// The mgpu dashboard: log in with a token (kept in sessionStorage), then the page in the
// URL's hash (#/nodes, #/queue, #/job/ID, #/usage) fed by ONE live stream.
import { api, h, Stream, Unauthorized } from "./stream.js";
import { nodesPage, queuePage, jobPage, usagePage } from "./pages.js";

const KEY = "mgpu.token";
const main = document.getElementById("main");
let stream = null;
let page = null; // the shown page: { view, url(), event(name, data), tick() }
const clock = { skew: 0 }; // server time - browser time, in seconds

function token() { return sessionStorage.getItem(KEY); }

function showLogin(message) {
  if (stream) stream.close();
  stream = null;
  page = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("summary").textContent = "";
  document.getElementById("live").textContent = "";
  const input = h("input", { id: "token", type: "password", autocomplete: "off",
    placeholder: "paste your mgpu token", size: 48, "aria-label": "token" });
  const error = h("p", { id: "login-error", class: "error", text: message ?? "" });
  const form = h("form", { id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    if (!value) { error.textContent = "paste a token first"; return; }
    try {
      await api(value, "/api/v1/whoami");
    } catch (e) {
      error.textContent = e instanceof Unauthorized
        ? "this token was refused: `mgpu token create USER` makes one (admins), "
          + "or use the one in ~/.config/mgpu/token"
        : `cannot reach the master: ${e.message}`;
      return;
    }
    sessionStorage.setItem(KEY, value);
    start();
  } },
  h("h1", { text: "Log in to mgpu" }),
  h("p", { text: "Paste your token once: this tab keeps it until you close it "
    + "(your token is in ~/.config/mgpu/token, or ask an admin for one)." }),
  input, " ", h("button", { type: "submit", text: "Log in" }), error);
  main.replaceChildren(form);
  input.focus();
}

function onState(state, message) {
  const live = document.getElementById("live");
  if (state === "unauthorized") {
    sessionStorage.removeItem(KEY);
    showLogin("your token was refused (revoked?): log in again");
    return;
  }
  live.className = `live ${state}`;
  live.textContent = state === "live" ? "● live" : state === "connecting" ? "○ connecting"
    : `○ ${message}`;
  if (state === "error" && page?.error) page.error(message);
}

function onEvent(name, data) {
  if (name === "cluster") {
    clock.skew = data.now - Date.now() / 1000;
    const j = data.jobs;
    document.getElementById("who").textContent = `${data.user}${data.admin ? " (admin)" : ""}`;
    document.getElementById("summary").textContent =
      `${j.running ?? 0} running · ${j.pending ?? 0} pending · `
      + `GPUs ${data.gpus_used}/${data.gpus} used · ${data.nodes} node${data.nodes === 1 ? "" : "s"}`;
  }
  if (page) page.event(name, data);
}

function route() {
  if (!token()) { showLogin(); return; }
  const [path, query] = (location.hash.slice(1) || "/queue").split("?");
  const params = new URLSearchParams(query ?? "");
  const parts = path.split("/").filter(Boolean);
  const ctx = { token: token(), main, clock, params, go: (hash) => { location.hash = hash; } };
  if (parts[0] === "nodes") page = nodesPage(ctx);
  else if (parts[0] === "job" && /^\d+$/.test(parts[1] ?? "")) page = jobPage(ctx, Number(parts[1]));
  else if (parts[0] === "usage") page = usagePage(ctx);
  else page = queuePage(ctx);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page.view || (page.view === "job" && a.dataset.page === "queue"));
  }
  stream.open(() => page.url());
}

function start() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  if (stream) stream.close();
  stream = new Stream(token(), onEvent, onState);
  route();
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  showLogin("logged out");
});
window.addEventListener("hashchange", () => { if (token()) route(); });
// Elapsed times move on without asking the master: once a second, from the clock skew.
setInterval(() => { if (page?.tick) page.tick(); }, 1000);
if (token()) start(); else showLogin();
