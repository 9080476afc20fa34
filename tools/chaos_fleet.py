"""``make chaos CHAOS_ARGS="--fleet"``: the fleet chaos run, on loopback only.

A fleet: Redis as a primary, two replicas and three sentinels (``KILN_REDIS_MIN_REPLICAS_ACK=1``),
SeaweedFS, three API processes, four GPU workers (tiny profile) and two webhook workers. A load of
single creates with webhooks from several tenants (round-robin over the API processes, each retried
with its Idempotency-Key), some of them waited (``Prefer: wait``), and one batch file; faults while it
runs, each when the submissions reach a fraction of the total:

- the Redis primary SIGKILLed (restarted: Sentinel makes it a replica of the new one), and later the
  new primary too;
- an API process SIGKILLed (restarted after a few seconds);
- a GPU worker SIGKILLed mid-batch (restarted);
- S3 stopped for a while (``--s3-down-s``);
- the webhook receiver answering 503 for a while (``--receiver-down-s``; the retry schedule is
  stretched to outlast it).

It prints one line: accepted, lost, completed twice, webhooks missing, duplicated deliveries (the same
message again), refused, the longest window in which no create was answered 201, the longest one
submission waited for its 201, the p99 create latency outside the fault windows, and the processes that
exited by themselves and were restarted (a supervisor thread restarts them, as Kubernetes would).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from deploy.devstack.servers import SeaweedS3Server, free_port
from shared.db.client import connect
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from tests.support import data_uri, png_bytes, wait_until
from tests.support.receiver import WebhookReceiver
from tests.support.redis_ha import RedisHA, redis_ha
from tests.support.stack import CELERY, TOKEN_A, TOKEN_B, WEBHOOK_CELERY, Stack, healthy, uvicorn_argv

TERMINAL = {status.value for status in Status if status.is_terminal()}
APIS, GPU_WORKERS, WEBHOOK_WORKERS = 3, 4, 2
# A submission is retried (same Idempotency-Key) for this long before it counts as refused.
SUBMIT_RETRY_S = 180.0
# A process that exits by itself is started again this long after (a container's restart back-off).
RESTART_DELAY_S = 1.5
SUPERVISE_POLL_S = 0.5
# How much of an exited process's log the run prints.
LOG_TAIL_LINES = 15


def fleet_settings(receiver_down_s: float) -> dict[str, str]:
    # The retry schedule outlasts the receiver's outage (its sum is more than the outage, twice over).
    schedule = [1, 2, 4, 8, 15] + [30] * int(2 * receiver_down_s / 30 + 2)
    return {
        "KILN_LEASE_S": "6",
        "KILN_MAX_ATTEMPTS": "4",
        "KILN_STEP_GATES": "false",
        "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
        "KILN_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(schedule),
        "KILN_WEBHOOK_TIMEOUT_S": "10",
        "KILN_STORAGE_ATTEMPTS": "8",
        "KILN_REDIS_MIN_REPLICAS_ACK": "1",
        "KILN_RATE_LIMIT_PER_S": "1000000",
        "KILN_RATE_LIMIT_BURST": "1000000",
    }


def gpu_worker_argv(index: int) -> list[str]:
    return [*CELERY, "--pool", "solo", "--concurrency", "1", "-Q", "gpu.sd2-depth", "--hostname", f"gpu-{index}@%h"]


def webhook_worker_argv(index: int) -> list[str]:
    return [
        *WEBHOOK_CELERY,
        "--pool",
        "threads",
        "--concurrency",
        "4",
        "-Q",
        "webhooks",
        "--hostname",
        f"wh-{index}@%h",
    ]


class Fleet:
    """The fleet's processes (in one ``Stack``), its Redis and its API URLs."""

    def __init__(self, stack: Stack, ha: RedisHA, api_ports: list[int]) -> None:
        self.stack = stack
        self.ha = ha
        self.api_ports = api_ports
        # Held while a process is killed or started; a process a fault killed on purpose is in ``planned``
        # until the fault starts it again (the supervisor leaves it alone meanwhile).
        self.lock = threading.Lock()
        self.planned: set[str] = set()

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def start_api(self, index: int) -> None:
        self.start(f"api-{index}", uvicorn_argv(self.api_ports[index]))

    def start_gpu_worker(self, index: int) -> None:
        self.start(f"gpu-{index}", gpu_worker_argv(index))

    def start(self, name: str, argv: list[str]) -> None:
        with self.lock:
            self.stack.start(name, argv)
            self.planned.discard(name)

    def kill(self, name: str) -> None:
        """SIGKILL a process on purpose: the fault that kills it starts it again, not the supervisor."""
        with self.lock:
            self.planned.add(name)
            process = self.stack.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)


