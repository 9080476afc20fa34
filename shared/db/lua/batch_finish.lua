-- batch_try_finish(key, batch_id): once the batch is sealed (no longer validating) and no item is
-- unfinished, it ends (completed, or canceled after a cancel request) with completed_at (unix
-- seconds) and is filed for its webhook (shared.batches.records). A batch that already ended is
-- left alone. Returns 1 when it ended the batch.
-- include: status_table
local function batch_try_finish(key, batch_id)
  if redis.call('HGET', key, 'status') ~= {{BATCH_QUEUED}} then return 0 end
  if tonumber(redis.call('HGET', key, 'unfinished') or '0') > 0 then return 0 end
  local ended = {{BATCH_COMPLETED}}
  -- A canceled batch shows the status its items show.
  if redis.call('HEXISTS', key, 'cancel_requested') == 1 then ended = CANCELED end
  local now = redis.call('TIME')
  redis.call('HSET', key, 'status', ended, 'completed_at', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
  redis.call('ZADD', {{keys.batches_finished()}}, 0, batch_id)
  return 1
end
