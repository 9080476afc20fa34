-- Dispatcher.release (shared.scheduling.dispatcher). KEYS[1]: the lane's tenant ring, KEYS[2]:
-- Celery's list the lane releases into, KEYS[3]: the claimed set, KEYS[4]: the lane's queue line
-- (shared.scheduling.queue_lines), KEYS[5..]: lists that must all be empty for anything to be
-- released (the low lane's gate: the family's normal work). ARGV[1]: the lane (the family, or
-- "<family>:low"), ARGV[2]: messages to keep waiting in Celery, ARGV[3]: now. Takes items
-- round-robin over the ring's tenants until Celery's list would hold ARGV[2]; items no longer queued
-- (canceled) are dropped on the way. Marks each tenant's last released ticket in the queue line
-- ("rel:<tenant>"). Claims and returns the ids taken.
-- include: status_table
for i = 5, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 then return {} end
end
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
    local ticket = redis.call('HGET', {{keys.prediction(id)}}, 'queue_ticket')
    if ticket and ticket ~= 'null' then redis.call('HSET', KEYS[4], 'rel:' .. tenant, ticket) end
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1] .. ' ' .. id)
  end
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], tenant) end
end
return taken
