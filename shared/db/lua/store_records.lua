-- PredictionStore.create_records and create_item_records (shared.predictions.store). ARGV[1]: 1 to
-- write nothing (and return the keys of those records) if a record of one of the ids exists, 0 to
-- write regardless (create_records has claimed its ids). Then, from ARGV[2], groups of records (the
-- layout is records.lua's). Writes one record per id: its group's fields, its own ones and its JSON
-- id (a batch's items, stored in one call instead of one command each). Checking and writing are one
-- atomic step: no other client writes a record in between.
-- include: records
if ARGV[1] == '1' then
  local taken, ours = records_taken(2)
  if #taken > 0 then
    return taken
  end
  -- A retry of a call that wrote everything (it is one atomic step): nothing to write again.
  if ours > 0 then return {} end
end

records_write(2, nil)
return {}
