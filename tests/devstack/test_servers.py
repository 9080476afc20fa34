"""RedisServer and SeaweedS3Server start real processes on free loopback ports and leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import botocore.exceptions
import pytest
import redis

from deploy.devstack.servers import RedisServer, SeaweedS3Server
from tests.support import process_exists

pytestmark = pytest.mark.integration

_TCP_LISTEN = "0A"


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (IPv4 address, port) pairs ``pid`` listens on, read from /proc (IPv6 shows as '::')."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and inode in inodes:
                address, port = local.split(":")
                host = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)) if family == 4 else "::"
                found.add((host, int(port, 16)))
    return found


def test_redis_server_answers_keeps_an_append_only_file_and_stops(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    with server:
        pid = server.pid
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("kiln:test", "value")
        assert client.get("kiln:test") == b"value"
        assert {host for host, _ in listening_addresses(pid)} == {"127.0.0.1"}
        client.close()
        assert list((tmp_path / "redis").rglob("*.aof")), "no append-only file in the data dir"
    assert not process_exists(pid)


def test_seaweed_s3_verifies_signatures_keeps_data_and_ports_across_restarts(tmp_path: Path) -> None:
    server = SeaweedS3Server(tmp_path / "s3", "kiln-test", "secret-key-1234")
    with server:
        pid = server.pid
        client = server.client()
        client.create_bucket(Bucket="kiln-test")
        client.put_object(Bucket="kiln-test", Key="outputs/a.txt", Body=b"hello")
        assert client.get_object(Bucket="kiln-test", Key="outputs/a.txt")["Body"].read() == b"hello"

        with pytest.raises(botocore.exceptions.ClientError) as rejected:
            server.client(secret_key="not-the-secret").get_object(Bucket="kiln-test", Key="outputs/a.txt")
        assert rejected.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

        listening = listening_addresses(pid)
        assert {host for host, _ in listening} == {"127.0.0.1"}
        assert {port for _, port in listening} <= set(server.ports.values())
    assert not process_exists(pid)
    assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{server.ports['master.port.grpc']}.sock"))

    again = SeaweedS3Server(tmp_path / "s3", "kiln-test", "secret-key-1234")
    assert again.endpoint_url == server.endpoint_url
    with again:
        assert again.client().get_object(Bucket="kiln-test", Key="outputs/a.txt")["Body"].read() == b"hello"


def test_two_seaweed_servers_run_side_by_side(tmp_path: Path) -> None:
    first = SeaweedS3Server(tmp_path / "one", "key-one", "secret-one-1234", buckets=["first"])
    second = SeaweedS3Server(tmp_path / "two", "key-two", "secret-two-1234", buckets=["second"])
    assert not set(first.ports.values()) & set(second.ports.values())
    with first, second:
        first.client().head_bucket(Bucket="first")
        second.client().head_bucket(Bucket="second")
        with pytest.raises(botocore.exceptions.ClientError):
            second.client().head_bucket(Bucket="first")
