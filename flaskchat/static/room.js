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
// A line shows the time of day; the day goes in a separator, the full moment on hover.
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });
const notifyKey = `flaskchat:notify:${roomKey}`;
const MENTION = /@([\p{L}\p{N}_.-]+)/gu;
// An http(s) address with a host, not glued to a word before it ("xhttp://").
const WEB_ADDRESS = /(?<![\p{L}\p{N}])https?:\/\/[\p{L}\p{N}[][^\s]*/giu;
const touchScreen = window.matchMedia("(pointer: coarse)");

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
  waiting: false, // the last send found no connection: pending lines say they wait
  toldOffline: false, // the composer said so once in this outage
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

// `alert` for a problem, `info` for good news (a saved setting), `waiting` for news
// that lasts until the connection returns. A form's own news goes in the region
// inside it (`where`), next to what the person just did; the page-wide notice is
// for news that belongs to no form. Only a problem is an alert: the rest waits its turn.
function notify(text, kind = "alert", where = $("notice")) {
  const problem = Boolean(text) && kind === "alert";
  where.textContent = text;
  where.dataset.kind = kind;
  if (problem) where.setAttribute("role", "alert");
  else where.removeAttribute("role");
  where.setAttribute("aria-live", problem ? "assertive" : "polite");
}

// A form's old news goes as soon as the form is edited or sent again, even when
// the browser's own validation stops the sending before any handler runs. These
// listeners come before the forms' submit handlers, which may say something new.
for (const form of document.querySelectorAll("form")) {
  const notice = form.querySelector(".notice");
  if (!notice) continue;
  const clear = () => notice.dataset.kind !== "waiting" && notify("", "alert", notice);
  for (const type of ["input", "change", "invalid", "submit"]) form.addEventListener(type, clear, true);
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

// Sentence punctuation after an address is not part of it; a ")" or "]" is only
// when it closes one opened inside the address (as on Wikipedia).
function trimAddress(address) {
  let end = address.length;
  const count = (char) => address.slice(0, end).split(char).length - 1;
  while (end > 0) {
    const last = address[end - 1];
    if (".,;:!?'\"".includes(last)) end--;
    else if (last === ")" && count(")") > count("(")) end--;
    else if (last === "]" && count("]") > count("[")) end--;
    else break;
  }
  return address.slice(0, end);
}

// A link only for an http(s) URL with a host; it opens apart from this page,
// which it can neither reach (noopener) nor learn the address of (noreferrer).
function webLink(address) {
  let url;
  try {
    url = new URL(address);
  } catch {
    return null;
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname) return null;
  const link = document.createElement("a");
  link.href = url.href;
  link.rel = "noopener noreferrer";
  link.target = "_blank";
  link.textContent = address;
  return link;
}

// A message's text as DOM nodes: web addresses as links, mentions marked, the
// rest plain text.
function messageText(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(WEB_ADDRESS)) {
    const address = trimAddress(match[0]);
    const link = webLink(address);
    if (!link) continue;
    fragment.append(textWithMentions(text.slice(last, match.index)), link);
    last = match.index + address.length;
  }
  fragment.append(textWithMentions(text.slice(last)));
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
  author.append("<", colouredName(username), ">");
  return author;
}

// Each name keeps one colour on every page and device: a hash of the name, as names
// compare, picks one of the stylesheet's twelve (each readable in both themes).
const NAME_COLOURS = 12;

function colouredName(username) {
  let hash = 2166136261; // FNV-1a
  for (const char of username.normalize("NFKC").toLowerCase()) {
    hash = Math.imul(hash ^ char.codePointAt(0), 16777619) >>> 0;
  }
  const element = isolated("name", username);
  element.classList.add(`name-c${hash % NAME_COLOURS}`);
  return element;
}

function messageItem(message) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.id = message.id;
  item.dataset.author = message.username;
  item.dataset.line = message.line;
  const moment = new Date(message.time);
  item.dataset.day = dayFormat.format(moment);
  const when = document.createElement("time");
  when.dateTime = message.time;
  when.textContent = timeFormat.format(moment);
  when.title = fullFormat.format(moment);
  const author = authorName(message.username);
  const text = isolated("text", "");
  text.append(messageText(message.text));
  item.append(when, " ", author, " ", text);
  addMessageActions(item);
  markMine(item);
  return item;
}

