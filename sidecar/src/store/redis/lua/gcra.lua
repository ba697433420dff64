-- GCRA over several subjects in one call, on Redis's clock so that issuers
-- with skewed clocks agree. KEYS the subjects' keys; ARGV an interval (ms)
-- and a burst per key. Counts one request against each in turn; returns
-- {0, 0}, or the 1-based index of the first subject over its limit and the
-- milliseconds to wait.
--
-- The state is not replicated: it lives for a burst window, and after a
-- failover a budget starting afresh is harmless, while replicating every
-- count would double Redis's work per token.
redis.set_repl(redis.REPL_NONE)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i, key in ipairs(KEYS) do
  local interval, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  local start = math.max(tat, now)
  -- compared before adding the interval, which can round above itself
  local over = start - now - interval * (burst - 1)
  if over > 0 then return {i, math.ceil(over)} end
  local next = start + interval
  redis.call('SET', key, tostring(next), 'PX', math.ceil(next - now))
end
return {0, 0}
