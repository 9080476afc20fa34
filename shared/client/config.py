"""Where the client commands find the API and their token: flags, then environment, then a file.

``--url``/``--token`` win over ``KILN_URL``/``KILN_TOKEN``, which win over ``url``/``token`` in
``$XDG_CONFIG_HOME/kiln/config.toml`` (``~/.config/kiln/config.toml``). Without any URL the local
stack's (``make run``) is used; without a token the command stops with exit status 2.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.client.errors import UsageError

# What ``make run`` serves on by default.
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str


def config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/kiln/config.toml``, ``~/.config/kiln/config.toml`` without it."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "kiln" / "config.toml"


def read_config_file(path: Path) -> dict[str, str]:
    """The file's ``url`` and ``token`` (strings); nothing when there is no file."""
    try:
        with path.open("rb") as handle:
            found = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it as TOML: {exc}") from None
    picked: dict[str, str] = {key: found[key] for key in ("url", "token") if key in found}
    for key, value in picked.items():
        if not isinstance(value, str):
            raise UsageError(f"{path}: {key} must be a string")
    return picked


def resolve(url: str | None, token: str | None, env: Mapping[str, str] = os.environ) -> ClientConfig:
    """The URL and token to use: the flags', else the environment's, else the config file's."""
    path = config_path(env)
    stored = read_config_file(path)
    chosen_url = url or env.get("KILN_URL") or stored.get("url") or DEFAULT_URL
    chosen_token = token or env.get("KILN_TOKEN") or stored.get("token")
    if not chosen_token:
        raise UsageError(f'no API token: pass --token, set KILN_TOKEN, or write token = "..." in {path}')
    if not chosen_url.startswith(("http://", "https://")):
        raise UsageError(f"the API URL must start with http:// or https://, not {chosen_url!r}")
    return ClientConfig(chosen_url.rstrip("/"), chosen_token)