// Your own lines are tinted, and say so to assistive technology too.
function markMine(item) {
  const mine = isMe(item.dataset.author);
  item.classList.toggle("mine", mine);
  if (mine) item.setAttribute("aria-describedby", "mine-hint");
  else item.removeAttribute("aria-describedby");
}

// The first line of each day (in the viewer's time zone) carries that day's name,
// inside the line itself so the list holds one item per message.
function markDays() {
  let previous = null;
  for (const item of $("messages").querySelectorAll("li.message:not(.pending)")) {
    const day = item.dataset.day;
    let label = item.querySelector(":scope > .day");
    if (day === previous) label?.remove();
    else if (!label || label.textContent !== day) {
      label?.remove();
      label = document.createElement("span");
      label.className = "day";
      label.textContent = day;
      item.prepend(label);
    }
    previous = day;
  }
}

// Copying several lines gives the seed's conversation lines, as get_conversation
// has them; a piece of one message copies as selected.
function copyLines(event) {
  const selection = document.getSelection();
  if (!selection || selection.isCollapsed || !event.clipboardData) return;
  const range = selection.getRangeAt(0);
  const items = [...$("messages").querySelectorAll("li.message[data-line]")].filter((item) =>
    range.intersectsNode(item),
  );
  if (items.length < 2) return;
  event.preventDefault();
  event.clipboardData.setData("text/plain", items.map((item) => item.dataset.line).join("\n"));
}
$("messages").addEventListener("copy", copyLines);

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
  for (const item of state.shown.values()) {
    addMessageActions(item);
    markMine(item);
  }
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
  markDays();
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
    keepInPlace(list, () => list.prepend(...items));
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
    // Scroll the list alone: scrolling the page would push a phone's header and
    // forms off the first screen.
    list.scrollTop = list.scrollHeight;
  }
  markDays();
  return fresh.length;
}

