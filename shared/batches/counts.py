"""A batch's counts, kept by its items' status changes (``shared/db/lua/batch_moved.lua``).

Every Lua script that changes a prediction's status calls ``batch_moved(current, target)``: for an
item of a batch it moves the batch's ``n:<status>`` counts by one and, on the item's first terminal
status, takes one off ``unfinished``. The state table lets a prediction become terminal only once,
so a batch finishes exactly once, whichever worker, retry or cancel ends its last item: the script
that takes ``unfinished`` to zero sets the batch ``completed`` (or ``canceled``, when a cancel was
asked for) and files it in ``keys.batches_finished()`` for its webhook (``shared.batches.records``;
``batch_finish.lua``). O(1) per item; nothing scans a batch.
"""

from __future__ import annotations

# A batch's own statuses (the batch hash's ``status`` field). ``running`` is not stored: a queued
# batch with an item started or ended is shown running.
VALIDATING, QUEUED, RUNNING, COMPLETED, CANCELED = "validating", "queued", "running", "completed", "canceled"
