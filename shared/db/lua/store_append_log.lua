-- PredictionStore.append_log (shared.predictions.store). KEYS[1]: record, KEYS[2]: its logs, KEYS[3]: its
-- event channel. ARGV[1]: the attempt that must be current ("" for any); ARGV[2]: the status it must have
-- (JSON); ARGV[3]: the text; ARGV[4]: its event (JSON). Appends to the logs of a prediction in that state
-- only, and announces the text: an attempt that lost its lease and wakes up later (another attempt runs
-- the prediction, or it ended, its data was removed, its record expired) writes nothing back. Returns 1
-- when it appended, 0 when not.
local current = redis.call('HGET', KEYS[1], 'status')
if current == false or cjson.decode(current) ~= cjson.decode(ARGV[2]) then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('APPEND', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1