// Change the list without moving what the reader is looking at: the first line
// still in view keeps its distance from the list's top edge.
function keepInPlace(list, change) {
  const top = list.getBoundingClientRect().top;
  const anchor = [...list.children].find((item) => item.getBoundingClientRect().bottom > top);
  const before = anchor ? anchor.getBoundingClientRect().top - top : 0;
  change();
  if (anchor) list.scrollTop += anchor.getBoundingClientRect().top - list.getBoundingClientRect().top - before;
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

// Desktop notifications while the tab is hidden: for a mention of your name or for
// every message, as chosen for this room in this browser. Each replaces the room's
// previous one (same tag), so they never pile up.
function notifyChoice() {
  const choice = localStorage.getItem(notifyKey);
  return choice === "all" || choice === "off" ? choice : "mentions";
}

function mentionsMe(text) {
  if (!state.session) return false;
  return [...text.matchAll(MENTION)].some((match) => sameName(match[1], state.session.username));
}

function notifyDesktop(message) {
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  if (isMe(message.username)) return;
  const choice = notifyChoice();
  if (choice === "off" || (choice === "mentions" && !mentionsMe(message.text))) return;
  try {
    const note = new Notification(`${message.username} in ${alias}`, {
      body: message.text.slice(0, 200),
      tag: roomKey,
    });
    note.onclick = () => {
      window.focus();
      note.close();
    };
  } catch {
    // Some mobile browsers only notify from a service worker: the title still counts.
  }
}

function showNotificationControls() {
  const supported = "Notification" in window;
  $("notifications").hidden = !supported || state.gone;
  if (!supported) return;
  $("notify-choice").value = notifyChoice();
  $("allow-notifications").hidden = Notification.permission !== "default";
  $("notifications-blocked").hidden = Notification.permission !== "denied";
}

$("allow-notifications").addEventListener("click", async () => {
  try {
    await Notification.requestPermission();
  } catch {
    // Refused or unsupported: the controls below say what the browser decided.
  }
  showNotificationControls();
});
$("notify-choice").addEventListener("change", () => localStorage.setItem(notifyKey, $("notify-choice").value));

function showOnline(names) {
  state.online = names;
  const list = $("online");
  const active = document.activeElement;
  const focused = active?.closest("#online") ? active.getAttribute("aria-label") : null;
  list.replaceChildren(
    ...names.map((name) => {
      const item = document.createElement("li");
      item.append(colouredName(name));
      if (state.owner && !isMe(name)) item.append(" ", actionButton("Ban", `Ban ${name}`, () => banMember(name)));
      return item;
    }),
  );
  // A list redrawn under the keyboard keeps its place.
  if (focused) {
    [...list.querySelectorAll(".action")].find((b) => b.getAttribute("aria-label") === focused)?.focus();
  }
}

// An empty room says so, and how to take part, until its first line (or a line
// being sent) appears; only once history has loaded, so it never flashes.
let historyLoaded = false;

function showEmptyRoom() {
  const notice = $("empty-room");
  notice.hidden = !historyLoaded || state.gone || $("messages").children.length > 0;
  if (state.session) notice.textContent = "No messages yet. Say the first one.";
  else if (state.removed !== null) notice.textContent = "No messages yet.";
  else notice.textContent = "No messages yet. Register or log in to say the first one.";
}
new MutationObserver(showEmptyRoom).observe($("messages"), { childList: true });

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
  historyLoaded = true;
  showEmptyRoom();
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
  stream.addEventListener("message", (event) => {
    const message = handled(event);
    if (show([message])) notifyDesktop(message);
  });
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
  // The whole list opens the stream; after it, only who came and who went.
  stream.addEventListener("presence-change", (event) => {
    const { joined, left } = JSON.parse(event.data);
    const names = new Set(state.online);
    for (const name of left) names.delete(name);
    for (const name of joined) names.add(name);
    showOnline([...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
  });
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
window.addEventListener("offline", () => {
  setConnection("offline", "Offline");
  if (state.outbox.length > 0) waitForConnection();
});

// Leaving the page (closing it, or its going into the back-forward cache) ends its
// stream now, so the others see this person go without waiting for the server to
// notice a dead connection; coming back from the cache opens a fresh one.
window.addEventListener("pagehide", () => {
  clearTimeout(state.reconnectTimer);
  state.connectAttempt++; // a connect() still waiting for its ticket gives up
  state.stream?.close();
  state.stream = null;
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) connect();
});

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
  note.textContent = state.waiting ? "waiting for connection" : "sending…";
  item.append(author, " ", text, " ", note);
  return item;
}

function renderOutbox() {
  const list = $("messages");
  for (const item of list.querySelectorAll(".pending:not(.awaiting)")) item.remove();
  for (const entry of state.outbox) list.append(pendingItem(entry));
}

const OFFLINE = "You are offline: what you send waits here and goes when the connection returns.";

// The server cannot be reached: the unsent lines say they wait, and the composer
// says once (per outage) that they will go by themselves.
function waitForConnection() {
  state.waiting = true;
  for (const note of $("messages").querySelectorAll(".pending:not(.awaiting) .note")) {
    note.textContent = "waiting for connection";
  }
  if (state.toldOffline) return;
  state.toldOffline = true;
  notify(OFFLINE, "waiting", $("composer-notice"));
}

function connectionBack() {
  state.waiting = false;
  state.toldOffline = false;
  renderOutbox();
  if ($("composer-notice").textContent === OFFLINE) notify("", "info", $("composer-notice"));
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
        waitForConnection();
        setTimeout(flushOutbox, 2000); // offline: keep it and try again
        return;
      }
      if (state.waiting) connectionBack();
      if (result.status === 200) {
        state.outbox.shift();
        awaitDelivery(entry, result.data.id);
      } else if (result.status === 429 || result.status >= 500) {
        notify(explanation(result), "alert", $("composer-notice"));
        setTimeout(flushOutbox, Math.max(result.retryAfter, 2) * 1000);
        return;
      } else if (result.status === 403) {
        showRemoved(); // banned: nothing in the outbox can be sent
        return;
      } else {
        state.outbox.shift(); // refused for good: say why and drop it
        if (result.status !== 401) notify(explanation(result), "alert", $("composer-notice"));
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
  state.outbox.push({ clientId: newClientId(), text });
  saveJSON(outboxKey, state.outbox);
  box.value = "";
  renderOutbox();
  // The new line is the last of the list: keep it in view, sent or waiting.
  $("messages").lastElementChild?.scrollIntoView({ block: "nearest" });
  if (!navigator.onLine) waitForConnection();
  flushOutbox();
});