class Supervisor:
    """Restarts a fleet process that exited without a fault killing it, as Kubernetes or compose would:
    after ``RESTART_DELAY_S``, with the same command; each exit logged with its status and its log's tail."""

    def __init__(self, fleet: Fleet, log: Callable[[str], None]) -> None:
        self.fleet, self.log = fleet, log
        self.restarts: list[str] = []
        self._exited: dict[str, tuple[subprocess.Popen, float]] = {}  # name -> (the process that exited, when)
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stopping.wait(SUPERVISE_POLL_S):
            self.check()

    def check(self) -> None:
        """One look at every process: note the ones that exited, restart those whose delay has passed."""
        fleet = self.fleet
        with fleet.lock:
            for name, process in list(fleet.stack.processes.items()):
                if name in fleet.planned or process.poll() is None:
                    self._exited.pop(name, None)
                    continue
                seen = self._exited.get(name)
                if seen is None or seen[0] is not process:
                    self._exited[name] = (process, time.monotonic())
                    tail = self._tail(name)
                    self.log(f"{name} exited by itself (status {process.returncode}); its log ends:\n{tail}")
                elif time.monotonic() - seen[1] >= RESTART_DELAY_S:
                    del self._exited[name]
                    self.restarts.append(name)
                    fleet.stack.start(name, fleet.stack.argv[name])
                    self.log(f"{name} restarted (unplanned restart {len(self.restarts)})")

    def _tail(self, name: str) -> str:
        path = self.fleet.stack.logs / f"{name}.log"
        lines = path.read_bytes()[-8000:].decode(errors="replace").splitlines() if path.exists() else []
        return "\n".join(f"    {line}" for line in lines[-LOG_TAIL_LINES:])


def start_fleet(
    exits: ExitStack,
    root: Path,
    weights_dir: Path,
    settings: dict[str, str],
    size: tuple[int, int, int] = (APIS, GPU_WORKERS, WEBHOOK_WORKERS),
) -> Fleet:
    """The fleet, ready: ``size`` is (API processes, GPU workers, webhook workers)."""
    apis, gpu_workers, webhook_workers = size
    (root / "logs").mkdir(parents=True)
    access_key, secret_key = "kiln-fleet", secrets.token_hex(16)
    ha = exits.enter_context(redis_ha(root / "redis", replicas=2))
    s3 = exits.enter_context(SeaweedS3Server(root / "s3", access_key, secret_key))
    ports = [free_port() for _ in range(apis)]
    env = ha.environment() | settings
    stack = Stack.plain(root, ha.primary, s3, (access_key, secret_key), weights_dir, ports[0], env)
    exits.callback(stack.stop_all)
    fleet = Fleet(stack, ha, ports)
    for index in range(webhook_workers):
        stack.start(f"webhooks-{index}", webhook_worker_argv(index))
    for index in range(apis):
        fleet.start_api(index)
    for index in range(gpu_workers):
        fleet.start_gpu_worker(index)
    for index in range(gpu_workers):
        stack.ready(f"gpu-{index}")
    for url in fleet.api_urls:
        wait_until(lambda url=url: healthy(url), 60, what=f"{url}/health")
    return fleet


@dataclass(frozen=True)
class Attempt:
    """One create attempt: when it ended (seconds since the load started), the API process it went to, its
    status (None: no answer, the connection failed), a short detail (the problem's, or the error's name),
    the submission it was for, how long it took and whether it was a waited create."""

    at: float
    api: int
    status: int | None
    detail: str
    submission: int
    took: float
    waited: bool

    @property
    def answer(self) -> str:
        return f"{self.status or 'no answer'} {self.detail}".strip()


