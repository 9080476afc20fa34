-- Janitor.remove_data (shared.predictions.retention). KEYS[1]: the record, KEYS[2]: its logs.
-- Clears input, output and logs of a record that exists (a record already expired is not brought
-- back) and marks it data_removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'data_removed', 'true', 'output', 'null', 'input', '{}', 'input_files', '{}')
redis.call('DEL', KEYS[2])
return 1
