// The chat page's script: a client of this server's /v1/models and /v1/chat/completions, nothing else.
// Answers are Markdown (marked), made safe by DOMPurify: HTML in an answer is shown as text, links keep only
// http(s)/mailto targets, and nothing an answer says can run (the page's CSP allows scripts from this server only).
// The conversation and the settings live in localStorage (this origin only), so a reload keeps them.
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const CONVERSATION = "phi3-chat-conversation", SETTINGS = "phi3-chat-settings";
const POLL_MS = 10000;  // how often the header asks whether the endpoint is still there
const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input");
let state = loadConversation();  // {messages: [{role: user|assistant|error, content, stats?, stopped?, done?}]}
let busy = null;                 // the AbortController of the answer being streamed

// ---- Markdown, sanitized ----
const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
marked.use({ gfm: true, renderer: { html: ({ text }) => escapeHtml(text) } });  // raw HTML in an answer is text
const PURIFY = {
  ALLOWED_TAGS: ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"],
  ALLOWED_ATTR: ["href", "title", "class", "start", "align"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  RETURN_DOM_FRAGMENT: true,
};
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

function renderMarkdown(el, text) {
  el.replaceChildren(DOMPurify.sanitize(marked.parse(text), PURIFY));
  for (const pre of el.querySelectorAll("pre")) pre.appendChild(copyButton(pre.querySelector("code") || pre));
}

function copyButton(code) {
  const b = button("Copy", "copy", "Copy this code");
  b.addEventListener("click", async () => {
    const text = code.textContent;
    let ok = true;
    try { await navigator.clipboard.writeText(text); } catch (e) { ok = copyByHand(text); }
    b.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { b.textContent = "Copy"; }, 1500);
  });
  return b;
}

function copyByHand(text) {  // no clipboard API (an insecure context, no permission): the old way
  const area = document.createElement("textarea");
  area.value = text; document.body.appendChild(area); area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok;
}

// ---- the conversation, kept across reloads ----
function loadConversation() {
  try {
    const saved = JSON.parse(localStorage.getItem(CONVERSATION));
    if (saved && Array.isArray(saved.messages)) {
      for (const m of saved.messages) if (m.role === "assistant" && !m.done) { m.done = true; m.stopped = true; }
      return saved;
    }
  } catch (e) { /* unreadable: start afresh */ }
  return { messages: [] };
}
const saveConversation = () => localStorage.setItem(CONVERSATION, JSON.stringify(state));

function loadSettings() {
  let s = {};
  try { s = JSON.parse(localStorage.getItem(SETTINGS)) || {}; } catch (e) { /* defaults */ }
  for (const id of ["system", "max_tokens", "temperature"]) {
    if (typeof s[id] === "string") $(id).value = s[id];
    $(id).addEventListener("input", saveSettings);  // as it is typed: a reload keeps it even unsent
  }
}
function saveSettings() {
  const s = Object.fromEntries(["system", "max_tokens", "temperature"].map((id) => [id, $(id).value]));
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

// What is sent: the system prompt, then every answered turn (an error and the question it failed are left out).
function conversation() {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  state.messages.forEach((m, i) => {
    const failed = state.messages[i + 1]?.role === "error";
    if (m.role === "assistant" || (m.role === "user" && !failed)) out.push({ role: m.role, content: m.content });
  });
  return out;
}

// ---- drawing ----
function div(className, text) {
  const d = document.createElement("div");
  d.className = className;
  if (text !== undefined) d.textContent = text;
  return d;
}
function button(text, className, title) {
  const b = document.createElement("button");
  b.type = "button"; b.className = className; b.textContent = text; b.title = title;
  return b;
}

function render() {
  if (!state.messages.length) {
    log.replaceChildren(div("empty", "Ask the fine-tuned model something. Enter sends, Shift+Enter starts a new line."));
  } else {
    log.replaceChildren(...state.messages.map(turn));
  }
  log.scrollTop = log.scrollHeight;
}

function turn(m, i) {
  const t = div(`turn ${m.role}`);
  const bubble = div(`msg ${m.role}`);
  if (m.role === "assistant") paintAnswer(bubble, m); else bubble.textContent = m.content;
  t.appendChild(bubble);
  const meta = div("meta");
  if (m.role === "assistant" && m.done) meta.appendChild(div("stats", statsText(m)));
  if (m.role === "user" && !busy) meta.appendChild(editButton(i, t));
  if (m.role !== "user" && i === state.messages.length - 1 && !busy) meta.appendChild(regenerateButton());
  if (meta.childNodes.length) t.appendChild(meta);
  return t;
}

function paintAnswer(bubble, m) {
  bubble.classList.toggle("pending", !m.done && !m.content);
  if (m.done) bubble.dataset.done = "1";
  if (m.content) renderMarkdown(bubble, m.content);
  else if (m.done) bubble.replaceChildren(Object.assign(document.createElement("span"), { className: "muted", textContent: "(empty answer)" }));
  else bubble.replaceChildren();
}

function statsText(m) {
  const s = m.stats;
  if (!s) return m.stopped ? "stopped" : "";
  const rate = s.seconds > 0 ? (s.tokens / s.seconds).toFixed(1) : "–";
  const approx = s.approx ? "≈" : "";  // no usage from the endpoint: streamed pieces counted instead of tokens
  const tokens = `${approx}${s.tokens} ${s.tokens === 1 ? "token" : "tokens"}`;
  return `${tokens} · ${s.seconds.toFixed(1)} s · ${approx}${rate} tokens/s${m.stopped ? " · stopped" : ""}`;
}

function regenerateButton() {
  const b = button("Regenerate", "small regenerate", "Ask for this answer again");
  b.addEventListener("click", () => { state.messages.pop(); answer(); });
  return b;
}

function editButton(i, t) {
  const b = button("Edit", "small edit", "Edit this message and send it again (what came after is dropped)");
  b.addEventListener("click", () => {
    const box = div("edit"), area = document.createElement("textarea"), buttons = div("buttons");
    area.value = state.messages[i].content;
    const send = button("Send", "primary small resend", "Send the edited message"), cancel = button("Cancel", "small", "");
    send.addEventListener("click", () => {
      const text = area.value.trim();
      if (!text || busy) return;
      state.messages = [...state.messages.slice(0, i), { role: "user", content: text }];
      answer();
    });
    cancel.addEventListener("click", render);
    buttons.append(cancel, send); box.append(area, buttons);
    t.replaceChildren(box); area.focus();
  });
  return b;
}

// ---- asking ----
// Reads server-sent events from a fetch response: calls onData with each `data:` payload until it returns false.
async function readEvents(resp, onData) {
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end); buf = buf.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && onData(line.slice(6)) === false) return;
      }
    }
  }
}

