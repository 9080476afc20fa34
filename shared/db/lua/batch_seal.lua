-- BatchStore.seal (shared.batches.records). KEYS[1]: the batch record. ARGV[1]: the batch id. A
-- batch done validating becomes queued, and ends at once when no item is left unfinished (all
-- refused, or all already ended). Returns 1 when it ended.
-- include: status_table
-- include: batch_finish
if redis.call('HGET', KEYS[1], 'status') == {{BATCH_VALIDATING}} then redis.call('HSET', KEYS[1], 'status', {{BATCH_QUEUED}}) end
return batch_try_finish(KEYS[1], ARGV[1])
