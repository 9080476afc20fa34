-- A batch's counts (shared.batches.counts), for a script whose KEYS[1] is the prediction record.
-- batch_moved(current, target) follows the record's move in its batch's counts: the batch's
-- n:<status> counts move by one and, on the item's first terminal status, unfinished drops by one;
-- the move that takes it to zero ends the batch (batch_try_finish).
-- include: status_table
-- include: batch_finish
local BATCH_TERMINAL = {{TERMINAL}}
local function batch_moved(current, target)
  local raw = redis.call('HGET', KEYS[1], 'batch_id')
  if not raw then return end
  local batch_id = cjson.decode(raw)
  if type(batch_id) ~= 'string' then return end
  local key = {{keys.batch_record(batch_id)}}
  if redis.call('EXISTS', key) == 0 then return end
  redis.call('HINCRBY', key, 'n:' .. current, -1)
  redis.call('HINCRBY', key, 'n:' .. target, 1)
  if BATCH_TERMINAL[target] and not BATCH_TERMINAL[current] then
    if redis.call('HINCRBY', key, 'unfinished', -1) <= 0 then batch_try_finish(key, batch_id) end
  end
end
