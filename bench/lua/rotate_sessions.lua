-- POST with a different session JWT on every request, cycling through a file: S2, S3.
-- Arguments (after `--`): 1 = file with one JWT per line, 2 = JSON body.
-- Thread k of n sends tokens k+1, k+1+n, ... so threads never share a token. When a
-- thread runs past the end of the file it starts again; `BENCH_WRAPPED` reports how often
-- (S3 needs every request to be a new user, so it treats a wrap as an invalid run).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local threads = {}

function setup(thread)
  bench_setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  tokens = bench_read_lines(args[1])
  body = args[2]
  stride = bench_thread_count()
  if stride < 1 then stride = 1 end
  first = (thread_index or 0) + 1
  index = first - stride
  wrapped = 0
  headers = {["Content-Type"] = "application/json"}
end

function request()
  index = index + stride
  if index > #tokens then
    index = first
    wrapped = wrapped + 1
  end
  headers["Authorization"] = "Bearer " .. tokens[index]
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("wrapped") or 0)
  end
  io.write(string.format("BENCH_WRAPPED %d\n", total))
  bench_report(summary, latency, requests)
end
