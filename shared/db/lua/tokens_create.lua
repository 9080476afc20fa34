-- TokenRegistry.create (shared.security.tokens). KEYS[1]: created token names, KEYS[2]: published
-- bootstrap names, KEYS[3]: the new token's record. ARGV[1]: name, ARGV[2]: the token's digest,
-- ARGV[3..]: record fields and values.
-- Stores the token unless the name is taken; returns 'ok', 'bootstrap' or 'exists'.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'bootstrap' end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 'exists' end
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
return 'ok'
