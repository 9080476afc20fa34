-- PredictionStore.update_while_processing (shared.predictions.store). KEYS[1]: record, KEYS[2]: its
-- event channel. ARGV[1]: the attempt that must be current ("" for any); ARGV[2..]: field, JSON
-- value pairs. Sets fields of a running prediction (its outputs before it completes) without
-- changing its status, and announces the change. Returns 1 when it set them, 0 when the prediction
-- is not running (under that attempt), false when there is none.
-- include: status_table
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if cjson.decode(current) ~= PROCESSING then return 0 end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
redis.call('PUBLISH', KEYS[2], '{"status": ' .. cjson.encode(PROCESSING) .. '}')
return 1
