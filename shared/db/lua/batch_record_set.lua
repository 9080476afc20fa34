-- BatchStore (shared.batches.records): fields set on a batch record that exists. KEYS[1]: the record;
-- ARGV: field, value pairs. A record that expired meanwhile (a cancel racing its expiry) is not brought
-- back: an HSET would make a hash of those fields alone, without its TTL. 1: set; 0: no such batch.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
