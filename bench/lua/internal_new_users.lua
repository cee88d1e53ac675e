-- POST /internal/v1/tokens for a new user on every request: S5 fills the token cache.
-- Arguments (after `--`): 1 = service key, 2 = user id prefix, 3 = users wanted in total,
-- 4 = tenant, 5 = embed.
-- Thread k of n takes users k, k+n, k+2n, ... Once a thread has had as many answers as
-- its share of users it prints BENCH_THREAD_DONE and bench/run.py interrupts wrk (wrk
-- itself only stops at its -d deadline). Requests in flight at that moment are still new
-- users, so the broker mints slightly more tokens than asked (at most one per
-- connection); the cache's max_entries bounds what it keeps.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

setup = bench_setup
done = bench_report

function init(args)
  prefix = args[2]
  local total = tonumber(args[3]) or 0
  tenant = args[4]
  embed = args[5]
  stride = bench_thread_count()
  if stride < 1 then stride = 1 end
  next_user = thread_index or 0
  share = math.floor((total - next_user + stride - 1) / stride)
  answered = 0
  finished = false
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[1],
  }
end

function request()
  local body = string.format(
    '{"embed":"%s","user":{"id":"%s%d","tenant":"%s","roles":["viewer"]}}',
    embed, prefix, next_user, tenant)
  next_user = next_user + stride
  return wrk.format("POST", "/internal/v1/tokens", headers, body)
end

function response(status, response_headers, response_body)
  answered = answered + 1
  if not finished and answered >= share then
    finished = true
    io.write("BENCH_THREAD_DONE\n")
    io.flush()
  end
end
