-- PredictionStore.transition (shared.predictions.store). KEYS: as set_status. ARGV[1]: JSON target
-- status; ARGV[2]: the attempt that must be current ("" for any), so a worker that lost its lease
-- cannot finish a rerun's work; ARGV[3]: prediction id; ARGV[4]: this call's token (JSON), kept on
-- the record as "transition"; ARGV[5..]: field, JSON value pairs to set with the new status. Moves
-- the record when the state table allows the move from its current status. Returns 1 when it
-- changed the record, 0 when not, false when there is none. A retry of the same call (same token:
-- its reply was lost to a dropped connection or a failover after it ran) finds its own move done
-- and returns 1 again, changing nothing: a retried script never applies twice.
-- include: set_status
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
local status, target = cjson.decode(current), cjson.decode(ARGV[1])
if status == target and redis.call('HGET', KEYS[1], 'transition') == ARGV[4] then return 1 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
if not may_enter(status, target) then return 0 end
set_status(status, target, ARGV[3], 'transition', ARGV[4], unpack(ARGV, 5))
return 1
