// The gsmtpd inbox. Nothing that comes from a message is ever put into the page as HTML:
// text goes in with textContent, and an HTML body is shown only by a sandboxed iframe
// (no scripts, no forms, no navigation of this page) whose server-sent CSP lets it load
// nothing from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { address: "", source: null, newest: 0, oldest: null, open: null, token: sessionStorage.getItem("gsmtpd-token") || "" };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function withToken(url) {
  if (!state.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(state.token);
}

function mailboxUrl(path) {
  return "/api/mailboxes/" + encodeURIComponent(state.address) + path;
}

async function api(url, options = {}) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401) {
    askToken();
    throw new Error("an access token is needed");
  }
  if (response.status === 204) return null;
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function askToken() {
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
}

function status(text) { $("status").textContent = text; }

function item(message, fresh) {
  const li = el("li", fresh ? "new" : "");
  li.dataset.id = message.id;
  const top = el("div");
  top.append(el("span", "from", message.from || "(no From)"), document.createTextNode(" "),
             el("span", "date", new Date(message.date).toLocaleString()));
  li.append(top, el("div", "subject", message.subject || "(no subject)"), el("div", "snippet", message.snippet));
  if (message.has_attach) li.querySelector(".subject").append(el("span", "clip", " \u{1F4CE}" + message.has_attach));
  li.addEventListener("click", () => openMessage(message.id));
  return li;
}

function addMessages(messages, where) {
  const list = $("messages");
  for (const message of messages) {
    if (list.querySelector(`li[data-id="${message.id}"]`)) continue;
    if (where === "top") {
      list.prepend(item(message, true));
      state.newest = Math.max(state.newest, message.id);
    } else {
      list.append(item(message, false));
    }
  }
  $("empty").hidden = list.children.length > 0;
}

async function openMailbox(address) {
  address = address.trim().toLowerCase();
  if (!address.includes("@")) { status("an address is local@domain"); return; }
  state.address = address;
  state.newest = 0;
  state.oldest = null;
  history.replaceState(null, "", "#" + encodeURIComponent(address));
  $("address").value = address;
  $("mailbox-title").textContent = address;
  $("messages").replaceChildren();
  $("message-pane").hidden = true;
  if (state.source) state.source.close();
  try {
    const page = await api(mailboxUrl("/messages?limit=50"));
    addMessages(page.messages, "bottom");
    if (page.messages.length) state.newest = page.messages[0].id;
    state.oldest = page.next_after;
    $("more").hidden = page.next_after === null;
  } catch (error) {
    status(error.message);
    return;
  }
  listen();
}

function listen() {
  // EventSource reconnects by itself and sends Last-Event-ID: the server resumes from it.
  const source = new EventSource(withToken(mailboxUrl("/events?last_event_id=" + state.newest)));
  state.source = source;
  source.addEventListener("message", (event) => {
    addMessages([JSON.parse(event.data)], "top");
    status("new mail");
  });
  source.addEventListener("open", () => status("live: new mail shows up here"));
  source.addEventListener("error", () => status("reconnecting..."));
}

async function olderMessages() {
  const page = await api(mailboxUrl("/messages?limit=50&after=" + state.oldest));
  addMessages(page.messages, "bottom");
  state.oldest = page.next_after;
  $("more").hidden = page.next_after === null;
}

async function openMessage(id) {
  let message;
  try {
    message = await api(mailboxUrl("/messages/" + id));
  } catch (error) { status(error.message); return; }
  state.open = message;
  for (const li of $("messages").children) li.classList.toggle("open", li.dataset.id === String(id));
  const headers = $("headers");
  headers.replaceChildren();
  for (const [name, value] of [["From", message.from], ["To", message.mailbox], ["Subject", message.subject],
                               ["Date", new Date(message.date).toLocaleString()], ["Size", message.size + " bytes"],
                               ["Return-Path", message.return_path], ["Content-Type", message.content_type + "; charset " + message.charset]]) {
    headers.append(el("dt", "", name), el("dd", "", value));
  }
  const attachments = $("attachments");
  attachments.replaceChildren(...message.attachments.map(
    (a) => el("li", "", `${a.filename || "(unnamed)"} (${a.content_type}, ${a.size} bytes)`)));
  $("raw").href = withToken(mailboxUrl("/messages/" + id + "/raw"));
  const frame = $("html-body");
  const text = $("text-body");
  if (message.is_html) {
    frame.src = withToken(mailboxUrl("/messages/" + id + "/html"));
    frame.hidden = false;
    text.hidden = true;
    $("images").hidden = false;
  } else {
    frame.removeAttribute("src");
    frame.hidden = true;
    text.textContent = message.body;
    text.hidden = false;
    $("images").hidden = true;
  }
  $("message-pane").hidden = false;
}

function remoteImages() {
  if (state.open && state.open.is_html) {
    $("html-body").src = withToken(mailboxUrl("/messages/" + state.open.id + "/html?images=remote"));
  }
}

async function deleteMessage() {
  if (!state.open) return;
  try {
    await api(mailboxUrl("/messages/" + state.open.id), { method: "DELETE" });
  } catch (error) { status(error.message); return; }
  const li = $("messages").querySelector(`li[data-id="${state.open.id}"]`);
  if (li) li.remove();
  $("message-pane").hidden = true;
  state.open = null;
}

async function randomAddress() {
  let domains = ["example.com"];
  try { domains = (await api("/api/domains")).domains; } catch (error) { status(error.message); }
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  const local = Array.from(bytes, (b) => "abcdefghijklmnopqrstuvwxyz0123456789"[b % 36]).join("");
  openMailbox(local + "@" + domains[bytes[0] % domains.length]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("pick").addEventListener("submit", (event) => { event.preventDefault(); openMailbox($("address").value); });
  $("random").addEventListener("click", randomAddress);
  $("more").addEventListener("click", olderMessages);
  $("delete").addEventListener("click", deleteMessage);
  $("images").addEventListener("click", remoteImages);
  $("token-form").addEventListener("submit", () => {
    state.token = $("token").value;
    sessionStorage.setItem("gsmtpd-token", state.token);
    if (state.address) openMailbox(state.address);
  });
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) openMailbox(wanted);
});
