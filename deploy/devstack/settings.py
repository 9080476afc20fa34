"""What the local stack is configured with: the environment, plus secrets generated once per data dir."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.devstack.servers import private_dir, write_private
from shared.security.tokens import TokenInfo, bootstrap_tokens

DEFAULT_DATA_DIR = ".kiln"
DEFAULT_API_PORT = 8000
DEFAULT_BUCKET = "kiln"


# The name of the token make run generates (when KILN_API_TOKEN is not set).
GENERATED_TOKEN_NAME = "default"


def load_or_create_token(data_dir: Path, env: Mapping[str, str]) -> str:
    """``KILN_API_TOKEN`` when set, else the token kept in ``<data_dir>/api-token`` (made on first use)."""
    if env.get("KILN_API_TOKEN"):
        return env["KILN_API_TOKEN"]
    path = data_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = "kiln_" + secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    return token


def load_or_create_redis_password(data_dir: Path) -> str:
    """The password of the Redis ``make run`` starts, kept in ``<data_dir>/redis-password`` (0600)."""
    path = data_dir / "redis-password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(32)
    write_private(path, password + "\n")
    return password


def load_or_create_s3_credentials(data_dir: Path, env: Mapping[str, str]) -> tuple[str, str]:
    """The S3 key pair from ``KILN_S3_ACCESS_KEY``/``KILN_S3_SECRET_KEY``, else from ``s3-credentials.json``."""
    if env.get("KILN_S3_ACCESS_KEY") and env.get("KILN_S3_SECRET_KEY"):
        return env["KILN_S3_ACCESS_KEY"], env["KILN_S3_SECRET_KEY"]
    path = data_dir / "s3-credentials.json"
    if path.exists():
        stored = json.loads(path.read_text())
        return stored["access_key"], stored["secret_key"]
    access_key, secret_key = "kiln" + secrets.token_hex(8), secrets.token_urlsafe(30)
    write_private(path, json.dumps({"access_key": access_key, "secret_key": secret_key}, indent=2) + "\n")
    return access_key, secret_key


@dataclass(frozen=True)
class StackSettings:
    """Everything the launcher decides before it starts a process.

    ``redis_url`` (or ``redis_sentinels``) and ``s3_endpoint_url`` are set when the environment points
    at servers that already run; the launcher then starts no server of its own for them.
    """

    data_dir: Path
    api_port: int
    # KILN_API_TOKEN's value, or the generated token (kept in <data_dir>/api-token).
    api_token: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    redis_url: str | None
    s3_endpoint_url: str | None
    # The password of the Redis the stack starts (None when KILN_REDIS_URL points at another).
    redis_password: str | None = None
    # KILN_REDIS_SENTINELS and KILN_REDIS_SENTINEL_MASTER: Redis behind Sentinel, run elsewhere (the
    # password and database then come from KILN_REDIS_URL, if set).
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    # Whether api_token was generated here (then it is named GENERATED_TOKEN_NAME).
    token_generated: bool = False

    @property
    def external_redis(self) -> bool:
        """Whether the environment names a Redis (by URL or by its sentinels): then none is started."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def api_token_setting(self) -> str:
        """What the programs get as ``KILN_API_TOKEN``: the generated token carries its name."""
        return f"{GENERATED_TOKEN_NAME}={self.api_token}" if self.token_generated else self.api_token

    @property
    def tokens(self) -> list[TokenInfo]:
        """The bootstrap tokens, each with its name (``shared.security.tokens``)."""
        return bootstrap_tokens(self.api_token_setting)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        """Read ``KILN_*`` variables, creating the data dir and its generated secrets as needed."""
        env = os.environ if env is None else env
        # Secrets, the AOF and every tenant's files live here: its owner's only.
        data_dir = private_dir(Path(env.get("KILN_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve())
        s3_endpoint_url = env.get("KILN_S3_ENDPOINT_URL") or None
        if s3_endpoint_url and not (env.get("KILN_S3_ACCESS_KEY") and env.get("KILN_S3_SECRET_KEY")):
            raise SystemExit("KILN_S3_ENDPOINT_URL is set: set KILN_S3_ACCESS_KEY and KILN_S3_SECRET_KEY for it too")
        access_key, secret_key = load_or_create_s3_credentials(data_dir, env)
        redis_url = env.get("KILN_REDIS_URL") or None
        sentinels = env.get("KILN_REDIS_SENTINELS") or None
        return cls(
            data_dir=data_dir,
            api_port=int(env.get("KILN_PORT") or DEFAULT_API_PORT),
            api_token=load_or_create_token(data_dir, env),
            s3_access_key=access_key,
            s3_secret_key=secret_key,
            s3_bucket=env.get("KILN_S3_BUCKET") or DEFAULT_BUCKET,
            redis_url=redis_url,
            s3_endpoint_url=s3_endpoint_url,
            redis_password=None if redis_url or sentinels else load_or_create_redis_password(data_dir),
            redis_sentinels=sentinels,
            redis_sentinel_master=env.get("KILN_REDIS_SENTINEL_MASTER") or None,
            token_generated=not env.get("KILN_API_TOKEN"),
        )

    def child_environment(
        self, redis_url: str | None, s3_endpoint_url: str, env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment of every program: the stack's values, overridden by any already set."""
        env = os.environ if env is None else env
        defaults = {
            **self._redis_environment(redis_url),
            "KILN_S3_ENDPOINT_URL": s3_endpoint_url,
            "KILN_S3_ACCESS_KEY": self.s3_access_key,
            "KILN_S3_SECRET_KEY": self.s3_secret_key,
            "KILN_S3_BUCKET": self.s3_bucket,
            "KILN_API_TOKEN": self.api_token_setting,
            "KILN_DATA_DIR": str(self.data_dir),
            "KILN_WEIGHTS_PROFILE": "tiny",
            "KILN_PUBLIC_URL": self.api_url,
            "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        return {**defaults, **env}

    def _redis_environment(self, redis_url: str | None) -> dict[str, str]:
        """Where every program finds Redis: its URL, and the sentinels when Redis is behind them."""
        found = {
            "KILN_REDIS_URL": redis_url,
            "KILN_REDIS_SENTINELS": self.redis_sentinels,
            "KILN_REDIS_SENTINEL_MASTER": self.redis_sentinel_master,
        }
        return {name: value for name, value in found.items() if value}
