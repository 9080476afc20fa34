-- PredictionStore.create_records (shared.predictions.store). ARGV: groups of records, each: n, then
-- n field, value pairs its records share, then m, then m prediction ids. Writes one record per id:
-- its group's fields and its JSON id (a batch's identical items, stored in one call instead of one
-- command each). Fields and ids are read from ARGV in place (unpack), never copied per record.
-- Returns how many records it wrote.
local written, i = 0, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local m = tonumber(ARGV[i + 2 * n + 1])
  for j = i + 2 * n + 2, i + 2 * n + 1 + m do
    local quoted = '"' .. ARGV[j] .. '"'
    redis.call('HSET', {{keys.prediction(ARGV[j])}}, 'id', quoted, unpack(ARGV, i + 1, i + 2 * n))
    written = written + 1
  end
  i = i + 2 * n + 2 + m
end
return written
