-- Hooks shared by every wrk scenario script (loaded with dofile).
--
-- Each wrk thread counts the HTTP statuses it sees in response(); done()
-- gathers the per-thread counts through setup(thread) / thread:get and prints
-- one machine-readable line:
--   BENCH_RESULT {"requests":…,"duration_us":…,"latency_us":{"p50":…,"p99":…},…}
-- A scenario script that needs the response body defines its own response()
-- and calls count_status(status) from it.

local threads = {}
local next_thread_id = 0

-- Runs in the main Lua state once per thread, before that thread's init().
function setup(thread)
  thread:set("thread_id", next_thread_id)
  next_thread_id = next_thread_id + 1
  threads[#threads + 1] = thread
end

-- Per-thread state (each thread has its own Lua state).
thread_id = 0
statuses = {}
non2xx = 0
counters = {}

function count_status(status)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function bump(name)
  counters[name] = (counters[name] or 0) + 1
end

function response(status, headers, body)
  count_status(status)
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  table.sort(parts)
  return "{" .. table.concat(parts, ",") .. "}"
end

local function int(x)
  return math.floor(tonumber(x) or 0)
end

function done(summary, latency, requests)
  local all_statuses, all_counters, all_non2xx = {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses") or {}) do
      all_statuses[k] = (all_statuses[k] or 0) + v
    end
    for k, v in pairs(t:get("counters") or {}) do
      all_counters[k] = (all_counters[k] or 0) + v
    end
    all_non2xx = all_non2xx + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  -- BENCH_QUANTILES=1: also the latency at every 0.1 percent, so that the
  -- distributions of several short runs can be merged (bench/run.sh --million).
  local quantiles = ""
  if os.getenv("BENCH_QUANTILES") == "1" then
    local q = {}
    for i = 1, 1000 do
      q[i] = tostring(int(latency:percentile(i / 10)))
    end
    quantiles = ',"quantiles_us":[' .. table.concat(q, ",") .. "]"
  end
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
    '"non2xx":%d,"statuses":%s,"counters":%s,"threads":%d%s}\n',
    int(summary.requests), int(summary.duration), int(summary.bytes),
    int(e.connect), int(e.read), int(e.write), int(e.status), int(e.timeout),
    int(latency.min), tonumber(latency.mean) or 0, tonumber(latency.stdev) or 0,
    int(latency:percentile(50)), int(latency:percentile(90)),
    int(latency:percentile(99)), int(latency:percentile(99.9)), int(latency.max),
    all_non2xx, json_object(all_statuses), json_object(all_counters), #threads, quantiles))
end

-- The non-empty lines of the file named by environment variable `var`.
function read_lines(var)
  local path = os.getenv(var)
  if not path or path == "" then
    error(var .. " is not set")
  end
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  if #lines == 0 then
    error(var .. " (" .. path .. ") has no lines")
  end
  return lines
end

-- Makes wrk send the prepared requests in turn. Threads start at different
-- places so that they do not walk in step.
function round_robin(prepared)
  local next_index = (thread_id * 17) % #prepared
  request = function()
    next_index = next_index % #prepared + 1
    return prepared[next_index]
  end
end
