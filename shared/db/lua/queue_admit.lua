-- Queue caps (shared.scheduling.queue_counters): room for `wanted` more queued predictions of a tenant,
-- taken for all or none. family_counts: a flat list of family, count pairs. Returns the tenant's queued
-- count before these (admitted, counted), -1 (over the tenant cap) or -2 (over the global cap).
local function queue_admit(tenant, wanted, tenant_cap, total_cap, family_counts)
  local by_tenant, by_family = {{keys.queued_by_tenant()}}, {{keys.queued_by_family()}}
  local mine = tonumber(redis.call('HGET', by_tenant, tenant) or '0')
  if mine + wanted > tenant_cap then return -1 end
  local total = 0
  for _, count in ipairs(redis.call('HVALS', by_family)) do total = total + tonumber(count) end
  if total + wanted > total_cap then return -2 end
  redis.call('HINCRBY', by_tenant, tenant, wanted)
  for i = 1, #family_counts, 2 do redis.call('HINCRBY', by_family, family_counts[i], tonumber(family_counts[i + 1])) end
  return math.max(mine, 0)
end
