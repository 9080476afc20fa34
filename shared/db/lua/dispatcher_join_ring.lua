-- Dispatcher.add_to_pipeline (shared.scheduling.dispatcher). KEYS[1]: the family's tenant ring.
-- ARGV[1]: tenant. Joins the tenant to the ring (dispatcher_ring.lua).
-- include: dispatcher_ring
dispatcher_join_ring(KEYS[1], ARGV[1])
return 1
