-- Claims from a sorted set scored by due time: the webhook outbox's due deliveries
-- (WebhookOutbox.claim_due), finished batches (BatchStore.claim_finished) and ended predictions
-- whose ending is not yet followed up (PredictionLifecycle.follow_up_missed). KEYS[1]: the set.
-- ARGV[1]: now, ARGV[2]: lease, ARGV[3]: limit. Claims the ids due by now by pushing their score a
-- lease ahead, so two claimers never take the same id at once; one that dies leaves it due again.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return ids
