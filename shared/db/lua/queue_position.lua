-- QueueLines.positions (shared.scheduling.queue_lines); reads only. ARGV[1]: model family, ARGV[2]:
-- the prediction's line, ARGV[3]: its tenant, ARGV[4]: its ticket, ARGV[5..]: the lines of the family
-- served before its line. In a round-robin line, KEYS[1]: the dispatcher lane's tenant ring, KEYS[2]:
-- the Celery list it releases into. Returns how many queued predictions of the family start before
-- it, or -1 when its ticket is not waiting in that line (it left, or its line drained meanwhile).
-- Everything waiting in the lines before, plus, in its own line, "mine": the tickets between the
-- head (the highest started) and its own, less those that left without starting. In a round-robin
-- line those are its tenant's; unless the dispatcher released it already (then only the lane's
-- other released messages could be ahead of it), each other tenant also gets its turns: the
-- messages already released, and per turn of the ring before its own (one per ticket of its tenant
-- still in the dispatcher's list ahead of it, and one more from each tenant ahead of its tenant in
-- the ring) one item, at most as many as the other tenants have unreleased.
-- include: queue_lines
local family, line, tenant, ticket = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ahead = 0
for i = 5, #ARGV do
  local counts = redis.call('HMGET', {{keys.queue_line(family, ARGV[i])}}, 'enq', 'left')
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
local others_released = math.min(others, math.max(0, redis.call('LLEN', KEYS[2]) - mine_released))
local ring = redis.call('LLEN', KEYS[1])
local place, other_tenants = redis.call('LPOS', KEYS[1], tenant), ring - 1
if not place then place, other_tenants = ring, ring end
local turns = other_tenants * mine_listed + place
return ahead + mine + others_released + math.min(others - others_released, turns)
