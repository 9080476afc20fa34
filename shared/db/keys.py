"""Every Redis key Kiln writes, in one place."""

PREFIX = "kiln"


def prediction(prediction_id: str) -> str:
    """Hash: the prediction record, the source of truth for its status."""
    return f"{PREFIX}:prediction:{prediction_id}"


def prediction_logs(prediction_id: str) -> str:
    """String: the prediction's logs, appended to line by line while it runs."""
    return f"{PREFIX}:prediction:{prediction_id}:logs"


def prediction_events(prediction_id: str) -> str:
    """Pub/sub channel: ``{"status": ...}`` on every status or output change, ``{"logs": ...}`` per log append."""
    return f"{PREFIX}:prediction:{prediction_id}:events"


def running() -> str:
    """Sorted set: predictions being run, scored by when their lease lapses (unix seconds)."""
    return f"{PREFIX}:running"


def deadlines() -> str:
    """Sorted set: predictions with a deadline (``Cancel-After``) not yet enforced, scored by it (unix
    seconds); members leave when ``shared.predictions.deadlines.expire_due`` handles them or the record goes."""
    return f"{PREFIX}:deadlines"


def tenant_deployments(tenant: str) -> str:
    """Hash: a tenant's deployments, name -> JSON (``api.deployments``); kept until deleted."""
    return f"{PREFIX}:tenant:{tenant}:deployments"


def tenant_predictions(tenant: str) -> str:
    """Sorted set (all scores 0, ordered by id, which sorts by creation time): a tenant's predictions."""
    return f"{PREFIX}:tenant:{tenant}:predictions"


def secret(name: str) -> str:
    """String: a generated server secret (URL signing) when none is configured."""
    return f"{PREFIX}:secret:{name}"


def webhook_secret(tenant: str) -> str:
    """Hash: a tenant's webhook signing secret (``current``) and, after a rotation, the ``previous``
    one with ``previous_until`` (unix seconds). Kept as long as the tenant may have receivers."""
    return f"{PREFIX}:webhook:secret:{tenant}"


def webhook_delivery(delivery_id: str) -> str:
    """Hash: one webhook event's delivery state (url, body, attempts, last outcome, next attempt)."""
    return f"{PREFIX}:webhook:delivery:{delivery_id}"


def webhook_delivery_attempts(delivery_id: str) -> str:
    """List: one delivery's attempts, oldest first, each JSON ``{"at", "status_code", "error", "duration_ms"}``;
    the latest ``shared.webhooks.outbox.MAX_ATTEMPTS_KEPT`` only. Lives and goes with its delivery."""
    return f"{PREFIX}:webhook:delivery:{delivery_id}:attempts"


def webhook_deliveries(prediction_id: str) -> str:
    """Sorted set: the ids of a prediction's deliveries (every event), scored by when each was recorded
    (unix seconds). Deleted with its record; a TTL past the record's expiry is the backstop."""
    return f"{PREFIX}:webhook:deliveries:{prediction_id}"


def tenant_failed_webhooks(tenant: str) -> str:
    """Sorted set: a tenant's ``completed`` deliveries that failed (no more attempts scheduled), scored
    by when they failed in unix microseconds, each score unique (a list cursor). A member leaves when it
    is sent again, when its record expires, or once older than a finished delivery is kept."""
    return f"{PREFIX}:tenant:{tenant}:webhooks:failed"


def webhook_due() -> str:
    """Sorted set: pending delivery ids scored by when they are next due (unix seconds)."""
    return f"{PREFIX}:webhook:due"


def webhook_throttle(prediction_id: str, event: str) -> str:
    """String with a short TTL: set while ``event`` may not be sent again for this prediction."""
    return f"{PREFIX}:webhook:throttle:{prediction_id}:{event}"


def webhook_latest_delivery(prediction_id: str, event: str) -> str:
    """String: the id of a prediction's latest ``start`` or ``output`` delivery; its ``completed``
    delivery waits until that one was attempted."""
    return f"{PREFIX}:webhook:latest:{prediction_id}:{event}"


def webhook_completed(prediction_id: str) -> str:
    """String: set once a prediction's ``completed`` event is recorded; later ``logs`` events are stale."""
    return f"{PREFIX}:webhook:completed:{prediction_id}"