class Load:
    """Creates from two tenants over the API processes; every attempt (``Attempt``)."""

    def __init__(self, fleet: Fleet, webhook: str, count: int, waited_share: float) -> None:
        self.fleet, self.webhook, self.count, self.waited_share = fleet, webhook, count, waited_share
        self.image = data_uri(png_bytes(64, 64))
        self.accepted: dict[str, int] = {}
        self.refused: list[int] = []
        self.unexpected: list[str] = []
        self.attempts: list[Attempt] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._next = iter(range(count))

    def run(self, threads: int) -> None:
        self.started = time.monotonic()
        workers = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    @property
    def progress(self) -> float:
        with self._lock:
            return (len(self.accepted) + len(self.refused)) / self.count

    def _work(self, thread: int) -> None:
        # Two tenants; the receiver verifies both (each tenant signs with its own webhook secret).
        token = TOKEN_A if thread % 2 == 0 else TOKEN_B
        clients = [
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) for url in self.fleet.api_urls
        ]
        try:
            while True:
                with self._lock:
                    index = next(self._next, None)
                if index is None:
                    return
                self._create(clients, index)
        finally:
            for client in clients:
                client.close()

    def _create(self, clients: list[httpx.Client], index: int) -> None:
        body = {
            "version": "kiln/sd2-depth2img",
            "input": {"prompt": f"fleet {index}", "input_image": self.image, "num_inference_steps": 2, "seed": index},
            "webhook": self.webhook,
            "webhook_events_filter": ["completed"],
        }
        headers = {"Idempotency-Key": f"fleet-{index}"}
        waited = random.random() < self.waited_share
        if waited:
            headers["Prefer"] = "wait=5"
        deadline = time.monotonic() + SUBMIT_RETRY_S
        attempt = 0
        while time.monotonic() < deadline:
            api = (index + attempt) % len(clients)
            attempt += 1
            started = time.monotonic()
            response: httpx.Response | None = None
            try:
                response = clients[api].post("/v1/predictions", json=body, headers=headers, timeout=30)
                status, detail = response.status_code, answer_detail(response)
            except httpx.TransportError as exc:
                status, detail = None, type(exc).__name__
            ended = time.monotonic()
            with self._lock:
                self.attempts.append(Attempt(ended - self.started, api, status, detail, index, ended - started, waited))
            if response is not None and status == 201:
                with self._lock:
                    self.accepted[response.json()["id"]] = index
                return
            if status not in {None, 409, 429, 503}:
                with self._lock:
                    self.unexpected.append(f"{status} {response.text[:200] if response is not None else ''}")
                return
            time.sleep(0.3)
        with self._lock:
            self.refused.append(index)

    def longest_refusal_s(self) -> float:
        window = self.longest_window()
        return 0.0 if window is None else window[1] - window[0]

    def spans(self) -> tuple[dict[int, float], dict[int, float]]:
        """Per submission, when its first attempt began and when it was answered 201 (if it was)."""
        first_try: dict[int, float] = {}
        done_at: dict[int, float] = {}
        for a in self.attempts:  # a submission's attempts follow one another
            first_try.setdefault(a.submission, a.at - a.took)
            if a.status == 201:
                done_at[a.submission] = a.at
        return first_try, done_at

    def longest_wait(self) -> tuple[float, int | None]:
        """The longest a submission waited for its 201, from its first attempt's start, and which one: where
        the longest window counts the gap between any two 201s, this is what one client went through."""
        first_try, done_at = self.spans()
        return max(((at - first_try[index], index) for index, at in done_at.items()), default=(0.0, None))

    def explain_wait(self, index: int | None) -> str:
        """The answers the submission that waited longest got, in order."""
        answers = Counter(a.answer[:70] for a in self.attempts if a.submission == index)
        return f"longest wait for a 201: submission {index}, answers {dict(answers)}"

    def longest_window(self) -> tuple[float, float] | None:
        """The longest time between two consecutive 201s (seconds since the load started), if two there were."""
        accepted = sorted(a.at for a in self.attempts if a.status == 201)
        return max(itertools.pairwise(accepted), key=lambda pair: pair[1] - pair[0], default=None)

    def explain_window(self, faults: list[tuple[str, float, float]]) -> list[str]:
        """What the longest window without a 201 was made of: its attempts' answers (by status and detail, and
        by API process), the submissions still pending when it began, whether it is the load's tail (no
        submission began after it started), and the faults it overlaps (``faults`` on the monotonic clock)."""
        window = self.longest_window()
        if window is None:
            return ["no window: fewer than two creates answered 201"]
        start, end = window
        inside = [a for a in self.attempts if start < a.at <= end]
        first_try, done_at = self.spans()
        pending = [s for s in first_try if first_try[s] <= start and done_at.get(s, float("inf")) > start]
        began_after = sum(1 for at in first_try.values() if at > start) + self.count - len(first_try)
        overlapping = [
            f"{name} at {s - self.started:.1f}-{e - self.started:.1f} s"
            for name, s, e in faults
            if s - self.started <= end and e - self.started >= start
        ]
        by_answer = Counter(a.answer for a in inside)
        by_api = Counter(a.api for a in inside)
        return [
            f"longest window without a 201: {end - start:.1f} s, from {start:.1f} s to {end:.1f} s of the load; "
            f"{len(inside)} attempts in it by answer: {dict(by_answer.most_common(8))}; by API process: "
            f"{dict(sorted(by_api.items()))}",
            f"  pending when it began: {len(pending)} submissions {sorted(pending)[:10]}; begun after it began: "
            f"{began_after} (the load's tail: {began_after == 0}); faults overlapping it: {overlapping or 'none'}",
        ]

    def write_attempts(self, path: Path) -> None:
        with path.open("w") as out:
            for a in self.attempts:
                out.write(json.dumps(asdict(a)) + "\n")

    def p99_outside(self, windows: list[tuple[float, float]]) -> float | None:
        # Creates answered at once (a waited create holds its answer until the prediction ends).
        latencies = [
            a.took
            for a in self.attempts
            if a.status == 201
            and not a.waited
            and not any(start <= a.at + self.started <= end for start, end in windows)
        ]
        return statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else None


