-- WebhookOutbox.take_sending_place (shared.webhooks.outbox): one of a tenant's places for a webhook attempt.
-- KEYS[1]: the tenant's deliveries being attempted, scored by when each claim lapses; KEYS[2]: its deliveries
-- waiting for a place, scored by when each began to wait; KEYS[3]: the due set. ARGV[1]: now; ARGV[2]: when
-- this claim lapses; ARGV[3]: the tenant's places; ARGV[4]: the delivery; ARGV[5]: the sets' TTL (s).
-- Claims lapsed (their process died mid-attempt) free their places first. 1: taken. 0: all taken; the
-- delivery waits (an attempt that ends wakes the longest waiting, webhook_sending_leave.lua), due again
-- when this claim would lapse should nothing wake it.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
