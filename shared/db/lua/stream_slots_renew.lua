-- StreamSlots' keeper (api.streams.slots). KEYS: tenants' slot sets; ARGV[1]: lease (ms);
-- ARGV[2..]: one member per key. Extends the leases of slots still held (never re-adds one that
-- lapsed and was dropped).
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return #KEYS
