-- BatchStore.claim_finished (shared.batches.records). KEYS[1]: the finished set. ARGV[1]: now,
-- ARGV[2]: lease, ARGV[3]: limit. Claims finished batches by pushing their score a lease ahead (as
-- the webhook outbox claims due deliveries).
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return ids
