-- DataRemoval.remove_batch_inputs (shared.predictions.retention). KEYS[1]: the batch record.
-- Marks a batch whose data was removed, while its record exists (an expired one is not brought
-- back without its TTL).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'data_removed', 1)
return 1
