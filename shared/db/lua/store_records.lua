-- PredictionStore.create_records (shared.predictions.store), for records whose ids it has claimed:
-- from ARGV[1], groups of records (the layout is records.lua's). Writes one record per id: its group's
-- fields, its own ones and its JSON id (many records in one call instead of one command each).
-- include: records
records_write(1, nil)
return {}
