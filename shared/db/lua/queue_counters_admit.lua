-- QueuedCounters.admit (shared.scheduling.queue_counters). ARGV[1]: tenant, ARGV[2]: how many,
-- ARGV[3]: tenant cap, ARGV[4]: global cap, ARGV[5..]: family, count pairs. Takes room for all or
-- none: returns the tenant's queued count before these (admitted, counted), -1 (over the tenant cap)
-- or -2 (over the global cap).
-- include: queue_admit
local family_counts = {}
for i = 5, #ARGV do family_counts[#family_counts + 1] = ARGV[i] end
return queue_admit(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), family_counts)
