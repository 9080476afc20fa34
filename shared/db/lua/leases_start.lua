-- Leases.start (shared.predictions.leases). KEYS: as set_status (record, events, running set,
-- queued counters). ARGV[1]: JSON started_at, ARGV[2]: lease expiry, ARGV[3]: prediction id. Starts
-- the prediction under a new attempt number and takes its lease, if the state table lets it enter
-- PROCESSING (it is queued); returns that number, or 0 when not (running, finished, gone).
-- include: set_status
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local status = cjson.decode(current)
if not may_enter(status, PROCESSING) then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') + 1
set_status(status, PROCESSING, ARGV[3], 'started_at', ARGV[1], 'attempt', tostring(attempt))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return attempt
