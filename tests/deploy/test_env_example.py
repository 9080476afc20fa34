""".env.example lists every setting, and every value in it is one the settings accept."""

from __future__ import annotations

import re

from shared.settings import Settings
from tests.support.deploy import ENV_EXAMPLE

# "KILN_X=value", active or commented out ("# KILN_X=value" shows a default).
LINE = re.compile(r"^(?P<commented>#\s*)?(?P<key>KILN_[A-Z0-9_]+)=(?P<value>.*)$")


def entries() -> list[tuple[str, str, bool]]:
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = LINE.match(line.strip())
        if match:
            found.append((match["key"], match["value"], match["commented"] is None))
    return found


def test_every_setting_is_listed_once_and_nothing_else():
    keys = [key for key, _, _ in entries()]
    expected = {f"KILN_{name.upper()}" for name in Settings.model_fields}
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert set(keys) - expected == set(), "not settings"
    assert expected - set(keys) == set(), "settings missing from .env.example"


def test_active_values_load():
    settings = Settings(_env_file=ENV_EXAMPLE)
    assert settings.weights_profile == "full" and settings.log_format == "json"
    assert settings.token_digests


def test_commented_defaults_are_valid_and_are_the_defaults(monkeypatch):
    for key, value, _ in entries():
        if value != "":
            monkeypatch.setenv(key, value)
    loaded = Settings(_env_file=None)
    for key, value, active in entries():
        name = key.removeprefix("KILN_").lower()
        if not active and value != "":
            assert getattr(loaded, name) == Settings.model_fields[name].default, key
