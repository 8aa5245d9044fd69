-- POST /auth/refresh chains. Refresh tokens are single-use (presenting one
-- twice revokes the session), so every token is used exactly once: a request
-- takes a token from its thread's pool and the response puts the token it
-- returns back. BENCH_REFRESH_TOKENS holds one refresh token a line; thread k
-- of n owns lines k+1, k+1+n, … . The pool of a thread must hold more tokens
-- than the thread has connections (wrk also calls request() once up front).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

local pool = {}
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  math.randomseed(os.time() + 7919 * thread_id)
  local threads = tonumber(os.getenv("BENCH_THREADS") or "") or error("BENCH_THREADS is not set")
  for i, token in ipairs(read_lines("BENCH_REFRESH_TOKENS")) do
    if (i - 1) % threads == thread_id then
      pool[#pool + 1] = token
    end
  end
end

-- BENCH_SPREAD_CLIENTS=1: each request from one of 65,536 client addresses.
local spread = os.getenv("BENCH_SPREAD_CLIENTS") == "1"

function request()
  if spread then
    headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", thread_id or 0,
      math.random(0, 255), math.random(0, 255))
  end
  local token = table.remove(pool)
  if not token then
    -- Every chain of this thread broke; send a request that fails visibly
    -- rather than reuse a token.
    bump("pool_empty")
    token = "pool-empty"
  end
  return wrk.format("POST", "/auth/refresh", headers,
    string.format('{"refresh_token":"%s"}', token))
end

function response(status, headers, body)
  count_status(status)
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then
      pool[#pool + 1] = token
    else
      bump("no_token_in_body")
    end
  end
end
