// Talking to the server. Every URL is resolved against the page's own address,
// so the app works wherever it is mounted and the server never needs to know.

export function urlFor(path) {
  return new URL(path, document.baseURI).toString();
}

async function request(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
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
export const getJSON = (path) => request("GET", path);

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