def webhook_progress_sending(prediction_id: str) -> str:
    """Counter: ``output``/``logs`` deliveries of a prediction being attempted right now."""
    return f"{PREFIX}:webhook:sending:{prediction_id}"


def webhook_tenant_sending(tenant: str) -> str:
    """Sorted set: a tenant's webhook deliveries being attempted now, scored by when each claim lapses (under
    the tenant's own prefix: ``webhook_progress_sending`` names predictions under ``webhook:sending:``)."""
    return f"{PREFIX}:tenant:{tenant}:webhooks:sending"


def webhook_tenant_waiting(tenant: str) -> str:
    """Sorted set: a tenant's webhook deliveries waiting for one of its places, scored by when each began to
    wait; an attempt that ends wakes the first."""
    return f"{PREFIX}:tenant:{tenant}:webhooks:waiting"


def webhook_attempt_lock(delivery_id: str) -> str:
    """String with a TTL: held while one process attempts the delivery."""
    return f"{PREFIX}:webhook:lock:{delivery_id}"


def file(file_id: str) -> str:
    """String (JSON, expires with retention): an uploaded file's metadata."""
    return f"{PREFIX}:file:{file_id}"


def tenant_files(tenant: str) -> str:
    """Sorted set (scores 0, ordered by id): a tenant's uploaded files."""
    return f"{PREFIX}:tenant:{tenant}:files"


def idempotency(tenant: str, key_digest: str) -> str:
    """String (24 h): the body fingerprint and prediction id an Idempotency-Key was first used with."""
    return f"{PREFIX}:idempotency:{tenant}:{key_digest}"


def api_alive(owner: str) -> str:
    """String (``api.intake.idempotency.OWNER_TTL_S``): an API process is alive; its Idempotency-Key claims
    name it, so that a retry can tell a request whose process died from a slow one."""
    return f"{PREFIX}:api-alive:{owner}"


def token(digest: str) -> str:
    """Hash: a token created at run time (``kiln tokens create``), by its SHA-256: ``name``,
    ``created_at`` and its limits (``rate_limit_per_s``, ``rate_limit_burst``, ``max_queued``) where
    set. Deleted when revoked."""
    return f"{PREFIX}:token:{digest}"


def token_names() -> str:
    """Hash: token name -> SHA-256 of the token created under that name."""
    return f"{PREFIX}:tokens:names"


def bootstrap_tokens() -> str:
    """Hash: name -> SHA-256 of each bootstrap token (``KILN_API_TOKEN``) of the API process that started
    last, which rewrites it whole at start, so ``kiln tokens`` lists and guards those names without the
    API's environment. As large as that setting."""
    return f"{PREFIX}:tokens:bootstrap"


def revoked_tokens() -> str:
    """Set: SHA-256 digests of revoked bootstrap tokens (``KILN_API_TOKEN`` entries), refused even so."""
    return f"{PREFIX}:tokens:revoked"


def open_streams(tenant: str) -> str:
    """Sorted set: a tenant's open streams and ``Prefer: wait`` creates (one member each, across API
    processes), scored by when its lease lapses; a process renews its members while they are open."""
    return f"{PREFIX}:tenant:{tenant}:open-streams"


def rate_limit(tenant: str) -> str:
    """Hash: a tenant's token bucket (tokens, last refill time)."""
    return f"{PREFIX}:ratelimit:{tenant}"


def model_run_count(model_ref: str) -> str:
    """Counter: predictions created for a model."""
    return f"{PREFIX}:model:{model_ref}:run_count"


def retention() -> str:
    """Sorted set: "prediction:<id>" / "file:<id>" scored by when their stored data is deleted."""
    return f"{PREFIX}:retention"


def queued_by_tenant() -> str:
    """Hash: tenant -> predictions of that tenant waiting in the queue (status ``starting``)."""
    return f"{PREFIX}:queued:by_tenant"


def queued_by_family() -> str:
    """Hash: model family (Celery queue) -> predictions waiting in it; their sum is the global depth."""
    return f"{PREFIX}:queued:by_family"


def batch(batch_id: str) -> str:
    """String (JSON, 24 h): a batch create's results (prediction ids and problems), replayed for its Idempotency-Key."""
    return f"{PREFIX}:batch:{batch_id}"


