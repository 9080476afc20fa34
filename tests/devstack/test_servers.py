"""RedisServer and SeaweedS3Server start real processes on free loopback ports and leave nothing behind."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import stat
from pathlib import Path

import botocore.exceptions
import httpx
import pytest
import redis

from deploy.devstack.servers import RedisSentinelServer, RedisServer, SeaweedS3Server
from tests.support import process_exists, wait_until

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


def test_redis_with_a_password_refuses_clients_without_it_and_keeps_its_files_private(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="pw-" + secrets.token_hex(8))
    with server:
        with redis.Redis.from_url(server.url) as client:
            client.set("kiln:secret:url-signing", "s3cret")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong").ping()
        # The password is in a file only its owner reads, never on the command line others can see.
        assert server.password not in " ".join(server.command_line())
        assert server.password not in Path(f"/proc/{server.pid}/cmdline").read_text()
    files = [tmp_path / "redis", *(tmp_path / "redis").rglob("*")]
    assert any(path.name.endswith(".aof") for path in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"


def test_a_replica_and_a_sentinel_follow_a_primary_with_a_password(tmp_path: Path) -> None:
    """The replica copies what the primary stores, and the sentinel, authenticating with the password
    (``auth-pass``), finds the primary's replica; neither shows the password to other users."""
    password = "pw-" + secrets.token_hex(8)
    with (
        RedisServer(tmp_path / "primary", appendonly=False, password=password) as primary,
        RedisServer(tmp_path / "replica", appendonly=False, password=password, replica_of=primary.port) as replica,
        RedisSentinelServer(tmp_path / "sentinel", primary.port, "kiln-test", password=password, quorum=1) as sentinel,
    ):
        with redis.Redis.from_url(primary.url) as client:
            client.set("kiln:copied", "yes")
        with redis.Redis.from_url(replica.url) as client:
            wait_until(lambda: client.get("kiln:copied") == b"yes", 20, what="the replica to copy the primary")
        with redis.Redis(port=sentinel.port, decode_responses=True) as client:
            assert client.execute_command("SENTINEL", "get-master-addr-by-name", "kiln-test") == [
                "127.0.0.1",
                str(primary.port),
            ]
            wait_until(
                lambda: client.execute_command("SENTINEL", "replicas", "kiln-test"), 20, what="the sentinel to find it"
            )
        for server in (replica, sentinel):
            assert password not in Path(f"/proc/{server.pid}/cmdline").read_text()
    for path in [*(tmp_path / "replica").rglob("*"), *(tmp_path / "sentinel").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"


def grpc_answers_without_a_certificate(port: int) -> bool:
    """Whether a gRPC port speaks to a client without credentials: plain HTTP/2, or TLS without a client certificate."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as plain:
        plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        try:
            if plain.recv(64):
                return True
        except OSError:
            pass
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
            return bool(tls.recv(64))
    except (ssl.SSLError, OSError):
        return False


def grpc_accepts_certificate(port: int, tls_dir: Path) -> bool:
    """The same port with the server's own client certificate: the handshake succeeds (the control)."""
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        return bool(tls.recv(64))


def test_seaweed_answers_without_credentials_only_on_s3_and_checks_signatures_there(tmp_path: Path) -> None:
    server = SeaweedS3Server(tmp_path / "s3", "kiln-test", "secret-key-1234", buckets=["kiln-test"])
    with server:
        client = server.client()
        client.put_object(Bucket="kiln-test", Key="predictions/p/out-0.png", Body=b"tenant data")
        ports = server.ports
        http = {name: f"http://127.0.0.1:{ports[name + '.port']}" for name in ("master", "volume", "filer")}
        # Master and filer HTTP APIs are off: nothing to list, read or delete (the master's
        # /col/delete would drop the bucket's whole collection).
        for url in (
            f"{http['master']}/dir/status",
            f"{http['master']}/dir/assign",
            f"{http['master']}/col/delete?collection=kiln-test",
            f"{http['filer']}/buckets/kiln-test/predictions/p/",
            f"{http['filer']}/buckets/kiln-test/predictions/p/out-0.png",
        ):
            assert httpx.get(url, timeout=5).status_code in {401, 403, 404}, url
        # The volume server wants a JWT for reading, writing and deleting.
        for method in ("GET", "POST", "DELETE"):
            response = httpx.request(method, f"{http['volume']}/1,0100000001", content=b"x", timeout=5)
            assert response.status_code == 401, (method, response.text)
        for component in ("master", "volume", "filer", "s3", "admin"):
            port = ports[component + ".port.grpc"]
            assert not grpc_answers_without_a_certificate(port), component
            assert grpc_accepts_certificate(port, tmp_path / "s3" / "tls"), component
        # The S3 endpoint still serves signed requests, and only those.
        assert client.get_object(Bucket="kiln-test", Key="predictions/p/out-0.png")["Body"].read() == b"tenant data"
        unsigned = httpx.get(f"{server.endpoint_url}/kiln-test/predictions/p/out-0.png", timeout=5)
        assert unsigned.status_code == 403
    for name in ("security.toml", "s3-identities.json", "tls/key.pem"):
        assert stat.S_IMODE((tmp_path / "s3" / name).stat().st_mode) == 0o600
