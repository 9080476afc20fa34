"""The ``kiln`` command (declared in pyproject's ``[project.scripts]``): administration without a restart.

    kiln tokens create NAME [--rate-limit-per-s N] [--rate-limit-burst N] [--max-queued N]
    kiln tokens list
    kiln tokens revoke NAME
    kiln lua [NAME]

``kiln lua`` prints a Redis Lua script as Redis runs it (``shared.db.lua``), or without a name the
names; it needs no Redis. The ``tokens`` commands talk to the Redis the API uses: ``KILN_REDIS_URL``
(environment or ``.env``), else the URL ``make run`` keeps in ``<KILN_DATA_DIR>/redis-url`` (with the
password it generated); behind Sentinel, the primary ``KILN_REDIS_SENTINELS`` name (with that URL's
password).
The bootstrap tokens are those the running API published there at start (``KILN_API_TOKEN`` of the
API, which this command need not have), and this environment's ``KILN_API_TOKEN`` besides. A name in
use is refused (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from redis import Redis
from redis.exceptions import RedisError

from shared.db import lua
from shared.db.client import RedisTarget, connect, redis_target
from shared.security.tokens import TokenError, TokenInfo, TokenLimits, TokenRegistry
from shared.settings import Settings

# Where ``make run`` keeps the URL of the Redis it started (password included), under the data dir.
REDIS_URL_FILE = "redis-url"


def redis_url(settings: Settings) -> str:
    """``KILN_REDIS_URL`` when set, else the one ``make run`` wrote, else the default."""
    kept = Path(settings.data_dir) / REDIS_URL_FILE
    if "redis_url" not in settings.model_fields_set and kept.is_file():
        return kept.read_text().strip()
    return settings.redis_url


def cli_redis_target(settings: Settings) -> RedisTarget:
    """The Redis the ``tokens`` commands use: ``redis_url``'s, behind the sentinels when they are set."""
    return replace(redis_target(settings), url=redis_url(settings))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kiln", description="Administer a Kiln deployment.")
    groups = root.add_subparsers(dest="group", required=True)
    tokens = groups.add_parser("tokens", help="API tokens: each token is a tenant")
    commands = tokens.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a token and print it (the only time it is shown)")
    create.add_argument("name", help="a name for the token: letters, digits, '.', '_', '-'")
    create.add_argument("--rate-limit-per-s", type=_positive_float, help="its requests per second (default: service's)")
    create.add_argument("--rate-limit-burst", type=_positive_int, help="its burst size (default: the service's)")
    create.add_argument("--max-queued", type=_positive_int, help="its cap on queued predictions (default: service's)")
    commands.add_parser("list", help="the tokens accepted now (names and limits, never the tokens)")
    revoke = commands.add_parser("revoke", help="refuse a token from now on, in every API process")
    revoke.add_argument("name")
    lua.add_name_argument(groups.add_parser("lua", help="print a Redis Lua script as Redis runs it"))
    return root


def _describe(info: TokenInfo) -> str:
    limits = info.limits
    parts = [
        f"{info.name}",
        f"source={'KILN_API_TOKEN' if info.source == 'env' else 'kiln tokens'}",
        f"sha256={info.digest[:12]}…",
    ]
    if info.created_at is not None:
        parts.append(f"created={datetime.fromtimestamp(info.created_at, UTC).isoformat(timespec='seconds')}")
    if limits.rate_limit_per_s is not None:
        parts.append(f"rate_limit_per_s={limits.rate_limit_per_s:g}")
    if limits.rate_limit_burst is not None:
        parts.append(f"rate_limit_burst={limits.rate_limit_burst}")
    if limits.max_queued is not None:
        parts.append(f"max_queued={limits.max_queued}")
    return "  ".join(parts)


def run(argv: Sequence[str], registry: TokenRegistry, out: TextIO) -> int:
    args = parser().parse_args(argv)
    if args.group == "lua":
        out.write(lua.show(args.name))
    elif args.command == "create":
        limits = TokenLimits(args.rate_limit_per_s, args.rate_limit_burst, args.max_queued)
        out.write(registry.create(args.name, limits) + "\n")
    elif args.command == "list":
        for info in registry.list():
            out.write(_describe(info) + "\n")
    elif args.command == "revoke":
        revoked = registry.revoke(args.name)
        out.write(f"revoked {revoked.name}: refused from now on\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    target = cli_redis_target(settings)
    client: Redis = connect(target)
    try:
        return run(sys.argv[1:] if argv is None else argv, TokenRegistry(client, settings.api_token), sys.stdout)
    except TokenError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"kiln: Redis ({target.address}) unavailable: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
