-- PredictionStore.request_cancel_many (shared.predictions.store). KEYS: as set_status. ARGV[1]:
-- JSON completed_at, ARGV[2]: prediction id, ARGV[3]: the status a queued prediction ends in
-- (canceled by a user, aborted by its deadline), ARGV[4]: this call's token (JSON), kept on the
-- record as "transition". A queued prediction ends on the spot; one in any other status the state
-- table lets become canceled (a running one) is flagged, and its worker stops at the next denoising
-- step. Returns the status found; a retry of the same call (same token) that finds its own ending
-- returns what the first run found (starting), changing nothing.
-- include: set_status
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
local status = cjson.decode(current)
if status == ARGV[3] and redis.call('HGET', KEYS[1], 'transition') == ARGV[4] then return cjson.encode(STARTING) end
if status == STARTING and may_enter(status, ARGV[3]) then
  set_status(status, ARGV[3], ARGV[2], 'completed_at', ARGV[1], 'transition', ARGV[4])
elseif may_enter(status, CANCELED) then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
end
return current