$("message").addEventListener("keydown", (event) => {
  if (suggestionKey(event)) return;
  // Soft keyboards have no Shift+Enter: on a touch screen Enter adds a line and
  // the Send button sends.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !touchScreen.matches) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

function describeEnterKey() {
  const box = $("message");
  box.placeholder = touchScreen.matches ? "Enter adds a line, Send sends" : "Enter sends, Shift+Enter adds a line";
  box.enterKeyHint = touchScreen.matches ? "enter" : "send";
}
touchScreen.addEventListener("change", describeEnterKey);
describeEnterKey();

// Completing a name after "@": the room's online names in a listbox under the
// composer, driven from the message box (arrows, Enter or Tab, Escape), which
// keeps the focus and points at the chosen option (aria-activedescendant).
const MAX_SUGGESTIONS = 8;
const MENTION_BEFORE_CARET = /(?:^|[^\p{L}\p{N}_.-])@([\p{L}\p{N}_.-]*)$/u;
const suggestions = { names: [], active: -1, start: -1 };

function folded(name) {
  return name.normalize("NFKC").toLowerCase();
}

function suggestNames() {
  const box = $("message");
  const match =
    box.selectionStart === box.selectionEnd ? MENTION_BEFORE_CARET.exec(box.value.slice(0, box.selectionStart)) : null;
  const typed = match ? folded(match[1]) : "";
  suggestions.names = match
    ? state.online.filter((name) => !isMe(name) && folded(name).startsWith(typed)).slice(0, MAX_SUGGESTIONS)
    : [];
  // A name typed in full, with nothing longer to offer, leaves Enter to send.
  if (suggestions.names.length === 1 && folded(suggestions.names[0]) === typed) suggestions.names = [];
  suggestions.start = match ? box.selectionStart - match[1].length - 1 : -1;
  suggestions.active = suggestions.names.length ? 0 : -1;
  drawSuggestions();
}

function drawSuggestions() {
  const list = $("mention-options");
  list.replaceChildren(
    ...suggestions.names.map((name, index) => {
      const option = document.createElement("li");
      option.id = `mention-option-${index}`;
      option.setAttribute("role", "option");
      option.setAttribute("aria-selected", String(index === suggestions.active));
      option.append(isolated("name", name));
      option.addEventListener("mousedown", (event) => event.preventDefault()); // keep the focus in the box
      option.addEventListener("click", () => completeName(index));
      return option;
    }),
  );
  list.hidden = suggestions.names.length === 0;
  if (suggestions.active >= 0) $("message").setAttribute("aria-activedescendant", `mention-option-${suggestions.active}`);
  else $("message").removeAttribute("aria-activedescendant");
}

function closeSuggestions() {
  suggestions.names = [];
  suggestions.active = -1;
  drawSuggestions();
}

function completeName(index) {
  const box = $("message");
  box.setRangeText(`@${suggestions.names[index]} `, suggestions.start, box.selectionStart, "end");
  closeSuggestions();
  box.focus();
}

// Whether the key went to the open list of names rather than to the message.
function suggestionKey(event) {
  if ($("mention-options").hidden || event.isComposing) return false;
  const count = suggestions.names.length;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    suggestions.active = (suggestions.active + (event.key === "ArrowDown" ? 1 : count - 1)) % count;
    drawSuggestions();
  } else if ((event.key === "Enter" || event.key === "Tab") && !event.shiftKey) {
    completeName(suggestions.active);
  } else if (event.key === "Escape") {
    closeSuggestions();
  } else {
    return false;
  }
  event.preventDefault();
  return true;
}

$("message").addEventListener("input", suggestNames);
$("message").addEventListener("blur", closeSuggestions);

// Accounts

function showSession() {
  const loggedIn = Boolean(state.session);
  $("auth").hidden = loggedIn || state.removed !== null || state.gone;
  $("composer").hidden = !loggedIn;
  $("whoami").hidden = !loggedIn;
  $("me").textContent = loggedIn ? state.session.username : "";
  refreshActions();
  showEmptyRoom();
}

// One form at a time, so the one that matters fits on a phone's first screen:
// Register for someone new to this room, Log in for whoever has logged in here.
const accountKey = `flaskchat:account:${roomKey}`;
const authTabs = [$("register-tab"), $("login-tab")];

function chooseAuthForm(tab, { focus = false } = {}) {
  for (const each of authTabs) {
    const chosen = each === tab;
    each.setAttribute("aria-selected", String(chosen));
    each.tabIndex = chosen ? 0 : -1;
    $(each.getAttribute("aria-controls")).hidden = !chosen;
  }
  if (focus) tab.focus();
}

for (const tab of authTabs) {
  tab.addEventListener("click", () => chooseAuthForm(tab));
  tab.addEventListener("keydown", (event) => {
    const index = authTabs.indexOf(tab);
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: authTabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    chooseAuthForm(authTabs[(next + authTabs.length) % authTabs.length], { focus: true });
  });
}
chooseAuthForm(localStorage.getItem(accountKey) || state.session ? $("login-tab") : $("register-tab"));

function forgetSession(message) {
  state.session = null;
  saveJSON(sessionKey, null);
  showSession();
  notify(message, "alert", $("login-notice"));
}

async function logIn(username, password) {
  const result = await postJSON("login", { username, password });
  if (result.status !== 200) {
    notify(explanation(result, "Could not log in."), "alert", $("login-notice"));
    return false;
  }
  state.session = { username: username.trim(), token: result.data.token };
  saveJSON(sessionKey, state.session);
  localStorage.setItem(accountKey, "1");
  chooseAuthForm($("login-tab")); // what a later log-out offers
  // Leave no password in the hidden forms for whoever uses this screen after a log-out.
  $("login-form").reset();
  $("register-form").reset();
  notify("");
  notify("", "alert", $("login-notice"));
  notify("", "alert", $("register-notice"));
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
    notify("The server cannot be reached. Please try again.", "alert", $("login-notice"));
  }
});

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = $("register-username").value;
  const password = $("register-password").value;
  if (password !== $("register-password-again").value) {
    notify("The two passwords are not the same. Please type them again.", "alert", $("register-notice"));
    return;
  }
  try {
    const result = await postJSON("register", { username, password });
    if (result.status !== 200) {
      notify(explanation(result, "Could not register."), "alert", $("register-notice"));
      return;
    }
    await logIn(username, password);
  } catch {
    notify("The server cannot be reached. Please try again.", "alert", $("register-notice"));
  }
});

