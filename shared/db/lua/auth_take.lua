-- Authenticator.caller_within_limit (api.auth): who a token is and one request off its rate limit, in
-- one round trip. KEYS[1]: the token's record, KEYS[2]: the revoked set, KEYS[3]: the token's bucket.
-- ARGV[1]: the token's digest; ARGV[2]: 1 when it is a bootstrap token (KILN_API_TOKEN: valid without
-- a record); ARGV[3], ARGV[4]: the rate (tokens/s) and burst for a record that sets none (the
-- service's); ARGV[5], ARGV[6]: those of the bootstrap token when there is no record; ARGV[7]: cost.
-- Returns {0} for a token unknown or revoked (its bucket untouched), else {1, the record's fields
-- (field, value, ...; none for a bootstrap token), allowed (0/1), tokens left (string)}.
-- include: token_bucket
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {0} end
local fields = redis.call('HGETALL', KEYS[1])
local rate, burst
if #fields > 0 then
  rate = tonumber(redis.call('HGET', KEYS[1], 'rate_limit_per_s') or ARGV[3])
  burst = tonumber(redis.call('HGET', KEYS[1], 'rate_limit_burst') or ARGV[4])
elseif ARGV[2] == '1' then
  rate, burst = tonumber(ARGV[5]), tonumber(ARGV[6])
else
  return {0}
end
local taken = take_from_bucket(KEYS[3], rate, burst, tonumber(ARGV[7]))
return {1, fields, taken[1], taken[2]}
