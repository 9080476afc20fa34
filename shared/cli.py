"""The ``kiln`` command (declared in pyproject's ``[project.scripts]``): a client of the API, and
administration without a restart.

    kiln run MODEL [-i KEY=VALUE ...] [-i KEY=@path] [-o DIR]
    kiln predictions list [--limit N] [--json] | get ID | cancel ID | delete ID
    kiln batch submit FILE.jsonl [--model MODEL] [--wait] [--results OUT.jsonl] | get ID | cancel ID
    kiln webhooks failed [--since WHEN] [--json] | retry WEBHOOK_ID | retry --all-failed [--since WHEN]
    kiln tokens create NAME [--rate-limit-per-s N] [--rate-limit-burst N] [--max-queued N]
    kiln tokens list
    kiln tokens revoke NAME
    kiln lua [NAME]

The client commands (``shared.client``) speak HTTP to the API: ``--url``/``--token``, else
``KILN_URL``/``KILN_TOKEN``, else ``~/.config/kiln/config.toml``; their exit status is 0 when every
prediction succeeded, 1 when one failed or was canceled, 2 for usage, connection and HTTP errors.

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

from shared.client import commands as client
from shared.client.inputs import positive_int
from shared.db import lua
from shared.db.client import RedisTarget, connect, redis_target
from shared.security.tokens import TokenError, TokenInfo, TokenLimits, TokenRegistry
from shared.settings import Settings

# Where ``make run`` keeps the URL of the Redis it started (password included), under the data dir.
REDIS_URL_FILE = "redis-url"


ADMIN_HELP = """
administration commands (tokens, lua) talk to the API's Redis (KILN_REDIS_URL, else the one `make run`
started); tokens: exit status 1 when a name is in use or unknown, 2 when Redis is unavailable.
"""


def redis_url(settings: Settings) -> str:
    """``KILN_REDIS_URL`` when set, else the one ``make run`` wrote, else the default."""
    kept = Path(settings.data_dir) / REDIS_URL_FILE
    if "redis_url" not in settings.model_fields_set and kept.is_file():
        return kept.read_text().strip()
    return settings.redis_url


def cli_redis_target(settings: Settings) -> RedisTarget:
    """The Redis the ``tokens`` commands use: ``redis_url``'s, behind the sentinels when they are set."""
    return replace(redis_target(settings), url=redis_url(settings))


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="kiln",
        description="Run models on a Kiln API, and administer a Kiln deployment.",
        epilog=client.HELP + ADMIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = root.add_subparsers(dest="group", required=True)
    client.add_commands(groups)
    tokens = groups.add_parser("tokens", help="API tokens: each token is a tenant")
    commands = tokens.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a token and print it (the only time it is shown)")
    create.add_argument("name", help="a name for the token: letters, digits, '.', '_', '-'")
    create.add_argument("--rate-limit-per-s", type=_positive_float, help="its requests per second (default: service's)")
    create.add_argument("--rate-limit-burst", type=positive_int, help="its burst size (default: the service's)")
    create.add_argument("--max-queued", type=positive_int, help="its cap on queued predictions (default: service's)")
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
    """An administration command (``tokens``, ``lua``) with the registry given."""
    return administer(parser().parse_args(argv), registry, out)


def administer(args: argparse.Namespace, registry: TokenRegistry, out: TextIO) -> int:
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
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.group in client.GROUPS:
        return client.main(args)
    settings = Settings()
    target = cli_redis_target(settings)
    redis_client: Redis = connect(target)
    try:
        return administer(args, TokenRegistry(redis_client, settings.api_token), sys.stdout)
    except TokenError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"kiln: Redis ({target.address}) unavailable: {exc}", file=sys.stderr)
        return 2
    finally:
        redis_client.close()


if __name__ == "__main__":
    raise SystemExit(main())
