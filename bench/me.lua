-- GET /users/me with valid access tokens, one per seeded session, spread
-- round-robin over the requests (BENCH_TOKENS: one access token a line).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

local requests, next_index = {}, 0

function init(args)
  for _, token in ipairs(read_lines("BENCH_TOKENS")) do
    requests[#requests + 1] =
      wrk.format("GET", "/users/me", { ["Authorization"] = "Bearer " .. token })
  end
  -- Threads start at different tokens so they do not walk in step.
  next_index = (thread_id * 17) % #requests
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
