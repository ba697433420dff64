-- KEYS[1] the code; ARGV[1] the spent state, ARGV[2] its expiry. Returns
-- the state before.
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.sub(v, 1, 10) == '{"unspent"' then
  redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
end
return v
