// The room page: history, a live event stream that resumes where it left off,
// a composer whose unsent messages survive a dropped connection, presence, and
// accounts. User text is only ever set with textContent.

import { explanation, getJSON, postJSON, rememberRoom } from "./api.js";

const $ = (id) => document.getElementById(id);
const roomKey = window.location.pathname;
const alias = $("room-alias").textContent;
const sessionKey = `flaskchat:session:${roomKey}`;
const outboxKey = `flaskchat:outbox:${roomKey}`;
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
const MENTION = /@([\p{L}\p{N}_.-]+)/gu;

const state = {
  session: loadJSON(sessionKey, null), // {username, token}
  outbox: loadJSON(outboxKey, []), // [{clientId, text}]
  shown: new Map(), // message id -> <li>
  awaiting: new Map(), // id of a message the server took -> its pending <li>
  firstId: null,
  lastId: null,
  stream: null,
  connectAttempt: 0,
  reconnectDelay: 1000,
  reconnectTimer: null,
  unread: 0,
  sending: false,
};

function loadJSON(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function saveJSON(key, value) {
  if (value === null) localStorage.removeItem(key);
  else localStorage.setItem(key, JSON.stringify(value));
}

function notify(text) {
  $("notice").textContent = text;
}

function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Rendering

function textWithMentions(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  const me = state.session ? state.session.username.toLowerCase() : null;
  for (const match of text.matchAll(MENTION)) {
    fragment.append(document.createTextNode(text.slice(last, match.index)));
    const mark = document.createElement("mark");
    mark.className = match[1].toLowerCase() === me ? "mention mention-me" : "mention";
    mark.textContent = match[0];
    fragment.append(mark);
    last = match.index + match[0].length;
  }
  fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

// A user's string (a name, a message) in an element of its own with dir="auto",
// which makes it a bidi isolate (style.css says so too): a right-to-left name or a
// stray U+202E cannot reorder the rest of the line.
function isolated(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.dir = "auto";
  element.textContent = text;
  return element;
}

// "<alice>", as in the seed's conversation lines, so a copied line reads the same.
function authorName(username) {
  const author = document.createElement("span");
  author.className = "author";
  author.append("<", isolated("name", username), ">");
  return author;
}

function messageItem(message) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.id = message.id;
  const when = document.createElement("time");
  when.dateTime = message.time;
  when.textContent = timeFormat.format(new Date(message.time));
  const author = authorName(message.username);
  const text = isolated("text", "");
  text.append(textWithMentions(message.text));
  item.append(when, " ", author, " ", text);
  return item;
}

// Show messages once, in order. `older` pages go on top; everything else comes
// from the server oldest first, after what is shown.
function show(messages, { older = false } = {}) {
  const list = $("messages");
  const fresh = messages.filter((m) => !state.shown.has(m.id));
  if (fresh.length === 0) return 0;
  const items = fresh.map((m) => {
    const item = messageItem(m);
    state.shown.set(m.id, item);
    return item;
  });
  if (older) {
    list.prepend(...items);
    state.firstId = fresh[0].id;
  } else {
    const firstPending = list.querySelector(".pending");
    for (const item of items) list.insertBefore(item, firstPending);
    state.lastId = fresh[fresh.length - 1].id;
    if (state.firstId === null) state.firstId = fresh[0].id;
    for (const message of fresh) {
      state.awaiting.get(message.id)?.remove();
      state.awaiting.delete(message.id);
    }
    countUnread(fresh);
    list.lastElementChild.scrollIntoView({ block: "end" });
  }
  return fresh.length;
}

function countUnread(messages) {
  if (!document.hidden) return;
  const me = state.session && state.session.username.toLowerCase();
  state.unread += messages.filter((m) => m.username.toLowerCase() !== me).length;
  document.title = state.unread ? `(${state.unread}) ${alias} · flaskchat` : `${alias} · flaskchat`;
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) {
    state.unread = 0;
    document.title = `${alias} · flaskchat`;
  }
});

