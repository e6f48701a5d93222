// The room page: history, a live event stream that resumes where it left off,
// a composer whose unsent messages survive a dropped connection, presence,
// accounts, and the owner's moderation. User text is only ever set with textContent.

import {
  explanation,
  forgetRoom,
  getJSON,
  keepOwnerKey,
  ownerKey,
  postForFile,
  postJSON,
  rememberRoom,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const roomKey = window.location.pathname;
const roomid = decodeURIComponent(roomKey.split("/").filter(Boolean).pop() || "");
const roomUrl = window.location.origin + window.location.pathname;

// An owner link (`#owner=KEY`) gives this browser the key; the fragment leaves the
// address bar at once, so the key is in no copied link, bookmark or history entry.
function takeOwnerKeyFromAddress() {
  const key = new URLSearchParams(window.location.hash.slice(1)).get("owner");
  if (key === null) return false;
  if (key) keepOwnerKey(roomid, key);
  window.history.replaceState(window.history.state, "", window.location.pathname + window.location.search);
  return Boolean(key);
}
takeOwnerKeyFromAddress();
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
  cursor: null, // id of the last stream record handled: where a reconnect resumes
  online: [],
  owner: null, // the owner key, once the server has accepted it
  removed: null, // the name the owner banned: the page reads on but offers no way to send
  gone: false, // the room was deleted
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

// `info` for good news (a saved setting), otherwise it reads as a problem.
function notify(text, kind = "alert") {
  $("notice").textContent = text;
  $("notice").dataset.kind = kind;
}

// Names are unique without regard to case; the server has the last word.
function sameName(a, b) {
  return a.normalize("NFKC").toLowerCase() === b.normalize("NFKC").toLowerCase();
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
  item.dataset.author = message.username;
  const when = document.createElement("time");
  when.dateTime = message.time;
  when.textContent = timeFormat.format(new Date(message.time));
  const author = authorName(message.username);
  const text = isolated("text", "");
  text.append(textWithMentions(message.text));
  item.append(when, " ", author, " ", text);
  addMessageActions(item);
  return item;
}

// A control whose visible word is drawn by the stylesheet (from data-label), so
// copying a line copies the conversation, not "Delete Ban"; its accessible name
// says what it acts on.
function actionButton(label, name, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `action action-${label.toLowerCase()}`;
  button.dataset.label = label;
  button.setAttribute("aria-label", name);
  button.addEventListener("click", onClick);
  return button;
}

function isMe(username) {
  return Boolean(state.session) && sameName(username, state.session.username);
}

// The owner may delete any message and ban its author; a member, their own messages.
function addMessageActions(item) {
  item.querySelector(".actions")?.remove();
  const author = item.dataset.author;
  const buttons = [];
  if (state.owner || isMe(author)) {
    buttons.push(actionButton("Delete", "Delete message", () => deleteMessage(item.dataset.id)));
  }
  if (state.owner && !isMe(author)) {
    buttons.push(actionButton("Ban", `Ban ${author}`, () => banMember(author)));
  }
  if (buttons.length === 0) return;
  const actions = document.createElement("span");
  actions.className = "actions";
  actions.append(...buttons);
  item.append(actions);
}

function refreshActions() {
  for (const item of state.shown.values()) addMessageActions(item);
  showOnline(state.online);
}

// Take a message off the page (deleted here or elsewhere). If the keyboard was on
// it, move to a neighbour's control rather than losing focus to the page.
function removeMessage(id) {
  const item = state.shown.get(id);
  state.awaiting.get(id)?.remove();
  state.awaiting.delete(id);
  if (!item) return;
  state.shown.delete(id);
  if (item.contains(document.activeElement)) {
    const neighbour = (sibling) => sibling?.querySelector(".action");
    const next = neighbour(item.nextElementSibling) ?? neighbour(item.previousElementSibling);
    if (next) next.focus();
    else if (!$("composer").hidden) $("message").focus();
  }
  item.remove();
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
  state.online = names;
  const list = $("online");
  const active = document.activeElement;
  const focused = active?.closest("#online") ? active.getAttribute("aria-label") : null;
  list.replaceChildren(
    ...names.map((name) => {
      const item = document.createElement("li");
      item.append(isolated("name", name));
      if (state.owner && !isMe(name)) item.append(" ", actionButton("Ban", `Ban ${name}`, () => banMember(name)));
      return item;
    }),
  );
  // A list redrawn under the keyboard keeps its place.
  if (focused) {
    [...list.querySelectorAll(".action")].find((b) => b.getAttribute("aria-label") === focused)?.focus();
  }
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
  if (state.gone) return;
  const attempt = ++state.connectAttempt;
  if (state.stream) state.stream.close();
  setConnection("connecting", "Connecting…");
  const params = new URLSearchParams();
  const after = state.cursor ?? state.lastId;
  if (after) params.set("after", after);
  if (state.session) {
    try {
      const result = await postJSON("ticket", state.session);
      if (result.status === 200) params.set("ticket", result.data.ticket);
      else if (result.status === 401) forgetSession("Your session has ended. Please log in again.");
      else if (result.status === 403) showRemoved();
      else if (result.status === 404) {
        showGone();
        return;
      }
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
  const handled = (event) => {
    if (event.lastEventId) state.cursor = event.lastEventId;
    return JSON.parse(event.data);
  };
  stream.addEventListener("message", (event) => show([handled(event)]));
  stream.addEventListener("delete", (event) => removeMessage(handled(event).id));
  stream.addEventListener("ban", (event) => {
    const { username } = handled(event);
    if (state.owner) loadSettings();
    // Maybe us, maybe an old ban replayed: asking for a ticket tells which.
    if (isMe(username)) connect();
  });
  stream.addEventListener("unban", (event) => {
    const { username } = handled(event);
    if (state.owner) loadSettings();
    if (state.removed !== null && sameName(username, state.removed)) showReadmitted();
  });
  stream.addEventListener("gone", () => showGone());
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
    if (state.stream !== stream) return;
    scheduleReconnect();
    checkRoomExists();
  });
}

// A stream that fails to open says nothing of why; a room deleted while this
// page was away answers 404 here.
async function checkRoomExists() {
  try {
    const result = await getJSON("settings");
    if (result.status === 404) showGone();
  } catch {
    // Offline: the reconnect will ask again.
  }
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
      } else if (result.status === 403) {
        showRemoved(); // banned: nothing in the outbox can be sent
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
  $("auth").hidden = loggedIn || state.removed !== null || state.gone;
  $("composer").hidden = !loggedIn;
  $("whoami").hidden = !loggedIn;
  $("me").textContent = loggedIn ? state.session.username : "";
  refreshActions();
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
  // The page's address without its fragment: an owner link never leaves this way.
  try {
    await navigator.clipboard.writeText(roomUrl);
    notify("Room link copied. Share it with the people you want to chat with.", "info");
  } catch {
    notify(`Copy this link to share the room: ${roomUrl}`, "info");
  }
});

