-- GET /admin/users with an admin's access token (BENCH_ADMIN_TOKEN), the
-- query strings taken in turn from BENCH_ADMIN_QUERIES (one a line, e.g.
-- `q=alice` or `role=admin`).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

function init(args)
  local token = os.getenv("BENCH_ADMIN_TOKEN") or error("BENCH_ADMIN_TOKEN is not set")
  local headers = { ["Authorization"] = "Bearer " .. token }
  local requests = {}
  for _, query in ipairs(read_lines("BENCH_ADMIN_QUERIES")) do
    requests[#requests + 1] = wrk.format("GET", "/admin/users?" .. query, headers)
  end
  round_robin(requests)
end
