"""Debian's Chromium driven by Playwright, for the browser tests (the storefront, the Dagster UI): headless, a fresh
user-data-dir, never a downloaded browser."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Quiet, reproducible headless runs: no GPU, no update/sync/field-trial traffic, no first-run pages.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1360, height: int = 1000):
    """A browser context on ``profile`` (an empty folder); fails the test with the set-up step when Chromium or
    Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed ({CHROMIUM} is missing): run `make setup`, which installs "
                    "Debian's chromium package (apt-get install -y chromium) that these tests drive")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing from the pipeline env: run `make setup` "
                    "(never `playwright install`: the tests use the system's Chromium)")
    args = CHROMIUM_ARGS + (["--no-sandbox"] if os.geteuid() == 0 else [])  # Chromium's sandbox refuses root
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=args,
            viewport={"width": width, "height": height}, locale="en-US", timezone_id="UTC")
        try:
            yield context
        finally:
            context.close()