def step_gate(name: str) -> str:
    """String with a TTL, written by tests only (``KILN_STEP_GATES``): while it exists, predictions
    prompted ``step-gate:<name>`` wait after their first step. The test deletes it, or it expires."""
    return f"{PREFIX}:step-gate:{name}"


def batch_record(batch_id: str) -> str:
    """Hash: a batch object (``shared.batches.records``): its fields, and ``n:<status>`` counts of its items per
    prediction status kept by the status-changing Lua scripts (``unfinished``: items not yet terminal).
    Expires after its items' records can (``BatchStore.ttl_s``: ``BATCH_TTL_S`` + ``KILN_RECORD_RETENTION_S``)."""
    return f"{PREFIX}:batch:{batch_id}:record"


def batch_items(batch_id: str) -> str:
    """List: a batch's items in submission order: a prediction id, or ``!`` + JSON ``{"line", "problem"}``
    for an item that was refused. Expires with the batch record."""
    return f"{PREFIX}:batch:{batch_id}:items"


def tenant_batches(tenant: str) -> str:
    """Sorted set (scores 0, ordered by id, which sorts by creation time): a tenant's batches. Members of
    expired batches are dropped when a listing finds them gone."""
    return f"{PREFIX}:tenant:{tenant}:batches"


def batches_finished() -> str:
    """Sorted set: batches whose every item is terminal, whose ``completed`` webhook is still to be
    recorded, scored by when a settler may take it (``shared.batches.records.BatchSettler``). Emptied by it."""
    return f"{PREFIX}:batches:finished"


def predictions_ended() -> str:
    """Sorted set: predictions that entered a terminal status (added by the status change itself, in its
    script) whose ending is not yet followed up: retention scheduled and ``completed`` webhook recorded,
    and with ``KILN_REDIS_MIN_REPLICAS_ACK`` both confirmed by the replicas. Scored by when a maintenance
    job may take one over from the process that ended it (``PredictionLifecycle.follow_up_missed``)."""
    return f"{PREFIX}:predictions:ended"


def dispatch_tenants(family: str) -> str:
    """List: the round-robin ring of tenants with batch items waiting for ``family`` in Kiln's
    dispatcher (``shared.scheduling.dispatcher``); each tenant at most once. Emptied as their lists drain."""
    return f"{PREFIX}:dispatch:{family}:tenants"


def dispatch_queue(family: str, tenant: str) -> str:
    """List: a tenant's batch items (prediction ids) waiting for ``family``, oldest first; the dispatcher
    moves them onto Celery's queue as workers free up. Drained by the dispatcher."""
    return f"{PREFIX}:dispatch:{family}:tenant:{tenant}"


def queued_waiting() -> str:
    """Sorted set: queued predictions whose Celery message was sent (a create, a dispatcher release, a
    requeue), scored by when it was sent or last checked; added in the transaction that writes the
    message (a requeue: the status script), removed when the prediction leaves the queue (its status
    script). ``shared.scheduling.lost_messages`` sends the message again for one left too long."""
    return f"{PREFIX}:queued:waiting"


def dispatch_claimed() -> str:
    """Sorted set: ``<family> <prediction id>`` released by the dispatcher whose Celery message is
    being written, scored by the claim time; a claim older than a minute is sent again (a dispatcher
    died between claim and push). Emptied as messages are pushed."""
    return f"{PREFIX}:dispatch:claimed"


def queue_line(family: str, line: str) -> str:
    """Hash: the tickets of one line of a model family's queue (``shared.scheduling.queue_lines``; the line is
    its Celery priority step): ``enq`` issued, ``left`` left the queue, ``head`` the highest started; a
    round-robin line also keeps them per tenant (``enq:<tenant>``, ...) and ``tenants`` with some waiting.
    Fields are dropped as their counter set drains (nothing of it waiting), so the hash goes with the line's work."""
    return f"{PREFIX}:queue-line:{family}:{line}"


def queue_line_skipped(family: str, counter: str) -> str:
    """Sorted set: tickets of one counter set of ``queue_line`` (``<line>``, or ``<line>:<tenant>`` in a
    round-robin line) that left without starting while older ones still waited (canceled, aborted),
    scored by ticket. Trimmed as started tickets pass them; deleted when the counter set drains."""
    return f"{PREFIX}:queue-line:{family}:{counter}:skipped"


