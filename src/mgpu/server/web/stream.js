// The dashboard's one live connection: Server-Sent Events read through fetch(), so that
// the token travels in the Authorization header (EventSource cannot send one).

// Build DOM nodes without HTML parsing: names, commands and output are users' text.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export class Unauthorized extends Error {}

// Call the API: the JSON reply, or an Error with the master's one-line message.
export async function api(token, path, body) {
  const init = { headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (resp.status === 401) throw new Unauthorized(data?.error ?? "the token was refused");
  if (!resp.ok) {
    const err = new Error(data?.error ?? `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

// One stream at a time: open(url) replaces the previous one. onEvent(name, data) gets
// each event; onState("live" | "connecting" | "error", message) the connection's state.
// A dropped stream reconnects by itself, with back-off; url() is asked again each time,
// so that a reconnect resumes where the page is (e.g. the log's offset).
export class Stream {
  constructor(token, onEvent, onState) {
    this.token = token;
    this.onEvent = onEvent;
    this.onState = onState;
    this.controller = null;
    this.generation = 0;
  }

  open(url) {
    this.close();
    const gen = ++this.generation;
    this.#run(url, gen);
  }

  close() {
    this.generation++;
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async #run(url, gen) {
    let delay = 500;
    while (gen === this.generation) {
      const controller = (this.controller = new AbortController());
      this.onState("connecting");
      try {
        const resp = await fetch(url(), {
          headers: { Authorization: `Bearer ${this.token}`, Accept: "text/event-stream" },
          signal: controller.signal,
          cache: "no-store",
        });
        if (resp.status === 401) throw new Unauthorized("the token was refused");
        if (!resp.ok) {
          let msg = `HTTP ${resp.status}`;
          try { msg = (await resp.json()).error ?? msg; } catch { /* not JSON */ }
          this.onState("error", msg);
          if (resp.status < 500) return; // asking again would get the same answer
        } else {
          this.onState("live");
          delay = 500;
          await this.#read(resp.body, gen);
        }
      } catch (e) {
        if (e instanceof Unauthorized) { this.onState("unauthorized", e.message); return; }
        if (gen !== this.generation) return;
        this.onState("error", "connection lost: reconnecting");
      }
      if (gen !== this.generation) return;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  async #read(body, gen) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== this.generation) return;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (data.length && gen === this.generation) this.onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }
}
