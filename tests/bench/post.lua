-- wrk script: an authenticated message POST, a new text each time.
-- Set ROOM, USERNAME and TOKEN in the environment.
local room = os.getenv("ROOM")
local body_start = '{"username": "' .. os.getenv("USERNAME") .. '", "token": "' .. os.getenv("TOKEN") .. '", "message": "bench '
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  return wrk.format(nil, "/" .. room .. "/message", nil, body_start .. counter .. '"}')
end
