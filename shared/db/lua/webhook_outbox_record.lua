-- WebhookOutbox.record and record_once (shared.webhooks.outbox). KEYS[1]: the delivery, KEYS[2]: the
-- due set, KEYS[3]: the marker this delivery sets (the prediction's completed marker, or its latest
-- start/output delivery; the delivery itself when there is none), KEYS[4] (a prediction's delivery,
-- not a batch's): the prediction's index of its deliveries. ARGV[1]: "once" (record it only if the
-- marker is not set yet: one completed delivery per prediction, one webhook per batch) or "latest"
-- (set the marker whatever it held); ARGV[2]: the marker's TTL in seconds; ARGV[3]: due time; ARGV[4]:
-- the delivery id; ARGV[5]: when it was recorded (its score in the index); ARGV[6]: the index's TTL in
-- seconds (a backstop: it goes with the prediction's record); ARGV[7..]: the delivery's field, JSON
-- value pairs. Records it all in one step, so no reader (nor a failover: the script replicates whole)
-- sees half a delivery. Returns 1 when recorded, 0 when a "once" marker was already set.
if ARGV[1] == 'once' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[4])
if KEYS[3] ~= KEYS[1] then redis.call('SET', KEYS[3], ARGV[4], 'EX', tonumber(ARGV[2])) end
if #KEYS >= 4 then
  redis.call('ZADD', KEYS[4], tonumber(ARGV[5]), ARGV[4])
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]))
end
return 1
