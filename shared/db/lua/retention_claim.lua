-- Janitor.run_once (shared.predictions.retention). KEYS[1]: the retention set. ARGV[1]: now,
-- ARGV[2]: most items to take, ARGV[3]: until when they are taken. Claims up to ARGV[2] due items
-- by moving them to ARGV[3], so the janitors of several workers share the work instead of
-- repeating it; one whose janitor died is due again then.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], member) end
return due
