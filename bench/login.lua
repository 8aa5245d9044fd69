-- POST /auth/login, rotating over the seeded users (BENCH_USERS: one username
-- a line; BENCH_PASSWORD: their common password).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

local requests, next_index = {}, 0

function init(args)
  local password = os.getenv("BENCH_PASSWORD") or error("BENCH_PASSWORD is not set")
  for _, username in ipairs(read_lines("BENCH_USERS")) do
    local body = string.format('{"username":"%s","password":"%s"}', username, password)
    requests[#requests + 1] = wrk.format("POST", "/auth/login",
      { ["Content-Type"] = "application/json" }, body)
  end
  next_index = (thread_id * 17) % #requests
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