// Banned: every device of this name was logged out, and the server refuses its
// login and messages. The page reads on, anonymously, and offers nothing to send.
function showRemoved() {
  state.removed = state.session ? state.session.username : (state.removed ?? "");
  state.session = null;
  saveJSON(sessionKey, null);
  state.outbox = [];
  saveJSON(outboxKey, null);
  renderOutbox();
  showSession();
  notify("You were removed from this room by its owner.");
}

function showReadmitted() {
  state.removed = null;
  showSession();
  notify("The owner let you back in: you can log in again.", "info");
}

// The room was deleted (here, or on another page or device): nothing of it is
// left to show, and this browser forgets what it kept for it.
function showGone() {
  if (state.gone) return;
  // Only a holder of the owner key can delete a room: on the owner's pages, that is them.
  const message = state.owner
    ? "You deleted this room. Its link no longer works."
    : "This room was deleted by its owner.";
  state.gone = true;
  clearTimeout(state.reconnectTimer);
  state.connectAttempt++;
  state.stream?.close();
  state.stream = null;
  for (const key of [sessionKey, outboxKey]) saveJSON(key, null);
  keepOwnerKey(roomid, null);
  forgetRoom(roomUrl);
  state.session = null;
  state.owner = null;
  state.shown.clear();
  state.awaiting.clear();
  $("messages").replaceChildren();
  for (const id of ["composer", "auth", "whoami", "owner-tools", "load-older", "copy-link"]) $(id).hidden = true;
  $("online").replaceChildren();
  setConnection("gone", "Deleted");
  notify(message);
}

// Owner tools. The key goes in JSON bodies, and as a bearer token to read the ban
// list; a key the server no longer accepts (replaced from another device) is dropped.

function ownerRefused(result) {
  if (result.status === 401) {
    keepOwnerKey(roomid, null);
    state.owner = null;
    $("owner-tools").hidden = true;
    refreshActions();
    notify("The owner key kept in this browser no longer works: open the room's newest owner link.");
  } else {
    notify(explanation(result));
    if (result.status === 404) checkRoomExists(); // no such member or message, or no room
  }
}

