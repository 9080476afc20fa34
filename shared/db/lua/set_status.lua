-- The start of every script that changes a prediction's status: the state table, the queued
-- counters, the queue lines, the batch counts and set_status. Those scripts take KEYS[1]: the record,
-- KEYS[2]: its event channel, KEYS[3]: the running set (leases), KEYS[4..5]: the queued counters
-- (shared.predictions.store.record_keys).
-- set_status(current, target, prediction_id, ...) moves the record from current to target (a move
-- the script checked with may_enter) and sets the field, JSON value pairs given after the id: the
-- queued counters and the record's ticket in its queue line follow the prediction into and out of
-- STARTING, and so does its entry in the waiting index (shared.scheduling.lost_messages: a requeue
-- is filed there before its message is sent, so a process dying in between leaves it to the sweep,
-- and a mark the sweep left on the record for its previous line goes),
-- an item of a batch moves its batch's counts, leaving PROCESSING drops its lease, and the
-- new status is announced to waiters and streams. Entering a terminal status files the prediction in
-- the ended set, scored by the time it ended, in the same step: whoever follows the ending up
-- (retention, the completed webhook) takes it out, and a maintenance job takes over one left there (a
-- process killed, a failover in between).
-- include: status_table
-- include: queued_delta
-- include: queue_lines
-- include: batch_moved
local ENDS = {{TERMINAL}}
local function set_status(current, target, prediction_id, ...)
  if current == STARTING and target ~= STARTING then
    queued_delta(-1)
    queue_line_left(target == PROCESSING)
    redis.call('ZREM', {{keys.queued_waiting()}}, prediction_id)
  elseif target == STARTING and current ~= STARTING then
    queued_delta(1)
    queue_line_requeued()
    redis.call('HDEL', KEYS[1], 'queue_resent_behind')
    local now = redis.call('TIME')
    redis.call('ZADD', {{keys.queued_waiting()}}, tonumber(now[1]) + tonumber(now[2]) / 1000000, prediction_id)
  end
  redis.call('HSET', KEYS[1], 'status', cjson.encode(target), ...)
  batch_moved(current, target)
  if target ~= PROCESSING then redis.call('ZREM', KEYS[3], prediction_id) end
  if ENDS[target] and not ENDS[current] then
    local now = redis.call('TIME')
    redis.call('ZADD', {{keys.predictions_ended()}}, tonumber(now[1]) + tonumber(now[2]) / 1000000, prediction_id)
  end
  redis.call('PUBLISH', KEYS[2], '{"status": ' .. cjson.encode(target) .. '}')
end
