-- PredictionStore.create_records and create_item_records (shared.predictions.store). ARGV[1]: 1 to
-- write nothing (and return the keys of those records) if a record of one of the ids exists, 0 to
-- write regardless (create_records has claimed its ids). Then groups of records, each: n, then n field,
-- value pairs its records share; k, then k names of the fields each record has a value of its own of;
-- m, then per record its id and its k values. Writes one record per id: its group's fields, its own
-- ones and its JSON id (a batch's items, stored in one call instead of one command each). Shared
-- fields are copied into one argument table per group, never per record. Checking and writing are one
-- atomic step: no other client writes a record in between.
local function each_group(visit)
  local i = 2
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    local k = tonumber(ARGV[i + 2 * n + 1])
    local m = tonumber(ARGV[i + 2 * n + k + 2])
    local first = i + 2 * n + k + 3
    visit(i, n, k, m, first)
    i = first + m * (k + 1)
  end
end

-- Whether the record at key is one this very call wrote: its group's tenant and created_at (a record
-- holds both). redis-py sends a script again when its reply is lost with the connection; the second
-- run finds the first's records, which are then no other create's.
local function written_by_us(key, i, n)
  local mine = {}
  for x = i + 1, i + 2 * n, 2 do mine[ARGV[x]] = ARGV[x + 1] end
  if not mine['tenant'] or not mine['created_at'] then return false end
  local found = redis.call('HMGET', key, 'tenant', 'created_at')
  return found[1] == mine['tenant'] and found[2] == mine['created_at']
end

if ARGV[1] == '1' then
  local taken, ours = {}, 0
  each_group(function(i, n, k, m, first)
    for r = 0, m - 1 do
      local id = ARGV[first + r * (k + 1)]
      local key = {{keys.prediction(id)}}
      if redis.call('EXISTS', key) == 1 then
        if written_by_us(key, i, n) then ours = ours + 1 else taken[#taken + 1] = key end
      end
    end
  end)
  if #taken > 0 then
    return taken
  end
  -- A retry of a call that wrote everything (it is one atomic step): nothing to write again.
  if ours > 0 then return {} end
end

each_group(function(i, n, k, m, first)
  local fields = {'id', false}
  for x = i + 1, i + 2 * n do
    fields[#fields + 1] = ARGV[x]
  end
  local own_at = #fields
  for x = 1, k do
    fields[own_at + 2 * x - 1] = ARGV[i + 2 * n + 1 + x]
  end
  for r = 0, m - 1 do
    local at = first + r * (k + 1)
    local id = ARGV[at]
    fields[2] = '"' .. id .. '"'
    for x = 1, k do
      fields[own_at + 2 * x] = ARGV[at + x]
    end
    redis.call('HSET', {{keys.prediction(id)}}, unpack(fields, 1, own_at + 2 * k))
  end
end)
return {}
