-- GET /healthz: the HTTP floor (routing, middleware, a tiny JSON body).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "lib/stats.lua")

wrk.method = "GET"
wrk.path = "/healthz"
