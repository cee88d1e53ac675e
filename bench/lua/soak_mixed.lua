-- S5 soak: steady load that mixes the two paths whose state could grow.
-- Even requests: POST /v1/tokens with one of a fixed set of session JWTs (verified once,
-- then session-cache and token-cache hits). Odd requests: POST /internal/v1/tokens for a
-- user never seen before (a vendor call and a new cache entry, which evicts the least
-- recently used one once the cache is full).
-- Arguments (after `--`): 1 = JWT file, 2 = session body, 3 = service key,
-- 4 = user id prefix, 5 = tenant, 6 = embed.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

setup = bench_setup
done = bench_report

function init(args)
  tokens = bench_read_lines(args[1])
  session_body = args[2]
  prefix = args[4]
  tenant = args[5]
  embed = args[6]
  stride = bench_thread_count()
  if stride < 1 then stride = 1 end
  token_index = (thread_index or 0) + 1 - stride
  next_user = thread_index or 0
  turn = 0
  session_headers = {["Content-Type"] = "application/json"}
  internal_headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[3],
  }
end

function request()
  turn = turn + 1
  if turn % 2 == 0 then
    token_index = token_index + stride
    if token_index > #tokens then token_index = (thread_index or 0) + 1 end
    session_headers["Authorization"] = "Bearer " .. tokens[token_index]
    return wrk.format("POST", "/v1/tokens", session_headers, session_body)
  end
  local body = string.format(
    '{"embed":"%s","user":{"id":"%s%d","tenant":"%s","roles":["viewer"]}}',
    embed, prefix, next_user, tenant)
  next_user = next_user + stride
  return wrk.format("POST", "/internal/v1/tokens", internal_headers, body)
end
