-- Leases.reap (shared.predictions.leases). KEYS: as set_status. ARGV[1]: now, ARGV[2]: max
-- attempts, ARGV[3]: prediction id, ARGV[4]: JSON completed_at, ARGV[5]: JSON error for the last
-- attempt. If the lease really lapsed (not renewed meanwhile), requeue (STARTING) or, once the
-- prediction was tried max attempts times, fail it, as far as the state table allows. Returns the
-- new status or "".
-- include: set_status
local expiry = redis.call('ZSCORE', KEYS[3], ARGV[3])
if not expiry or tonumber(expiry) > tonumber(ARGV[1]) then return '' end
redis.call('ZREM', KEYS[3], ARGV[3])
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return '' end
local status = cjson.decode(current)
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local target = STARTING
if attempt >= tonumber(ARGV[2]) then target = FAILED end
-- A lease belongs to a running prediction; any other status is not this reaper's to change.
if status ~= PROCESSING or not may_enter(status, target) then return '' end
if target == FAILED then
  set_status(status, FAILED, ARGV[3], 'completed_at', ARGV[4], 'error', ARGV[5])
else
  set_status(status, STARTING, ARGV[3])
end
return target