async function loadSettings() {
  const key = state.owner ?? ownerKey(roomid);
  if (!key || state.gone) return;
  let result;
  try {
    result = await getJSON("settings", { Authorization: `Bearer ${key}` });
  } catch {
    return; // offline: the tools appear once the server answers
  }
  if (result.status !== 200) {
    ownerRefused(result);
    return;
  }
  const becameOwner = state.owner === null;
  state.owner = key;
  showSettings(result.data);
  $("owner-tools").hidden = false;
  if (becameOwner) refreshActions();
}

function showSettings(settings) {
  const form = $("settings-form");
  form.elements.registration.value = settings.registration;
  $("retention").value = settings.retention_days ?? "";
  const banned = Array.isArray(settings.banned) ? settings.banned : [];
  $("banned").replaceChildren(
    ...banned.map((name) => {
      const item = document.createElement("li");
      item.append(isolated("name", name), " ", actionButton("Unban", `Unban ${name}`, () => unbanMember(name)));
      return item;
    }),
  );
  $("nobody-banned").hidden = banned.length > 0;
}

// Messages the new retention removed from storage leave this page too.
function dropExpired(days) {
  if (!days) return;
  const cutoff = Date.now() - days * 86400000;
  for (const [id, item] of [...state.shown]) {
    if (Date.parse(item.querySelector("time").dateTime) < cutoff) removeMessage(id);
  }
}

$("settings-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const retention = $("retention").value.trim();
  const body = {
    owner_key: state.owner,
    registration: $("settings-form").elements.registration.value || "open",
    retention_days: retention === "" ? null : Number(retention),
  };
  try {
    const result = await postJSON("settings", body);
    if (result.status !== 200) {
      ownerRefused(result);
      return;
    }
    showSettings(result.data.settings);
    dropExpired(result.data.settings.retention_days);
    notify("Settings saved.", "info");
  } catch {
    notify("The server cannot be reached. Please try again.");
  }
});

async function ownerAction(path, body, done) {
  try {
    const result = await postJSON(path, body);
    if (result.status !== 200) {
      ownerRefused(result);
      return false;
    }
    if (done) notify(done, "info");
    return true;
  } catch {
    notify("The server cannot be reached. Please try again.");
    return false;
  }
}

async function deleteMessage(id) {
  // The owner's key works on any message; a member proves authorship by token.
  const body = state.owner ? { id, owner_key: state.owner } : { id, ...state.session };
  try {
    const result = await postJSON("delete_message", body);
    if (result.status === 200 || result.status === 404) removeMessage(id); // gone either way
    if (result.status === 200) return;
    if (state.owner) ownerRefused(result);
    else if (result.status === 401) forgetSession(explanation(result));
    else notify(explanation(result));
  } catch {
    notify("The server cannot be reached. Please try again.");
  }
}

async function banMember(username) {
  if (await ownerAction("ban", { owner_key: state.owner, username }, `${username} was removed from the room.`)) {
    loadSettings();
  }
}

async function unbanMember(username) {
  if (await ownerAction("unban", { owner_key: state.owner, username }, `${username} may come back.`)) {
    loadSettings();
  }
}

// A name that says what and where, from the room's alias.
function exportName(format) {
  const base = alias.replace(/[^\p{L}\p{N}_-]+/gu, "-").replace(/^-+|-+$/g, "").slice(0, 60) || "room";
  return `${base}.${format === "text" ? "txt" : "json"}`;
}

async function download(format) {
  let result;
  try {
    result = await postForFile("export", { owner_key: state.owner, format });
  } catch {
    notify("The server cannot be reached. Please try again.");
    return;
  }
  if (!result.blob) {
    ownerRefused(result);
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(result.blob);
  link.download = exportName(format);
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

$("export-json").addEventListener("click", () => download("json"));
$("export-text").addEventListener("click", () => download("text"));

const dialog = $("delete-room-dialog");
$("delete-room").addEventListener("click", () => dialog.showModal());
$("delete-room-cancel").addEventListener("click", () => dialog.close());
$("delete-room-confirm").addEventListener("click", async () => {
  const ok = await ownerAction("delete_room", { owner_key: state.owner });
  dialog.close();
  if (ok) showGone();
});
dialog.addEventListener("close", () => {
  if (!state.gone) $("delete-room").focus();
});

// Pasting an owner link into an open room page changes only the fragment.
window.addEventListener("hashchange", () => {
  if (takeOwnerKeyFromAddress()) loadSettings();
});

// Start

rememberRoom(roomUrl, alias);
showSession();
renderOutbox();
loadSettings();
loadLatest()
  .catch(() => notify("The conversation could not be loaded yet; retrying."))
  .finally(() => {
    connect();
    flushOutbox();
  });
