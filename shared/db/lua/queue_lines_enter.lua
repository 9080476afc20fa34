-- QueueLines.enter_in_pipeline (shared.scheduling.queue_lines). ARGV[1]: model family, ARGV[2]: line,
-- ARGV[3]: tenant, ARGV[4..]: prediction ids, in the order their messages (or dispatcher entries)
-- are queued. Gives each a ticket of the line, consecutive in that order, and writes it on its
-- record (queue_line, queue_ticket). Returns the first ticket.
-- include: queue_lines
local first = queue_line_enter(ARGV[1], ARGV[2], ARGV[3], #ARGV - 3)
for i = 4, #ARGV do
  local ticket = string.format('%d', first + i - 4)
  redis.call('HSET', {{keys.prediction(ARGV[i])}}, 'queue_line', ARGV[2], 'queue_ticket', ticket)
end
return first