function showOnline(names) {
  const list = $("online");
  list.replaceChildren(
    ...names.map((name) => {
      const item = document.createElement("li");
      item.append(isolated("name", name));
      return item;
    }),
  );
}

function setConnection(stateName, label) {
  const indicator = $("connection");
  indicator.dataset.state = stateName;
  indicator.textContent = label;
}

// History

async function loadLatest() {
  const path = state.lastId ? `messages?after=${encodeURIComponent(state.lastId)}&limit=200` : "messages?limit=50";
  const result = await getJSON(path);
  if (result.status !== 200) throw new Error(explanation(result));
  const page = result.data;
  if (!state.lastId) $("load-older").hidden = !page.more;
  show(page.messages);
  // After a long absence, keep catching up until nothing newer is left.
  if (state.lastId && page.more) await loadLatest();
}

$("load-older").addEventListener("click", async () => {
  if (!state.firstId) return;
  const result = await getJSON(`messages?before=${encodeURIComponent(state.firstId)}&limit=50`);
  if (result.status !== 200) {
    notify(explanation(result));
    return;
  }
  show(result.data.messages, { older: true });
  $("load-older").hidden = !result.data.more;
});

// The live stream. Every (re)connection asks for what came after the last message
// shown. The server fixes where a stream starts before it sends the stream's first
// presence event, so catching up from history at that moment leaves no gap.

async function connect() {
  clearTimeout(state.reconnectTimer);
  const attempt = ++state.connectAttempt;
  if (state.stream) state.stream.close();
  setConnection("connecting", "Connecting…");
  const params = new URLSearchParams();
  if (state.lastId) params.set("after", state.lastId);
  if (state.session) {
    try {
      const result = await postJSON("ticket", state.session);
      if (result.status === 200) params.set("ticket", result.data.ticket);
      else if (result.status === 401) forgetSession("Your session has ended. Please log in again.");
    } catch {
      if (attempt === state.connectAttempt) scheduleReconnect();
      return;
    }
  }
  if (attempt !== state.connectAttempt) return; // a newer connect() took over meanwhile
  if (state.stream) state.stream.close();
  const query = params.toString();
  const stream = new EventSource(`events${query ? `?${query}` : ""}`);
  state.stream = stream;
  let caughtUp = false;
  stream.addEventListener("message", (event) => show([JSON.parse(event.data)]));
  stream.addEventListener("presence", async (event) => {
    showOnline(JSON.parse(event.data).online);
    if (caughtUp) return;
    caughtUp = true;
    state.reconnectDelay = 1000;
    try {
      await loadLatest();
    } catch {
      // The stream itself still delivers; the next reconnect catches up again.
    }
    if (state.stream === stream) setConnection("live", "Live");
  });
  stream.addEventListener("error", () => {
    // Reconnect ourselves: a fresh ticket and the newest cursor every time.
    stream.close();
    if (state.stream === stream) scheduleReconnect();
  });
}

function scheduleReconnect() {
  setConnection(navigator.onLine ? "reconnecting" : "offline", navigator.onLine ? "Reconnecting…" : "Offline");
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, state.reconnectDelay);
  state.reconnectDelay = Math.min(state.reconnectDelay * 2, 15000);
}

window.addEventListener("online", () => {
  state.reconnectDelay = 1000;
  connect();
  flushOutbox();
});
window.addEventListener("offline", () => setConnection("offline", "Offline"));

// Sending. A message waits in the outbox (kept across reloads) until the server
// has it; retries reuse its client_id, so it is stored once.

function pendingItem(entry) {
  const item = document.createElement("li");
  item.className = "message pending";
  item.dataset.clientId = entry.clientId;
  const author = authorName(state.session ? state.session.username : "");
  const text = isolated("text", entry.text);
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = "sending…";
  item.append(author, " ", text, " ", note);
  return item;
}

function renderOutbox() {
  const list = $("messages");
  for (const item of list.querySelectorAll(".pending:not(.awaiting)")) item.remove();
  for (const entry of state.outbox) list.append(pendingItem(entry));
}

