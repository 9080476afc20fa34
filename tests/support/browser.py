"""A real headless browser for the playground tests: Debian's chromium, driven by Playwright.

Playwright's own browser downloads need the internet; Debian's ``chromium`` package does not, so
the tests install it with apt when it is missing and skip, saying why, only where that fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi import FastAPI

from deploy.devstack.servers import free_port
from tests.support import wait_until

# Headless, and quiet: no first-run UI, no update checks or other calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APT_TIMEOUT_S = 900


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _apt_install_chromium() -> str | None:
    """Installs Debian's chromium; returns why it could not, or None when it did."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this machine"
    if os.geteuid() != 0:
        return "not running as root (install it with: apt-get install -y --no-install-recommends chromium)"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    outcome = None
    # A fresh machine may have no package lists yet: update once and try again.
    for argvs in ([install], [["apt-get", "update"], install]):
        for argv in argvs:
            try:
                outcome = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return f"{' '.join(argv)} took more than {APT_TIMEOUT_S} s"
            if outcome.returncode != 0:
                break
        if outcome.returncode == 0 and _find_chromium():
            return None
    return f"apt-get install chromium failed: {(outcome.stderr or outcome.stdout).strip()[-500:]}"


def chromium_or_skip() -> str:
    """The chromium executable, installed with apt when missing; skips the test where it cannot be."""
    found = _find_chromium()
    if found is None:
        reason = _apt_install_chromium()
        found = _find_chromium()
        if found is None:
            pytest.skip(
                f"the playground's browser tests need Debian's chromium, which could not be installed: {reason}"
            )
    return found


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Serves an in-process app over HTTP (for a browser) on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="playground-test-api", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, what="the in-process API to start")
        assert server.started, "the in-process API did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
