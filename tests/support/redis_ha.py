"""Redis behind Sentinel on loopback, for tests of failover: a primary, its replica (or replicas) and three
sentinels (quorum 2), each a real ``redis-server`` on a free port.

    with redis_ha(tmp_path) as ha:
        client = connect(ha.target)
        ha.kill_primary()          # SIGKILL; the sentinels promote the replica within a few seconds
        client.set("k", "v")       # rides out the failover
        assert ha.current_primary() == ha.replica_address
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from deploy.devstack.servers import LOOPBACK, RedisSentinelServer, RedisServer, ServerError
from shared.db.client import RedisTarget

MASTER = "kiln"
SENTINELS = 3
# How long the servers may take to agree (sentinels find each other through the primary every ~2 s).
SETTLE_TIMEOUT_S = 20.0
FAILOVER_TIMEOUT_S = 20.0


class RedisHA:
    """The running servers, and what a test does with them."""

    def __init__(self, primary: RedisServer, replicas: list[RedisServer], sentinels: list[RedisSentinelServer]) -> None:
        self.primary = primary
        self.replicas = replicas
        self.replica = replicas[0]
        self.sentinels = sentinels

    @property
    def password(self) -> str | None:
        return self.primary.password

    @property
    def target(self) -> RedisTarget:
        """What Kiln's clients are given: the sentinels, the master's name, and the password and
        database in a URL whose host no client uses."""
        return RedisTarget(self.primary.url, tuple((LOOPBACK, sentinel.port) for sentinel in self.sentinels), MASTER)

    def settings_overrides(self) -> dict[str, str]:
        """``Settings`` fields (``Settings(**overrides)``) naming this Redis."""
        return {
            "redis_url": self.primary.url,
            "redis_sentinels": ",".join(sentinel.address for sentinel in self.sentinels),
            "redis_sentinel_master": MASTER,
        }

    def environment(self) -> dict[str, str]:
        """The same as ``KILN_*`` variables, for processes a test starts."""
        return {f"KILN_{name.upper()}": value for name, value in self.settings_overrides().items()}

    @property
    def replica_address(self) -> tuple[str, int]:
        return (LOOPBACK, self.replica.port)

    def current_primary(self) -> tuple[str, int] | None:
        """The primary's address as the first sentinel that answers gives it."""
        return next(filter(None, map(self._asked, self.sentinels)), None)

    def kill_primary(self) -> None:
        """SIGKILL the primary: no shutdown, its clients' connections reset."""
        self.primary.kill()

    def wait_for_failover(self) -> tuple[str, int]:
        """Until every sentinel names one of the replicas the primary (it was promoted); its address."""
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        replicas = {(LOOPBACK, replica.port) for replica in self.replicas}
        while True:
            named = {self._asked(sentinel) for sentinel in self.sentinels}
            if len(named) == 1 and (promoted := named.pop()) in replicas:
                assert promoted is not None
                return promoted
            if time.monotonic() > deadline:
                raise ServerError(f"no failover to a replica within {FAILOVER_TIMEOUT_S:.0f} s")
            time.sleep(0.1)

    def _asked(self, sentinel: RedisSentinelServer) -> tuple[str, int] | None:
        with redis.Redis(host=LOOPBACK, port=sentinel.port, socket_timeout=2, decode_responses=True) as client:
            try:
                found = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
            except redis.RedisError:
                return None
            return (found[0], int(found[1])) if found else None

    def _settled(self) -> bool:
        """Whether the replica is in sync and every sentinel knows the primary, the replica and the
        other sentinels (only then can they agree on a failover)."""
        for server in self.replicas:
            with redis.Redis(
                host=LOOPBACK, port=server.port, password=self.password, socket_timeout=2, decode_responses=True
            ) as replica:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
        for sentinel in self.sentinels:
            with redis.Redis(host=LOOPBACK, port=sentinel.port, socket_timeout=2, decode_responses=True) as client:
                state = client.execute_command("SENTINEL", "master", MASTER)
                fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
                if int(fields["num-other-sentinels"]) != SENTINELS - 1 or int(fields["num-slaves"]) != len(
                    self.replicas
                ):
                    return False
        return True

    def wait_settled(self) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not self._settled():
            if time.monotonic() > deadline:
                raise ServerError(f"primary, replica and sentinels did not settle within {SETTLE_TIMEOUT_S:.0f} s")
            time.sleep(0.1)


@contextmanager
def redis_ha(data_dir: Path, password: str | None = "kiln-ha-password", replicas: int = 1) -> Iterator[RedisHA]:
    """Start a primary, ``replicas`` replicas and three sentinels under ``data_dir``; stop them all on exit."""
    with ExitStack() as stack:
        primary = stack.enter_context(RedisServer(data_dir / "primary", appendonly=False, password=password))
        followers = [
            stack.enter_context(
                RedisServer(data_dir / f"replica-{n}", appendonly=False, password=password, replica_of=primary.port)
            )
            for n in range(replicas)
        ]
        sentinels = [
            stack.enter_context(
                RedisSentinelServer(data_dir / f"sentinel-{n}", primary.port, master=MASTER, password=password)
            )
            for n in range(SENTINELS)
        ]
        ha = RedisHA(primary, followers, sentinels)
        ha.wait_settled()
        yield ha
