-- PredictionStore.create_one (shared.predictions.store): a single create, stored and enqueued in one
-- script, so it costs one round trip and is all or nothing: refused with nothing written when a
-- record of the id exists (a record is never written over) or the queue caps have no room; otherwise
-- counted against the caps, its record written, indexed (tenant, deadline, run count), its Celery
-- message pushed and filed in the waiting index (shared.scheduling.lost_messages), its queue-line
-- ticket taken and written on the record, and its queue position read.
-- ARGV[1]: prediction id, ARGV[2]: tenant, ARGV[3]: model family (queue), ARGV[4]: tenant cap,
-- ARGV[5]: global cap, ARGV[6]: model (run count), ARGV[7]: deadline (unix seconds; '' for none),
-- ARGV[8]: the Celery list, ARGV[9]: the message (``shared.scheduling.task_messages``), ARGV[10]: its
-- queue line, ARGV[11]: how many lines are served before it, then those lines, then how many values
-- the token check below takes (0 or 4) and those values, then the record's field, value pairs (JSON,
-- ``Prediction.to_compact_hash``).
-- The token check (``api.auth.Authenticator.deferred``: a token seen valid by this API process, whose
-- check and rate limit the create leaves to its store, so both cost no round trip of their own): its
-- digest, 1 when it is a bootstrap token (valid without a record), its rate (tokens/s) and burst. The
-- token is checked as ``auth_take.lua`` checks it (not revoked; a record, or a bootstrap token) and one
-- request taken from its bucket, before anything is written.
-- KEYS[1], only for a create with an Idempotency-Key: its claim (``api.intake.idempotency``), which must
-- still name this prediction: a claim taken over by a retry of the request (its process looked dead) or
-- lost in a failover stores nothing, so one key never names two predictions.
-- Returns {0, queued before, ticket, position, tokens left in the token's bucket ('' without the token
-- check)}, or {-1} (tenant cap), {-2} (global cap), {-3} (id taken by another record; the record this
-- script wrote, found by its retry, answers {0, 0, ticket, position, tokens left now}), {-4} (the claim in
-- KEYS[1] no longer names this prediction), {-5} (the token is unknown or revoked), {-6, tokens left} (its
-- rate limit is reached), or a READONLY error on a replica.
-- include: queue_admit
-- include: queue_position_of
-- include: token_bucket
local id, tenant, family, line = ARGV[1], ARGV[2], ARGV[3], ARGV[10]
local record = {{keys.prediction(id)}}
local auth_at = 12 + tonumber(ARGV[11])
local lines_before = {}
for i = 12, auth_at - 1 do lines_before[#lines_before + 1] = ARGV[i] end
local auth = tonumber(ARGV[auth_at]) > 0
local first_field = auth_at + 1 + tonumber(ARGV[auth_at])
local bucket = auth and {{keys.rate_limit(tenant)}}
local left = ''
if redis.call('HEXISTS', record, 'id') == 1 then
  -- This script run again by the client's retry (its first reply lost with a dropped connection)
  -- finds the record it wrote: the same tenant, created at the same microsecond, holding a ticket.
  -- It answers as the first run did, writing nothing twice; any other record of the id is refused.
  local mine = {}
  for i = first_field, #ARGV - 1, 2 do mine[ARGV[i]] = ARGV[i + 1] end
  local found = redis.call('HMGET', record, 'tenant', 'created_at', 'queue_ticket')
  if found[1] == mine['tenant'] and found[2] == mine['created_at'] and found[3] then
    local ticket = tonumber(found[3])
    if auth then left = redis.call('HGET', bucket, 'tokens') or ARGV[auth_at + 4] end
    return {0, 0, ticket, queue_position_of(family, line, tenant, ticket, lines_before), left}
  end
  return {-3}
end
if KEYS[1] then
  local claim = redis.call('GET', KEYS[1])
  if not claim or cjson.decode(claim)['prediction_id'] ~= id then
    -- A replica reached in a failover (a sentinel not yet told of the promotion; the old primary back
    -- as a replica, still empty) reads no claim: refused as Redis refuses a write there, so that the
    -- client finds the primary and runs this again, rather than a 409 for a claim that is intact.
    if string.match(redis.call('INFO', 'replication'), 'role:(%a+)') ~= 'master' then
      return redis.error_reply("READONLY You can't write against a read only replica.")
    end
    return {-4}
  end
end
if auth then
  local digest = ARGV[auth_at + 1]
  if redis.call('SISMEMBER', {{keys.revoked_tokens()}}, digest) == 1
    or (ARGV[auth_at + 2] ~= '1' and redis.call('EXISTS', {{keys.token(digest)}}) == 0) then
    return {-5}
  end
  local taken = take_from_bucket(bucket, tonumber(ARGV[auth_at + 3]), tonumber(ARGV[auth_at + 4]), 1)
  if taken[1] == 0 then return {-6, taken[2]} end
  left = taken[2]
end
local queued_before = queue_admit(tenant, 1, tonumber(ARGV[4]), tonumber(ARGV[5]), {family, 1})
if queued_before < 0 then return {queued_before} end

redis.call('HSET', record, unpack(ARGV, first_field))
redis.call('ZADD', {{keys.tenant_predictions(tenant)}}, 0, id)
if ARGV[7] ~= '' then redis.call('ZADD', {{keys.deadlines()}}, ARGV[7], id) end
redis.call('INCRBY', {{keys.model_run_count(ARGV[6])}}, 1)
redis.call('LPUSH', ARGV[8], ARGV[9])
local now = redis.call('TIME')
redis.call('ZADD', {{keys.queued_waiting()}}, tonumber(now[1]) + tonumber(now[2]) / 1000000, id)
local ticket = queue_line_enter(family, line, tenant, 1)
redis.call('HSET', record, 'queue_line', line, 'queue_ticket', string.format('%d', ticket))
return {0, queued_before, ticket, queue_position_of(family, line, tenant, ticket, lines_before), left}
