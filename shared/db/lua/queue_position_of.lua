-- Queue positions (shared.scheduling.queue_lines): how many queued predictions of its family start
-- before a prediction holding `ticket` of `line`, or -1 when that ticket is not waiting in the line (it
-- left, or the line drained meanwhile). lines_before: the lines of the family served before its line;
-- in a round-robin line, ring_key: the dispatcher lane's tenant ring, list_key: the Celery list it
-- releases into (nil otherwise). Everything waiting in the lines before, plus, in its own line, "mine": the
-- tickets between the head (the highest started) and its own, less those that left without starting.
-- In a round-robin line those are its tenant's; unless the dispatcher released it already (then only
-- the lane's other released messages could be ahead of it), each other tenant also gets its turns: the
-- messages already released, and per turn of the ring before its own (one per ticket of its tenant
-- still in the dispatcher's list ahead of it, and one more from each tenant ahead of its tenant in the
-- ring) one item, at most as many as the other tenants have unreleased.
-- include: queue_lines
local function queue_position_of(family, line, tenant, ticket, lines_before, ring_key, list_key)
  local ahead = 0
  for _, before in ipairs(lines_before) do
    local counts = redis.call('HMGET', {{keys.queue_line(family, before)}}, 'enq', 'left')
    ahead = ahead + math.max(0, (tonumber(counts[1]) or 0) - (tonumber(counts[2]) or 0))
  end
  local hash = {{keys.queue_line(family, line)}}
  local suffix = queue_line_suffix(line, tenant)
  local skipped = {{keys.queue_line_skipped(family, line .. suffix)}}
  local fields = redis.call('HMGET', hash, 'enq' .. suffix, 'left' .. suffix, 'head' .. suffix, 'rel' .. suffix)
  local enq, left = tonumber(fields[1]) or 0, tonumber(fields[2]) or 0
  local head, released = tonumber(fields[3]) or 0, tonumber(fields[4]) or 0
  local waiting = enq - left
  if waiting <= 0 or ticket > enq then return -1 end

  -- Tickets of this counter set in (low, high) that have not left, counted from head.
  local function unstarted_between(low, high)
    if high <= low + 1 then return 0 end
    return high - low - 1 - redis.call('ZCOUNT', skipped, low + 1, high - 1)
  end

  local mine = 0
  if ticket > head then mine = math.max(0, math.min(unstarted_between(head, ticket), waiting - 1)) end
  if suffix == '' or ticket <= released then return ahead + mine end

  local mine_released = 0
  if released > head then mine_released = math.min(unstarted_between(head, released + 1), mine) end
  local mine_listed = mine - mine_released
  local line_counts = redis.call('HMGET', hash, 'enq', 'left')
  local others = math.max(0, (tonumber(line_counts[1]) or 0) - (tonumber(line_counts[2]) or 0) - waiting)
  local others_released = math.min(others, math.max(0, redis.call('LLEN', list_key) - mine_released))
  local ring = redis.call('LLEN', ring_key)
  local place, other_tenants = redis.call('LPOS', ring_key, tenant), ring - 1
  if not place then place, other_tenants = ring, ring end
  local turns = other_tenants * mine_listed + place
  return ahead + mine + others_released + math.min(others - others_released, turns)
end
