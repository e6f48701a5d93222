import { explanation, postJSON, rememberRoom, rememberedRooms, urlFor } from "./api.js";

const form = document.getElementById("create-room");
const alias = document.getElementById("alias");
const status = document.getElementById("lobby-status");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  status.textContent = "";
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const result = await postJSON("createroom", { alias: alias.value });
    if (result.status === 200 && result.data && result.data.roomid) {
      const url = urlFor(`${encodeURIComponent(result.data.roomid)}/`);
      rememberRoom(url, alias.value.trim());
      window.location.assign(url);
      return;
    }
    status.textContent = explanation(result, "The room could not be created.");
  } catch {
    status.textContent = "The server cannot be reached. Please try again.";
  } finally {
    button.disabled = false;
  }
});

function showRememberedRooms() {
  const rooms = rememberedRooms();
  const list = document.getElementById("my-rooms");
  list.replaceChildren();
  for (const room of rooms) {
    if (!/^https?:/.test(String(room.url))) continue; // only links this page stored
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = room.url;
    link.textContent = room.alias || room.url;
    item.append(link);
    list.append(item);
  }
  document.getElementById("my-rooms-section").hidden = rooms.length === 0;
}

showRememberedRooms();
