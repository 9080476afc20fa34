-- RateLimiter.take (api.ratelimit): a token bucket. KEYS[1]: bucket. ARGV: rate (tokens/s), burst,
-- cost. Returns {allowed (0/1), tokens left (string, fractional)}.
-- include: token_bucket
return take_from_bucket(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
