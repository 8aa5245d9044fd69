-- POST /auth/signup with a new account in every request: the username is
-- BENCH_PREFIX, the wrk thread id and a per-thread counter, so bodies never
-- repeat within a run nor across runs on the same database.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

local prefix, password, counter = "", "", 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  prefix = os.getenv("BENCH_PREFIX") or error("BENCH_PREFIX is not set")
  password = os.getenv("BENCH_PASSWORD") or error("BENCH_PASSWORD is not set")
end

function request()
  counter = counter + 1
  local username = string.format("%s-%d-%d", prefix, thread_id, counter)
  local body = string.format(
    '{"username":"%s","email":"%s@bench.example.com","password":"%s"}',
    username, username, password)
  return wrk.format("POST", "/auth/signup", headers, body)
end
