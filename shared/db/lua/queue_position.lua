-- QueueLines.positions (shared.scheduling.queue_lines); reads only. ARGV[1]: model family, ARGV[2]:
-- the prediction's line, ARGV[3]: its tenant, ARGV[4]: its ticket, ARGV[5..]: the lines of the family
-- served before its line. In a round-robin line, KEYS[1]: the dispatcher lane's tenant ring, KEYS[2]:
-- the Celery list it releases into. Returns how many queued predictions of the family start before
-- it, or -1 when its ticket is not waiting in that line (``queue_position_of``).
-- include: queue_position_of
local lines_before = {}
for i = 5, #ARGV do lines_before[#lines_before + 1] = ARGV[i] end
return queue_position_of(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), lines_before, KEYS[1], KEYS[2])
