-- Records written in groups (store_records, store_batch_chunk): the layout of their arguments and the
-- check that none of their ids has a record. From ARGV[start]: groups of records, each: n, then n field,
-- value pairs its records share; k, then k names of the fields each record has a value of its own of;
-- m, then per record its id and its k values. Shared fields are copied into one argument table per
-- group, never per record.

-- visit(i, n, k, m, first) for each group from ARGV[start] on.
local function records_each_group(start, visit)
  local i = start
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
local function records_written_by_us(key, i, n)
  local mine = {}
  for x = i + 1, i + 2 * n, 2 do mine[ARGV[x]] = ARGV[x + 1] end
  if not mine['tenant'] or not mine['created_at'] then return false end
  local found = redis.call('HMGET', key, 'tenant', 'created_at')
  return found[1] == mine['tenant'] and found[2] == mine['created_at']
end

-- The keys of the groups' records that exist and are not this call's, and how many are this call's.
local function records_taken(start)
  local taken, ours = {}, 0
  records_each_group(start, function(i, n, k, m, first)
    for r = 0, m - 1 do
      local id = ARGV[first + r * (k + 1)]
      local key = {{keys.prediction(id)}}
      if redis.call('EXISTS', key) == 1 then
        if records_written_by_us(key, i, n) then ours = ours + 1 else taken[#taken + 1] = key end
      end
    end
  end)
  return taken, ours
end

-- Writes one record per id: its group's fields, its own ones, its JSON id and, where extra(id) gives
-- them, a few more field, value pairs.
local function records_write(start, extra)
  records_each_group(start, function(i, n, k, m, first)
    local fields = {'id', false}
    for x = i + 1, i + 2 * n do
      fields[#fields + 1] = ARGV[x]
    end
    local own_at = #fields
    for x = 1, k do
      fields[own_at + 2 * x - 1] = ARGV[i + 2 * n + 1 + x]
    end
    local last = own_at + 2 * k
    for r = 0, m - 1 do
      local at = first + r * (k + 1)
      local id = ARGV[at]
      fields[2] = '"' .. id .. '"'
      for x = 1, k do
        fields[own_at + 2 * x] = ARGV[at + x]
      end
      local more = extra and extra(id)
      if more then
        for x = 1, #more do fields[last + x] = more[x] end
        redis.call('HSET', {{keys.prediction(id)}}, unpack(fields, 1, last + #more))
      else
        redis.call('HSET', {{keys.prediction(id)}}, unpack(fields, 1, last))
      end
    end
  end)
end