def batch_shared_fields(batch_id: str, index: int) -> str:
    """Hash: record fields (the input, the version) that items of a batch submitted with the same text
    share; their records name it in ``shared_fields`` instead of holding copies, so a queued item's
    record stays in Redis's compact hash encoding. Expires with the batch record."""
    return f"{PREFIX}:batch:{batch_id}:shared:{index}"


# The batch record's field that says how many indexes its ``batch_shared_fields`` keys take (0 .. n - 1).
BATCH_SHARED_GROUPS = "shared_groups"


# How each key above stays bounded, by builder name (a test holds every builder to one, and checks the
# TTLs on a running stack):
# - "ttl": written with an expiry, every time;
# - "record": deleted with its prediction's record (``shared.predictions.retention``, KILN_RECORD_RETENTION_S);
# - "swept": a collection whose members a named job removes (the janitor, the lease reaper, the
#   webhook sender, the open-stream keeper, the API's listing);
# - "config": one key, or one per tenant, token, model or model family: grows with configuration,
#   never with traffic;
# - "channel": a pub/sub channel: Redis stores nothing.
BOUNDS: dict[str, str] = {
    "prediction": "record",
    "prediction_logs": "record",
    "prediction_events": "channel",
    "running": "swept",  # leases: a terminal status removes the member, the reaper the lapsed ones
    "tenant_predictions": "swept",  # record expiry removes the member
    "secret": "config",
    "webhook_secret": "config",
    "webhook_delivery": "swept",  # pending: in webhook_due; done: expires (outbox.kept_s) unless its record goes first
    "webhook_delivery_attempts": "swept",  # as its delivery
    "webhook_deliveries": "record",
    "tenant_failed_webhooks": "swept",  # trimmed on each add; a retry and record expiry remove members
    "webhook_due": "swept",  # the webhook sender removes delivered and abandoned deliveries
    "webhook_throttle": "ttl",
    "webhook_tenant_sending": "ttl",  # each attempt renews it; attempts remove their members
    "webhook_tenant_waiting": "ttl",  # each wait renews it; an attempt's end pops a member
    "webhook_latest_delivery": "ttl",
    "webhook_completed": "ttl",
    "webhook_progress_sending": "ttl",
    "webhook_attempt_lock": "ttl",
    "file": "ttl",
    "tenant_files": "swept",  # the janitor removes a file's member when the file expires
    "idempotency": "ttl",
    "api_alive": "ttl",
    "token": "config",
    "token_names": "config",
    "bootstrap_tokens": "config",
    "revoked_tokens": "config",
    "open_streams": "ttl",
    "rate_limit": "ttl",
    "model_run_count": "config",
    "retention": "swept",  # the janitor removes each member once done
    "queued_by_tenant": "config",
    "queued_by_family": "config",
    "batch": "ttl",
    "step_gate": "ttl",
    "deadlines": "swept",  # the deadline job removes each member once its deadline (at most 7 days) passes
    "tenant_deployments": "config",  # a tenant's deployments, until deleted
    "batch_record": "ttl",  # BatchStore.ttl_s: outlives its items' records
    "batch_items": "ttl",
    "batch_shared_fields": "ttl",
    "tenant_batches": "swept",  # the API's listing drops expired batches
    "batches_finished": "swept",  # the batch settler removes each once its webhook is recorded
    "predictions_ended": "swept",  # the lifecycle removes each once its ending is followed up
    "dispatch_tenants": "swept",  # the dispatcher drops a tenant whose list drained
    "dispatch_queue": "swept",  # drained by the dispatcher
    "dispatch_claimed": "swept",  # emptied as the dispatcher's messages are pushed
    "replication_fence": "config",  # one counter
    "queue_line": "swept",  # a counter set's fields go when it drains (the status scripts, queue_lines.lua)
    "queue_line_skipped": "swept",  # trimmed as started tickets pass, deleted when its counter set drains
    "queued_waiting": "swept",  # a member leaves with the queue (status scripts) or its record (the sweep)
}


def replication_fence() -> str:
    """A counter each replicated acknowledgement bumps before its WAIT (``shared.db.replication``): WAIT
    covers the writes of the connection it runs on, so the fence makes them the latest write there."""
    return f"{PREFIX}:replication-fence"
