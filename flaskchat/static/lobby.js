import {
  explanation,
  keepOwnerKey,
  ownerLink,
  postJSON,
  rememberRoom,
  rememberedRooms,
  urlFor,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const form = $("create-room");
const alias = $("alias");
const status = $("lobby-status");

// A new room's two links stay on screen until the person has kept them: the owner
// link is shown once and nobody can send it again.
function showCreated(roomid, name, key) {
  const url = urlFor(`${encodeURIComponent(roomid)}/`);
  rememberRoom(url, name);
  keepOwnerKey(roomid, key); // this browser is the owner's
  $("created-alias").textContent = name;
  $("room-link").value = url;
  $("owner-link").value = ownerLink(url, key);
  $("open-room").href = url;
  $("copy-status").textContent = "";
  $("created").hidden = false;
  // The keyboard goes on to what the person needs next: keeping the room link.
  $("copy-room-link").focus();
  showRememberedRooms();
}

// An old complaint goes as soon as the name is edited, or when the browser's own
// check stops the next try before any of this script runs.
for (const type of ["input", "invalid"]) form.addEventListener(type, () => (status.textContent = ""), true);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  status.textContent = "";
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const result = await postJSON("createroom", { alias: alias.value });
    if (result.status === 200 && result.data && result.data.roomid) {
      showCreated(result.data.roomid, alias.value.trim(), result.data.owner_key);
      form.reset();
      return;
    }
    status.textContent = explanation(result, "The room could not be created.");
  } catch {
    status.textContent = "The server cannot be reached. Please try again.";
  } finally {
    button.disabled = false;
  }
});

async function copyField(field, copied) {
  try {
    await navigator.clipboard.writeText(field.value);
    $("copy-status").textContent = copied;
  } catch {
    field.select(); // let the person copy it themselves
    $("copy-status").textContent = "Copying was refused: the link is selected, copy it with your keyboard or menu.";
  }
}

$("copy-room-link").addEventListener("click", () => copyField($("room-link"), "Room link copied."));
$("copy-owner-link").addEventListener("click", () =>
  copyField($("owner-link"), "Owner link copied. Keep it secret."),
);

function showRememberedRooms() {
  const rooms = rememberedRooms();
  const list = $("my-rooms");
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
  $("my-rooms-section").hidden = rooms.length === 0;
}

showRememberedRooms();