$("logout").addEventListener("click", async () => {
  const session = state.session;
  forgetSession("");
  connect(); // closes this person's stream at once, before the logout is even sent
  // The Log out button is gone: the keyboard goes to where one logs in again.
  if ($("login-form").hidden) $("login-tab")?.click();
  $("login-username").focus();
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
  for (const key of [sessionKey, outboxKey, notifyKey, accountKey]) localStorage.removeItem(key);
  keepOwnerKey(roomid, null);
  forgetRoom(roomUrl);
  state.session = null;
  state.owner = null;
  state.shown.clear();
  state.awaiting.clear();
  $("messages").replaceChildren();
  for (const id of ["composer", "auth", "whoami", "owner-tools", "load-older", "copy-link", "notifications"]) {
    $(id).hidden = true;
  }
  $("online").replaceChildren();
  setConnection("gone", "Deleted");
  notify(message);
}

// Owner tools. The key goes in JSON bodies, and as a bearer token to read the ban
// list; a key the server no longer accepts (replaced from another device) is dropped.

function ownerRefused(result, where = $("notice")) {
  if (result.status === 401) {
    keepOwnerKey(roomid, null);
    state.owner = null;
    $("owner-tools").hidden = true;
    refreshActions();
    notify("The owner key kept in this browser no longer works: open the room's newest owner link.");
  } else {
    notify(explanation(result), "alert", where);
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
      item.append(colouredName(name), " ", actionButton("Unban", `Unban ${name}`, () => unbanMember(name)));
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
      ownerRefused(result, $("settings-notice"));
      return;
    }
    showSettings(result.data.settings);
    dropExpired(result.data.settings.retention_days);
    notify("Settings saved.", "info", $("settings-notice"));
  } catch {
    notify("The server cannot be reached. Please try again.", "alert", $("settings-notice"));
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
showNotificationControls();
showSession();
renderOutbox();
loadSettings();
loadLatest()
  .catch(() => notify("The conversation could not be loaded yet; retrying."))
  .finally(() => {
    connect();
    flushOutbox();
  });
