-- PredictionStore.create_batch_chunk (shared.predictions.store): a batch object's chunk of items stored
-- and queued in one atomic step. ARGV[1]: tenant, ARGV[2]: batch id, ARGV[3]: seconds its item list is
-- kept, ARGV[4]: how many of its entries are refused lines; then e, and the chunk's e entries for the
-- batch's item list (prediction ids, refused lines); then r, and r model, count pairs (run counts); then
-- l, and per lane of the dispatcher: its name, model family, queue line, n, and its n prediction ids
-- (oldest first); then the items' records, grouped as records.lua lays them out.
-- If a record of one of the ids exists (and is not this very call's), nothing is written and its key is
-- returned. Else each lane's ids are queued (shared.scheduling.dispatcher: the tenant's list, the ring,
-- a queue-line ticket each), their records written with their tickets (queue_line, queue_ticket), the
-- tenant's index, the run counts and the batch's item list and counts updated. Returns {}.
-- include: status_table
-- include: records
-- include: queue_lines
-- include: dispatcher_ring
local tenant, batch_id = ARGV[1], ARGV[2]
local PIECE = 1000  -- arguments per command at most (Lua's unpack limit)

local entries_at = 6
local runs_at = entries_at + tonumber(ARGV[5]) + 1
local runs = tonumber(ARGV[runs_at - 1])
local lanes_at = runs_at + 2 * runs + 1
local lanes = {}
local at = lanes_at
for x = 1, tonumber(ARGV[lanes_at - 1]) do
  lanes[x] = {name = ARGV[at], family = ARGV[at + 1], line = ARGV[at + 2], from = at + 4, n = tonumber(ARGV[at + 3])}
  at = at + 4 + lanes[x].n
end
local records_at = at

local taken, ours = records_taken(records_at)
if #taken > 0 then return taken end
-- A retry of a call that did everything (it is one atomic step): nothing to do again.
if ours > 0 then return {} end

-- command key ARGV[from .. from + n - 1], a piece at a time; with a 0 score before each for ZADD.
local function each_piece(command, key, from, n, scored)
  for start = from, from + n - 1, PIECE do
    local args = {}
    for y = start, math.min(start + PIECE, from + n) - 1 do
      if scored then args[#args + 1] = 0 end
      args[#args + 1] = ARGV[y]
    end
    redis.call(command, key, unpack(args))
  end
end

local line_of, ticket_of, queued = {}, {}, 0
for _, lane in ipairs(lanes) do
  local first = queue_line_enter(lane.family, lane.line, tenant, lane.n)
  for y = 0, lane.n - 1 do
    local id = ARGV[lane.from + y]
    line_of[id], ticket_of[id] = lane.line, first + y
  end
  each_piece('RPUSH', {{keys.dispatch_queue(lane.name, tenant)}}, lane.from, lane.n, false)
  dispatcher_join_ring({{keys.dispatch_tenants(lane.name)}}, tenant)
  each_piece('ZADD', {{keys.tenant_predictions(tenant)}}, lane.from, lane.n, true)
  queued = queued + lane.n
end

local more = {'queue_line', false, 'queue_ticket', false}
records_write(records_at, function(id)
  more[2], more[4] = line_of[id], string.format('%d', ticket_of[id])
  return more
end)

for x = runs_at, lanes_at - 2, 2 do
  redis.call('INCRBY', {{keys.model_run_count(ARGV[x])}}, ARGV[x + 1])
end
local entries = tonumber(ARGV[5])
if entries > 0 then
  local items = {{keys.batch_items(batch_id)}}
  each_piece('RPUSH', items, entries_at, entries, false)
  redis.call('EXPIRE', items, ARGV[3])
end
local record = {{keys.batch_record(batch_id)}}
if queued > 0 then
  redis.call('HINCRBY', record, 'n:' .. STARTING, queued)
  redis.call('HINCRBY', record, 'unfinished', queued)
end
local refused = tonumber(ARGV[4])
if refused > 0 then redis.call('HINCRBY', record, 'refused', refused) end
return {}
