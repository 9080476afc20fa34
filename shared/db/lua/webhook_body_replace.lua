-- DataRemoval.remove (shared.predictions.retention): a pending webhook delivery's body, replaced by its
-- data-removed form. KEYS[1]: the delivery; ARGV[1]: its body as read; ARGV[2]: the body to keep.
-- Only while the body is still the one read: a delivery finished meanwhile keeps none, and one gone is
-- not brought back.
if redis.call('HGET', KEYS[1], 'body') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'body', ARGV[2])
  return 1
end
return 0
