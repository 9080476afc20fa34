-- WebhookSecrets.rotate (shared.webhooks.secrets). KEYS[1]: the tenant's secret hash. ARGV[1]: new
-- secret, ARGV[2]: until when the old one still signs. The current secret becomes the previous one
-- (a rotation within the overlap drops the oldest). Returns the hash.
local current = redis.call('HGET', KEYS[1], 'current')
if current then
  redis.call('HSET', KEYS[1], 'previous', current, 'previous_until', ARGV[2])
end
redis.call('HSET', KEYS[1], 'current', ARGV[1])
return redis.call('HGETALL', KEYS[1])
