-- WebhookOutbox.leave_sending_place (shared.webhooks.outbox): an attempt ended; its place goes to the tenant's
-- delivery that has waited longest, due now. KEYS[1]: the tenant's deliveries being attempted; KEYS[2]: those
-- waiting; KEYS[3]: the due set. ARGV[1]: the delivery that ends; ARGV[2]: now. A woken delivery that is no
-- longer due (it finished meanwhile) is not brought back (XX).
redis.call('ZREM', KEYS[1], ARGV[1])
local woken = redis.call('ZPOPMIN', KEYS[2])
if woken[1] then
  redis.call('ZADD', KEYS[3], 'XX', ARGV[2], woken[1])
  return woken[1]
end
return false
