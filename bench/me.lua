-- GET /users/me with valid access tokens, one per seeded session, spread
-- round-robin over the requests (BENCH_TOKENS: one access token a line).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

function init(args)
  local requests = {}
  for _, token in ipairs(read_lines("BENCH_TOKENS")) do
    requests[#requests + 1] =
      wrk.format("GET", "/users/me", { ["Authorization"] = "Bearer " .. token })
  end
  round_robin(requests)
end
