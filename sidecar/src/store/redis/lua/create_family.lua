-- ARGV: family id, hash of its first refresh token, their expiry, now, the
-- count n of hash arguments, n field/value arguments of the family's hash,
-- then (jti, expiry) pairs of its access tokens. Returns 1 when the family
-- was revoked before it existed, and is now created revoked.
local id, first, exp, now, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local fam, access = 'auth:family:' .. id, 'auth:family:' .. id .. ':access'
redis.call('HSET', fam, unpack(ARGV, 6, 5 + n))
for i = 6 + n, #ARGV, 2 do
  redis.call('ZADD', access, ARGV[i + 1], ARGV[i])
end
redis.call('EXPIREAT', fam, exp)
redis.call('EXPIREAT', access, exp)
redis.call('SET', 'auth:refresh:' .. first, id, 'EXAT', exp)
if redis.call('EXISTS', 'auth:stillborn:' .. id) == 0 then return 0 end
revoke_family(id, now)
return 1