def answer_detail(response: httpx.Response) -> str:
    """A short detail of a create's answer: a replay, or the start of the problem's detail."""
    if response.status_code == 201:
        return "replayed" if response.headers.get("Idempotent-Replayed") else ""
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = response.text
    return detail[:60]


class BatchFileLoad:
    """One batch file of ``lines`` distinct lines (prompt and seed per line, a small image each), uploaded
    and created as a batch object with a webhook while the single creates run; both retried like them."""

    def __init__(self, fleet: Fleet, webhook: str, lines: int) -> None:
        self.fleet, self.webhook, self.lines = fleet, webhook, lines
        self.batch_id: str | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._submit, name="batch-file", daemon=True)

    def _submit(self) -> None:
        image = data_uri(png_bytes(32, 32))
        content = "\n".join(
            json.dumps(
                {
                    "model": "kiln/sd2-depth2img",
                    "input": {"prompt": f"fleet line {n}", "input_image": image, "num_inference_steps": 2, "seed": n},
                }
            )
            for n in range(self.lines)
        ).encode()
        deadline = time.monotonic() + SUBMIT_RETRY_S
        for attempt in itertools.count():
            url = self.fleet.api_urls[attempt % len(self.fleet.api_urls)]
            try:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=120) as client:
                    upload = client.post("/v1/files", files={"content": ("fleet.jsonl", content, "application/jsonl")})
                    if upload.status_code == 201:
                        body = {"input_file": upload.json()["urls"]["get"], "webhook": self.webhook}
                        created = client.post("/v1/batches", json=body, headers={"Idempotency-Key": "fleet-batch"})
                        if created.status_code == 201:
                            self.batch_id = created.json()["id"]
                            return
                        self.error = f"{created.status_code} {created.text[:200]}"
                    else:
                        self.error = f"upload {upload.status_code} {upload.text[:200]}"
            except httpx.TransportError as exc:
                self.error = repr(exc)
            if time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def item_ids(self, url: str) -> list[str]:
        """The batch's predictions, in order, through its paged listing."""
        found: list[str] = []
        if self.batch_id is None:
            return found
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=60) as client:
            page: str | None = f"{url}/v1/batches/{self.batch_id}/predictions"
            while page:
                listed = client.get(page).raise_for_status().json()
                found += [item["id"] for item in listed["results"]]
                page = listed.get("next")
        return found