async function errorOf(resp) {
  try { return (await resp.json()).error.message; } catch (e) { return `${resp.status} ${resp.statusText}`; }
}

function requestBody() {
  // no "model": the server fills in the endpoint's, which a redeploy may have changed since this page loaded
  const body = { messages: conversation(), stream: true, stream_options: { include_usage: true } };
  const max = Number($("max_tokens").value), t = Number($("temperature").value);
  if (max > 0) body.max_tokens = max;
  if (t > 0) body.temperature = t;
  return body;
}

// Answers the conversation as it stands (it ends with a question), streaming into a new assistant message.
async function answer() {
  const body = requestBody();
  const m = { role: "assistant", content: "", done: false };
  state.messages.push(m);
  busy = new AbortController();
  saveConversation(); render(); setBusy(true);
  const bubble = log.lastElementChild.querySelector(".msg");
  const started = performance.now();
  let pieces = 0, usage = null, failed = null, queued = false;
  const paint = () => { queued = false; paintAnswer(bubble, m); log.scrollTop = log.scrollHeight; };
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: busy.signal });
    if (!resp.ok) throw new Error(await errorOf(resp));
    await readEvents(resp, (data) => {
      if (data === "[DONE]") return false;
      const j = JSON.parse(data);
      if (j.error) { failed = j.error.message; return false; }
      if (j.usage) usage = j.usage;
      const piece = j.choices?.[0]?.delta?.content;
      if (piece) {
        m.content += piece; pieces++;
        if (!queued) { queued = true; requestAnimationFrame(paint); }
      }
    });
  } catch (e) {
    if (e.name === "AbortError") m.stopped = true; else failed = e.message;
  }
  finish(m, failed, usage ? usage.completion_tokens : pieces, !usage, (performance.now() - started) / 1000);
}

function finish(m, failed, tokens, approx, seconds) {
  const at = state.messages.indexOf(m);  // -1 when New chat dropped this conversation meanwhile
  if (at >= 0 && failed !== null) state.messages[at] = { role: "error", content: failed };
  m.done = true;
  m.stats = { tokens, seconds, approx };
  busy = null;
  saveConversation(); render(); setBusy(false);
  input.focus();
}

function setBusy(on) {
  $("send").disabled = on; $("stop").disabled = !on;
}

// ---- the header: which run, model and endpoint; said when the endpoint is gone ----
async function connect() {
  let said;
  try {
    const r = await fetch("/v1/models", { cache: "no-store" });
    if (r.status === 401) said = "this page's server was restarted (or the cookie is gone): open the URL it printed";
    else if (!r.ok) said = `endpoint gone: ${await errorOf(r)}`;
    else return showEndpoint(await r.json());
  } catch (e) {
    said = "cannot reach this page's server: is it still running? (python -m runner stages=[chat] chat.ui=true)";
  }
  $("header").classList.add("gone");
  $("where").textContent = said;
}

function showEndpoint(j) {
  $("header").classList.remove("gone");
  $("run").textContent = j.run || "";
  $("model").textContent = j.data?.[0]?.id || "";
  $("where").textContent = j.endpoint || "";
}

// ---- wiring ----
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || busy) return;
  input.value = "";
  state.messages.push({ role: "user", content: text });
  answer();
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => busy?.abort());
$("new").addEventListener("click", () => {
  busy?.abort();
  state = { messages: [] };
  saveConversation(); render();
});
window.addEventListener("focus", connect);
document.addEventListener("visibilitychange", () => { if (!document.hidden) connect(); });
setInterval(connect, POLL_MS);
loadSettings();
render();
connect();
