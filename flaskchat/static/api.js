// Talking to the server. Every URL is resolved against the page's own address,
// so the app works wherever it is mounted and the server never needs to know.

export function urlFor(path) {
  return new URL(path, document.baseURI).toString();
}

async function request(method, path, body, headers = {}) {
  const options = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  // A network failure throws: callers treat that as "try again later".
  const response = await fetch(urlFor(path), options);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  const retryAfter = Number(response.headers.get("Retry-After")) || 0;
  return { status: response.status, data, retryAfter };
}

export const postJSON = (path, body) => request("POST", path, body);
export const getJSON = (path, headers) => request("GET", path, undefined, headers);

// A POST whose successful reply is a file to save (an export), not JSON to read.
export async function postForFile(path, body) {
  const response = await fetch(urlFor(path), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.ok) return { status: response.status, blob: await response.blob(), data: null };
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { status: response.status, blob: null, data };
}

export function explanation(result, fallback = "Something went wrong. Please try again.") {
  return (result.data && typeof result.data.explanation === "string" && result.data.explanation) || fallback;
}

// Rooms this browser created or joined, kept in local storage only: the server
// never lists rooms.
const ROOMS_KEY = "flaskchat:rooms";

export function rememberedRooms() {
  try {
    const rooms = JSON.parse(localStorage.getItem(ROOMS_KEY) || "[]");
    return Array.isArray(rooms) ? rooms : [];
  } catch {
    return [];
  }
}

export function rememberRoom(url, alias) {
  const rooms = rememberedRooms().filter((room) => room.url !== url);
  rooms.unshift({ url, alias, seen: Date.now() });
  localStorage.setItem(ROOMS_KEY, JSON.stringify(rooms.slice(0, 50)));
}

export function forgetRoom(url) {
  localStorage.setItem(ROOMS_KEY, JSON.stringify(rememberedRooms().filter((room) => room.url !== url)));
}

// A room's owner key lives in this browser's local storage and in JSON bodies
// (or an Authorization header), never in a URL the server sees: owner links carry
// it in the fragment, which browsers do not send.
const ownerStorageKey = (roomid) => `flaskchat:owner:${roomid}`;

export function ownerKey(roomid) {
  return localStorage.getItem(ownerStorageKey(roomid));
}

export function keepOwnerKey(roomid, key) {
  if (key) localStorage.setItem(ownerStorageKey(roomid), key);
  else localStorage.removeItem(ownerStorageKey(roomid));
}

export function ownerLink(roomUrl, key) {
  return `${roomUrl}#owner=${encodeURIComponent(key)}`;
}
