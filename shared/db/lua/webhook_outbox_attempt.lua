-- WebhookOutbox.save_attempt (shared.webhooks.outbox): one attempt's outcome, in one step. KEYS[1]: the
-- delivery, KEYS[2]: the due set, KEYS[3]: the delivery's attempts, KEYS[4]: its tenant's failed
-- deliveries. ARGV[1]: the delivery id; ARGV[2]: when it is next due (unix seconds), or '' when it is
-- finished; ARGV[3]: how long a finished delivery is kept (seconds); ARGV[4]: the attempt (JSON);
-- ARGV[5]: how many attempts are kept; ARGV[6]: 'failed' to file it with its tenant's failed deliveries
-- ('' takes it out); ARGV[7]: when it failed (unix microseconds: its score, made unique so a list cursor
-- names one member); ARGV[8]: failures older than this (microseconds) leave that set, their deliveries
-- expired; ARGV[9..]: the delivery's field, JSON value pairs. A delivery gone meanwhile (its prediction's
-- record expired during the attempt) is not brought back: nothing is written, and 0 returned.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
else
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
end
if ARGV[6] == 'failed' then
  local score = tonumber(ARGV[7])
  while redis.call('ZCOUNT', KEYS[4], score, score) > 0 do score = score + 1 end
  redis.call('ZADD', KEYS[4], score, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[8])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return 1
