-- Shared by the scripts that revoke a family: revokes it and every live
-- access token issued from it, announcing each; a family not created yet is
-- marked stillborn. Key prefixes are those of tokenplane_api::storage.
local function revoke_family(id, now)
  local fam = 'auth:family:' .. id
  if redis.call('EXISTS', fam) == 0 then
    redis.call('SET', 'auth:stillborn:' .. id, '1', 'EX', 3600)
    return
  end
  redis.call('HSET', fam, 'revoked', '1')
  local tokens = redis.call('ZRANGEBYSCORE', fam .. ':access', '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #tokens, 2 do
    redis.call('ZADD', 'auth:revoked', tokens[i + 1], tokens[i])
    redis.call('EXPIREAT', 'auth:revoked', tokens[i + 1], 'GT')
    redis.call('PUBLISH', 'auth:revocations', 'jti ' .. tokens[i] .. ' ' .. tokens[i + 1])
  end
end
