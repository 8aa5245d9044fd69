-- POST /auth/login, rotating over the seeded users (BENCH_USERS: one username
-- a line; BENCH_PASSWORD: their common password).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

function init(args)
  local password = os.getenv("BENCH_PASSWORD") or error("BENCH_PASSWORD is not set")
  local requests = {}
  for _, username in ipairs(read_lines("BENCH_USERS")) do
    local body = string.format('{"username":"%s","password":"%s"}', username, password)
    requests[#requests + 1] = wrk.format("POST", "/auth/login",
      { ["Content-Type"] = "application/json" }, body)
  end
  round_robin(requests)
end
