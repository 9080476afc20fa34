-- Dispatcher.add_to_pipeline (shared.scheduling.dispatcher). KEYS[1]: the family's tenant ring.
-- ARGV[1]: tenant. Puts the tenant at the head of the ring unless it is there already: a tenant
-- that had nothing waiting is served next, so its first item waits for the running job and the
-- "ahead" ones only, whoever else has a backlog (it then takes its turns).
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('LPUSH', KEYS[1], ARGV[1]) end
return 1
