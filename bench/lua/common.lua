-- Shared by every scenario script (loaded with dofile from the script's directory).
-- `done` prints one machine-readable line that bench/run.py parses:
--   BENCH_RESULT {"requests": ..., "latency_us": {"p50": ...}, ...}
-- Latencies are wrk's (microseconds, closed loop: each connection waits for its answer).

local function percentile(latency, p)
  return latency:percentile(p)
end

function bench_report(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "stdev": %.1f, "max": %d, ' ..
    '"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency.stdev, latency.max,
    percentile(latency, 50), percentile(latency, 75), percentile(latency, 90),
    percentile(latency, 99), percentile(latency, 99.9)))
end

-- Threads are numbered in setup() so that scripts can stride through shared lists
-- (thread k of n takes items k, k+n, k+2n, ...) instead of every thread sending the same.
local thread_count = 0

function bench_setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function bench_thread_count()
  return thread_count
end

function bench_read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if #line > 0 then lines[#lines + 1] = line end
  end
  return lines
end