class Faults:
    """The fleet's faults in a thread, in order, as the load's progress passes each threshold; each
    fault's window (start, end) on the monotonic clock."""

    def __init__(
        self,
        fleet: Fleet,
        receiver: WebhookReceiver,
        progress: Callable[[], float],
        log: Callable[[str], None],
        s3_down_s: float,
        receiver_down_s: float,
    ) -> None:
        self.fleet, self.receiver, self.progress, self.log = fleet, receiver, progress, log
        self.s3_down_s, self.receiver_down_s = s3_down_s, receiver_down_s
        self.windows: list[tuple[str, float, float]] = []
        self.faults = [
            (0.10, "kill the Redis primary", self.kill_primary),
            (0.25, "kill an API process", self.kill_api),
            (0.40, "kill a GPU worker mid-batch", self.kill_gpu_worker),
            (0.50, "webhook receiver down", self.receiver_down),
            (0.55, "stop S3", self.stop_s3),
            (0.80, "kill the new Redis primary", self.kill_primary),
        ]
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def _run(self) -> None:
        for threshold, name, fault in self.faults:
            while self.progress() < threshold:
                time.sleep(0.2)
            started = time.monotonic()
            detail = fault()
            self.windows.append((name, started, time.monotonic()))
            self.log(f"{name}: {detail or 'done'} ({time.monotonic() - started:.1f} s)")

    def kill_primary(self) -> str:
        ha = self.fleet.ha
        primary = ha.current_primary()
        assert primary is not None
        victim = next(server for server in [ha.primary, *ha.replicas] if server.port == primary[1])
        killed = time.monotonic()
        victim.kill()
        promoted = wait_until(
            lambda: (found := ha.current_primary()) not in (None, primary) and found, 30, what="a new primary"
        )
        failover_s = time.monotonic() - killed
        # Back as the new primary's replica, as a sentinel-aware start script brings it back: a server
        # without persistence restarted as a primary would be an empty one that replicas could sync from.
        victim.replica_of = promoted[1]
        victim.start()
        return f"failover in {failover_s:.1f} s"

    def kill_api(self) -> str:
        self.fleet.kill("api-1")
        time.sleep(3)
        self.fleet.start_api(1)
        wait_until(lambda: healthy(self.fleet.api_urls[1]), 60, what="the restarted API")
        return "restarted"

    def kill_gpu_worker(self) -> str:
        self.fleet.kill("gpu-0")
        self.fleet.start_gpu_worker(0)
        self.fleet.stack.ready("gpu-0")
        return "restarted"

    def stop_s3(self) -> str:
        self.fleet.stack.s3.stop()
        time.sleep(self.s3_down_s)
        self.fleet.stack.s3.start()
        return f"down {self.s3_down_s:.0f} s"

    def receiver_down(self) -> str:
        # The receiver comes back by itself: the next faults run while it is down.
        self.receiver.down_for(self.receiver_down_s)
        return f"down for {self.receiver_down_s:.0f} s from now"


