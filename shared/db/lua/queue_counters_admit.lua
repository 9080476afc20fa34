-- QueuedCounters.admit (shared.scheduling.queue_counters). KEYS[1]: tenant counters, KEYS[2]:
-- family counters. ARGV[1]: tenant, ARGV[2]: how many, ARGV[3]: tenant cap, ARGV[4]: global cap,
-- ARGV[5..]: family, count pairs. Takes room for all or none: returns the tenant's queued count
-- before these (admitted, counted), -1 (over the tenant cap) or -2 (over the global cap).
local wanted = tonumber(ARGV[2])
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mine + wanted > tonumber(ARGV[3]) then return -1 end
local total = 0
for _, count in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(count) end
if total + wanted > tonumber(ARGV[4]) then return -2 end
redis.call('HINCRBY', KEYS[1], ARGV[1], wanted)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1])) end
return math.max(mine, 0)
