-- Queue lines (shared.scheduling.queue_lines): where a queued prediction stands in its model family's
-- queue. Each line (a Celery priority step) hands out tickets; a counter set keeps "enq" (tickets
-- issued), "left" (tickets that left the queue: started, canceled, aborted, failed) and "head" (the
-- highest ticket that left by starting), and a sorted set of the tickets above head that left
-- without starting. A round-robin line (the dispatcher's: items wait per tenant) keeps one counter
-- set per tenant (fields suffixed ":<tenant>", and "rel:<tenant>", the last ticket the dispatcher
-- released) beside the line's own "enq" and "left". A counter set that drains (everything it issued
-- has left) is deleted, so the keys go with the line's work and tickets start again from 1.
-- queue_line_left and queue_line_requeued are for a script whose KEYS[1] is the prediction record.
local QUEUE_ROUND_ROBIN = {{QUEUE_ROUND_ROBIN_LINES}}
local QUEUE_REQUEUE_LINE = {{QUEUE_REQUEUE_LINE}}

-- The suffix of a tenant's counter set in a round-robin line; '' for a first-come line.
local function queue_line_suffix(line, tenant)
  if QUEUE_ROUND_ROBIN[line] then return ':' .. tenant end
  return ''
end

-- n tickets of family's line for tenant; returns the first (they are consecutive).
local function queue_line_enter(family, line, tenant, n)
  local hash = {{keys.queue_line(family, line)}}
  local suffix = queue_line_suffix(line, tenant)
  if suffix ~= '' then redis.call('HINCRBY', hash, 'enq', n) end
  return redis.call('HINCRBY', hash, 'enq' .. suffix, n) - n + 1
end

-- One ticket leaves family's line: started (true) or not (canceled, aborted, failed in the queue).
local function queue_line_leave(family, line, tenant, ticket, started)
  local hash = {{keys.queue_line(family, line)}}
  local suffix = queue_line_suffix(line, tenant)
  local skipped = {{keys.queue_line_skipped(family, line .. suffix)}}
  if suffix ~= '' then
    if redis.call('HINCRBY', hash, 'left', 1) >= tonumber(redis.call('HGET', hash, 'enq') or '0') then
      redis.call('HDEL', hash, 'enq', 'left')
    end
  end
  local left = redis.call('HINCRBY', hash, 'left' .. suffix, 1)
  if left >= tonumber(redis.call('HGET', hash, 'enq' .. suffix) or '0') then
    redis.call('HDEL', hash, 'enq' .. suffix, 'left' .. suffix, 'head' .. suffix, 'rel' .. suffix)
    redis.call('DEL', skipped)
    return
  end
  local head = tonumber(redis.call('HGET', hash, 'head' .. suffix) or '0')
  if ticket <= head then return end
  if started then
    redis.call('HSET', hash, 'head' .. suffix, string.format('%d', ticket))
    redis.call('ZREMRANGEBYSCORE', skipped, '-inf', ticket)
  else
    redis.call('ZADD', skipped, ticket, string.format('%d', ticket))
  end
end

-- The record's family, tenant, line and ticket (nil when it holds no ticket: stored before queue lines).
local function queue_line_of_record()
  local fields = redis.call('HMGET', KEYS[1], 'queue', 'tenant', 'queue_line', 'queue_ticket')
  if not (fields[1] and fields[2] and fields[3] and fields[4]) then return nil end
  local family, tenant = cjson.decode(fields[1]), cjson.decode(fields[2])
  local line, ticket = cjson.decode(fields[3]), cjson.decode(fields[4])
  if type(family) ~= 'string' or family == '' or type(line) ~= 'number' or type(ticket) ~= 'number' then return nil end
  return family, tenant, string.format('%d', line), ticket
end

-- The record left the queue (started: it entered PROCESSING).
local function queue_line_left(started)
  local family, tenant, line, ticket = queue_line_of_record()
  if family then queue_line_leave(family, line, tenant, ticket, started) end
end

-- The record was put back in the queue (hand-back, lapsed lease): a fresh ticket of the requeue line.
local function queue_line_requeued()
  local raw_family, raw_tenant = redis.call('HGET', KEYS[1], 'queue'), redis.call('HGET', KEYS[1], 'tenant')
  if not (raw_family and raw_tenant) then return end
  local family = cjson.decode(raw_family)
  if type(family) ~= 'string' or family == '' then return end
  local ticket = queue_line_enter(family, QUEUE_REQUEUE_LINE, cjson.decode(raw_tenant), 1)
  redis.call('HSET', KEYS[1], 'queue_line', QUEUE_REQUEUE_LINE, 'queue_ticket', string.format('%d', ticket))
end
