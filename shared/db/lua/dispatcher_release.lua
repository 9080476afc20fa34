-- Dispatcher.release (shared.scheduling.dispatcher). KEYS[1]: the lane's tenant ring, KEYS[2]:
-- Celery's list the lane releases into, KEYS[3]: the claimed set, KEYS[4]: the lane's queue line
-- (shared.scheduling.queue_lines), KEYS[5..]: lists that must all be empty for anything to be
-- released (the low lane's gate: the family's normal work). ARGV[1]: the lane (the family, or
-- "<family>:low"), ARGV[2]: messages to keep waiting in Celery, ARGV[3]: now, ARGV[4]: how old a
-- claim is when it counts as left by a dead dispatcher. Takes items round-robin over the ring's
-- tenants until Celery's list and the lane's fresh claims (released, their messages being written)
-- would hold ARGV[2]: two releases at once never put more than that in flight, nor a tenant's later
-- item ahead of its earlier one. Items no longer queued (canceled) are dropped on the way. Marks each
-- tenant's last released ticket in the queue line ("rel:<tenant>"). Claims and returns the ids taken.
-- include: status_table
for i = 5, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 then return {} end
end
-- Most list entries one release looks at (canceled items are skipped without a message).
local SCAN_LIMIT = 1000
local queued = cjson.encode(STARTING)
local in_flight = redis.call('LLEN', KEYS[2])
local lane_prefix = ARGV[1] .. ' '
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], tonumber(ARGV[3]) - tonumber(ARGV[4]), '+inf')) do
  if string.sub(member, 1, #lane_prefix) == lane_prefix then in_flight = in_flight + 1 end
end
local wanted = tonumber(ARGV[2]) - in_flight
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
