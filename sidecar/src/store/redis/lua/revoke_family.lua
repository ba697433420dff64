-- ARGV[1] the family id, ARGV[2] now (revoke_family_fn.lua precedes this).
revoke_family(ARGV[1], ARGV[2])
return 1
