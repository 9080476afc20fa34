"""A batch's counts, kept by its items' status changes (``shared.predictions.store.LUA_SET_STATUS``).

Every Lua script that changes a prediction's status calls ``batch_moved(current, target)``: for an
item of a batch it moves the batch's ``n:<status>`` counts by one and, on the item's first terminal
status, takes one off ``unfinished``. The state table lets a prediction become terminal only once,
so a batch finishes exactly once, whichever worker, retry or cancel ends its last item: the script
that takes ``unfinished`` to zero sets the batch ``completed`` (or ``canceled``, when a cancel was
asked for) and files it in ``keys.batches_finished()`` for its webhook (``shared.batches.records``). O(1)
per item; nothing scans a batch.
"""

from __future__ import annotations

from shared.db import keys
from shared.db.client import lua_key
from shared.predictions.status import TERMINAL

# A batch's own statuses (the batch hash's ``status`` field). ``running`` is not stored: a queued
# batch with an item started or ended is shown running.
VALIDATING, QUEUED, RUNNING, COMPLETED, CANCELED = "validating", "queued", "running", "completed", "canceled"

# batch_try_finish(key, batch_id): once the batch is sealed (no longer validating) and no item is
# unfinished, it ends (completed, or canceled after a cancel request) with completed_at (unix
# seconds) and is filed for its webhook. A batch that already ended is left alone. Needs the status
# table (shared.predictions.status.LUA_STATUS_TABLE) before it.
LUA_BATCH_FINISH = f"""
local function batch_try_finish(key, batch_id)
  if redis.call('HGET', key, 'status') ~= '{QUEUED}' then return 0 end
  if tonumber(redis.call('HGET', key, 'unfinished') or '0') > 0 then return 0 end
  local ended = '{COMPLETED}'
  -- A canceled batch shows the status its items show.
  if redis.call('HEXISTS', key, 'cancel_requested') == 1 then ended = CANCELED end
  local now = redis.call('TIME')
  redis.call('HSET', key, 'status', ended, 'completed_at', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
  redis.call('ZADD', '{keys.batches_finished()}', 0, batch_id)
  return 1
end
"""

# Prepended (after the status table, whose constants it names) to every script that changes a
# prediction's status; KEYS[1] is the prediction record. batch_moved(current, target) follows the
# record's move in its batch's counts.
LUA_BATCH_MOVED = (
    LUA_BATCH_FINISH
    + "local BATCH_TERMINAL = {"
    + ", ".join(f"[{status.name}] = true" for status in sorted(TERMINAL))
    + "}\n"
    + f"""
local function batch_moved(current, target)
  local raw = redis.call('HGET', KEYS[1], 'batch_id')
  if not raw then return end
  local batch_id = cjson.decode(raw)
  if type(batch_id) ~= 'string' then return end
  local key = {lua_key(keys.batch_record, "batch_id")}
  if redis.call('EXISTS', key) == 0 then return end
  redis.call('HINCRBY', key, 'n:' .. current, -1)
  redis.call('HINCRBY', key, 'n:' .. target, 1)
  if BATCH_TERMINAL[target] and not BATCH_TERMINAL[current] then
    if redis.call('HINCRBY', key, 'unfinished', -1) <= 0 then batch_try_finish(key, batch_id) end
  end
end
"""
)
