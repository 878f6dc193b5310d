"""Headless Chromium for the browser tests (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

INSTALL_HINT = ("Debian's chromium is needed by the browser tests: run `make browser` "
                "(apt-get install chromium; `make test` and `make test-fast` run it first) "
                "after `make setup`.")


def chromium_executable() -> str:
    """The chromium binary, or a test failure that says how to install it."""
    path = shutil.which("chromium")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        pytest.fail(f"No chromium executable on PATH or at /usr/bin/chromium. {INSTALL_HINT}")
    return path
