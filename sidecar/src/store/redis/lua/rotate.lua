-- KEYS[1] the presented token's mapping; ARGV: presented hash, next hash,
-- next expiry, access jti, its expiry, now.
local id = redis.call('GET', KEYS[1])
if not id then return {'unknown'} end
local fam = 'auth:family:' .. id
local state = redis.call('HMGET', fam, 'current', 'revoked')
if not state[1] then return {'unknown'} end
if state[2] == '1' or state[1] ~= ARGV[1] then
  revoke_family(id, ARGV[6])
  return {'reused', id}
end
local access = fam .. ':access'
redis.call('HSET', fam, 'current', ARGV[2], 'current_expires_at', ARGV[3])
redis.call('ZREMRANGEBYSCORE', access, '-inf', ARGV[6])
redis.call('ZADD', access, ARGV[5], ARGV[4])
redis.call('SET', 'auth:refresh:' .. ARGV[2], id, 'EXAT', ARGV[3])
for _, key in ipairs({KEYS[1], fam, access}) do
  redis.call('EXPIREAT', key, ARGV[3])
end
return {'rotated', id}
