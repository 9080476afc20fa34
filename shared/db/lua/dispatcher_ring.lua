-- The dispatcher's round-robin ring of tenants (shared.scheduling.dispatcher), as scripts that queue
-- batch items join it.

-- Puts the tenant at the head of the ring unless it is there already: a tenant that had nothing waiting
-- is served next, so its first item waits for the running job and the "ahead" ones only, whoever else
-- has a backlog (it then takes its turns).
local function dispatcher_join_ring(ring, tenant)
  if not redis.call('LPOS', ring, tenant) then redis.call('LPUSH', ring, tenant) end
end
