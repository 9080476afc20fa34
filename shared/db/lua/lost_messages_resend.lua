-- LostMessages._send (shared.scheduling.lost_messages). KEYS[1]: the prediction record, KEYS[2]: the
-- waiting index, KEYS[3]: the Celery list its message goes in, KEYS[4]: its queue line's hash.
-- ARGV[1]: prediction id, ARGV[2]: the rendered message ('': none, only drop the entry of a
-- prediction no longer queued), ARGV[3]: the line's field counting the
-- tickets issued ("enq", or "enq:<tenant>" in a round-robin line), ARGV[4]: now. If the prediction is
-- still queued, pushes its message again and marks the record with the last ticket its line had
-- issued ("queue_resent_behind"): every ticket up to it is ahead of the new message, so only a
-- later one starting shows this message lost too. Rescores its entry; returns 1. Otherwise removes
-- the entry and returns 0.
-- include: status_table
if redis.call('HGET', KEYS[1], 'status') ~= cjson.encode(STARTING) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[2] == '' then return 0 end
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'queue_resent_behind', redis.call('HGET', KEYS[4], ARGV[3]) or '0')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
