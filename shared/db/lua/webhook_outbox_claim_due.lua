-- WebhookOutbox.claim_due (shared.webhooks.outbox). KEYS[1]: due set. ARGV[1]: now, ARGV[2]:
-- lease, ARGV[3]: limit. Claims due ids by pushing their due time a lease ahead, so two pollers
-- never send the same delivery at once.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return ids