def run_fleet(args: argparse.Namespace, root: Path, log: Callable[[str], None]) -> str:
    with ExitStack() as exits:
        log(f"starting the fleet under {root}")
        size = getattr(args, "size", (APIS, GPU_WORKERS, WEBHOOK_WORKERS))
        fleet = start_fleet(exits, root, args.weights_dir, fleet_settings(args.receiver_down_s), size)
        supervisor = Supervisor(fleet, log)
        supervisor.start()
        exits.callback(supervisor.stop)  # before the fleet is stopped (callbacks run last first)
        secrets_ = []
        for token in (TOKEN_A, TOKEN_B):
            with httpx.Client(base_url=fleet.api_urls[0], headers={"Authorization": f"Bearer {token}"}) as client:
                secrets_.append(client.get("/v1/webhooks/default/secret").json()["key"])
        receiver = exits.enter_context(WebhookReceiver(secrets_))
        load = Load(fleet, receiver.url("/fleet"), args.count, waited_share=0.05)
        batch = BatchFileLoad(fleet, receiver.url("/fleet-batch"), getattr(args, "batch_lines", 0))
        faults = Faults(fleet, receiver, lambda: load.progress, log, args.s3_down_s, args.receiver_down_s)
        started = time.monotonic()
        faults.thread.start()
        if batch.lines:
            batch.thread.start()
        load.run(args.submitters)
        batch.thread.join(timeout=SUBMIT_RETRY_S + 300)
        log(f"submitted: {len(load.accepted)} accepted, {len(load.refused)} refused, batch {batch.batch_id}")
        if batch.lines and batch.batch_id is None:
            log(f"the batch file was refused: {batch.error}")
        faults.thread.join(timeout=args.receiver_down_s + 300)
        store = PredictionStore(connect(fleet.ha.target))
        ids = list(load.accepted)
        items = batch.item_ids(fleet.api_urls[0])

        def statuses() -> dict[str, str]:
            found: dict[str, str] = {}
            every = ids + items
            for at in range(0, len(every), 500):
                found |= {p.id: p.status.value for p in store.get_many(every[at : at + 500])}
            return found

        def batch_webhooks() -> int:
            return len(
                {r.headers["webhook-id"] for r in receiver.at("/fleet-batch") if r.body.get("id") == batch.batch_id}
            )

        def settled() -> bool:
            current, (delivered, _) = statuses(), receiver.terminal_deliveries()
            terminal = [i for i in ids if current.get(i) in TERMINAL]
            ended_items = sum(1 for i in items if current.get(i) in TERMINAL)
            log(
                f"terminal {len(terminal)}/{len(ids)}, completed webhooks {len(set(terminal) & set(delivered))}, "
                f"batch items ended {ended_items}/{len(items)}"
            )
            batch_done = batch.batch_id is None or batch_webhooks() > 0
            return len(terminal) == len(ids) and set(ids) <= set(delivered) and ended_items == len(items) and batch_done

        deadline = time.monotonic() + args.settle_timeout_s
        while not settled() and time.monotonic() < deadline:
            time.sleep(10)
        time.sleep(10)  # late duplicates
        current, (delivered, repeated) = statuses(), receiver.terminal_deliveries()
        failed = [p for p in store.get_many(ids) if p.status is Status.FAILED]
        reasons = Counter((p.error or "").split(":")[0][:80] for p in failed)
        if reasons:
            log(f"failed predictions by reason: {dict(reasons.most_common(5))}")
        windows = [(start, end + 5) for _, start, end in faults.windows]
        p99 = load.p99_outside(windows)
        counts = {
            "accepted": len(ids),
            "lost": sum(1 for i in ids if current.get(i) not in TERMINAL),
            "succeeded": sum(1 for i in ids if current.get(i) == Status.SUCCEEDED.value),
            "failed": len(failed),
            "completed_twice": sum(1 for i in ids if len(delivered.get(i, ())) > 1),
            "webhooks_missing": sum(1 for i in ids if i not in delivered),
            "repeated_deliveries": repeated,
            "batch_items": len(items),
            "batch_items_lost": sum(1 for i in items if current.get(i) not in TERMINAL),
            "batch_webhooks": batch_webhooks() if batch.batch_id else None,
            "refused": len(load.refused),
            "unexpected": len(load.unexpected),
            "longest_refusal_s": round(load.longest_refusal_s(), 1),
            "longest_wait_s": round(load.longest_wait()[0], 1),
            "create_p99_ms_outside_faults": None if p99 is None else round(p99 * 1000),
            "faults": len(faults.windows),
            "restarts": len(supervisor.restarts),
            "seconds": round(time.monotonic() - started),
        }
        if load.unexpected:
            log(f"unexpected answers, e.g. {load.unexpected[:3]}")
        for line in load.explain_window(faults.windows):
            log(line)
        log(load.explain_wait(load.longest_wait()[1]))
        load.write_attempts(root / "logs" / "attempts.jsonl")
        log(f"deliveries with a bad signature: {receiver.bad_signatures}")
        return " ".join(f"{name}={value}" for name, value in counts.items())