// The server has the message; its pending line stays until the stream shows it.
function awaitDelivery(entry, id) {
  if (state.shown.has(id)) return;
  const item = pendingItem(entry);
  item.classList.add("awaiting");
  item.querySelector(".note").textContent = "sent";
  const firstPending = $("messages").querySelector(".pending:not(.awaiting)");
  $("messages").insertBefore(item, firstPending);
  state.awaiting.set(id, item);
}

async function flushOutbox() {
  if (state.sending || !state.session) return;
  state.sending = true;
  try {
    while (state.outbox.length > 0) {
      const entry = state.outbox[0];
      let result;
      try {
        result = await postJSON("message", {
          username: state.session.username,
          token: state.session.token,
          message: entry.text,
          client_id: entry.clientId,
        });
      } catch {
        setTimeout(flushOutbox, 2000); // offline: keep it and try again
        return;
      }
      if (result.status === 200) {
        state.outbox.shift();
        awaitDelivery(entry, result.data.id);
      } else if (result.status === 429 || result.status >= 500) {
        notify(explanation(result));
        setTimeout(flushOutbox, Math.max(result.retryAfter, 2) * 1000);
        return;
      } else {
        state.outbox.shift(); // refused for good: say why and drop it
        notify(explanation(result));
        if (result.status === 401) {
          // Logged out elsewhere: keep the text in the box for after the next login.
          if (!$("message").value) $("message").value = entry.text;
          forgetSession(explanation(result));
        }
      }
      saveJSON(outboxKey, state.outbox);
      renderOutbox();
    }
  } finally {
    state.sending = false;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const box = $("message");
  const text = box.value.trim();
  if (!text) return;
  notify("");
  state.outbox.push({ clientId: newClientId(), text });
  saveJSON(outboxKey, state.outbox);
  box.value = "";
  renderOutbox();
  flushOutbox();
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

// Accounts

function showSession() {
  const loggedIn = Boolean(state.session);
  $("auth").hidden = loggedIn;
  $("composer").hidden = !loggedIn;
  $("whoami").hidden = !loggedIn;
  $("me").textContent = loggedIn ? state.session.username : "";
}

function forgetSession(message) {
  state.session = null;
  saveJSON(sessionKey, null);
  showSession();
  if (message) notify(message);
}

async function logIn(username, password) {
  const result = await postJSON("login", { username, password });
  if (result.status !== 200) {
    notify(explanation(result, "Could not log in."));
    return false;
  }
  state.session = { username: username.trim(), token: result.data.token };
  saveJSON(sessionKey, state.session);
  // Leave no password in the hidden forms for whoever uses this screen after a log-out.
  $("login-form").reset();
  $("register-form").reset();
  notify("");
  showSession();
  connect(); // reopen the stream with a ticket, so others see us online
  flushOutbox();
  $("message").focus();
  return true;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await logIn($("login-username").value, $("login-password").value);
  } catch {
    notify("The server cannot be reached. Please try again.");
  }
});

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = $("register-username").value;
  const password = $("register-password").value;
  if (password !== $("register-password-again").value) {
    notify("The two passwords are not the same. Please type them again.");
    return;
  }
  try {
    const result = await postJSON("register", { username, password });
    if (result.status !== 200) {
      notify(explanation(result, "Could not register."));
      return;
    }
    await logIn(username, password);
  } catch {
    notify("The server cannot be reached. Please try again.");
  }
});

$("logout").addEventListener("click", async () => {
  const session = state.session;
  forgetSession("");
  connect();
  if (session) {
    try {
      await postJSON("logout", session);
    } catch {
      // The token stays valid on the server until it is evicted; nothing to do here.
    }
  }
});

$("copy-link").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(window.location.href);
    notify("Room link copied. Share it with the people you want to chat with.");
  } catch {
    notify(`Copy this link to share the room: ${window.location.href}`);
  }
});

// Start

rememberRoom(window.location.href, alias);
showSession();
renderOutbox();
loadLatest()
  .catch(() => notify("The conversation could not be loaded yet; retrying."))
  .finally(() => {
    connect();
    flushOutbox();
  });
