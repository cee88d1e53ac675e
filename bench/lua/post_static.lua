-- The same POST on every request: S1 (cache hit) and its framework-floor counterpart.
-- Arguments (after `--`): 1 = JSON body. The Authorization header comes from `wrk -H`.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

setup = bench_setup
done = bench_report

function init(args)
  wrk.method = "POST"
  wrk.body = args[1]
  wrk.headers["Content-Type"] = "application/json"
end
