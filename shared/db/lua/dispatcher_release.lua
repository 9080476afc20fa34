-- Dispatcher.release (shared.scheduling.dispatcher). KEYS[1]: the family's tenant ring, KEYS[2]:
-- Celery's list for dispatched items, KEYS[3]: the claimed set. ARGV[1]: family, ARGV[2]: messages
-- to keep waiting in Celery, ARGV[3]: now. Takes items round-robin over the ring's tenants until
-- Celery's list would hold ARGV[2]; items no longer queued (canceled) are dropped on the way.
-- Claims and returns the ids taken.
-- include: status_table
-- Most list entries one release looks at (canceled items are skipped without a message).
local SCAN_LIMIT = 1000
local queued = cjson.encode(STARTING)
local wanted = tonumber(ARGV[2]) - redis.call('LLEN', KEYS[2])
local taken, looked = {}, 0
while #taken < wanted and looked < SCAN_LIMIT do
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then break end
  local list = {{keys.dispatch_queue(ARGV[1], tenant)}}
  local id = redis.call('LPOP', list)
  while id do
    looked = looked + 1
    if redis.call('HGET', {{keys.prediction(id)}}, 'status') == queued then break end
    if looked >= SCAN_LIMIT then id = nil break end
    id = redis.call('LPOP', list)
  end
  if id then
    table.insert(taken, id)
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1] .. ' ' .. id)
  end
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], tenant) end
end
return taken
