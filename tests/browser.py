"""For tests of web pages: a real headless Chromium driven by Selenium, offline, from Debian's packages.

`needs_chrome()` skips a test where Chromium or its driver is missing, except under CI (which installs them),
where a missing browser fails: a browser test must never pass in CI by not running. Selenium is handed both
paths, so Selenium Manager never downloads a browser or a driver.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARGUMENTS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--window-size=1280,1000"]


def chrome_available() -> str | None:
    """None when a headless Chromium can be started here; otherwise why not, with the fix."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (Debian/Ubuntu: apt-get install chromium chromium-driver)"
    return None


def needs_chrome() -> None:
    """Skips the calling test without a browser; under CI (env CI set) fails instead, naming what is missing."""
    reason = chrome_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests, but {reason}")
    pytest.skip(reason)


@contextmanager
def headless_chrome() -> Iterator[Any]:
    """A `selenium.webdriver.Chrome` on a fresh profile that is deleted afterwards; quits the browser on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgepool-chrome-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ARGUMENTS + [f"--user-data-dir={profile}"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # so a failed wait can show the console
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def artifacts_dir() -> Path:
    """Where tests leave files for people to look at: $EDGEPOOL_TEST_ARTIFACTS, else test-artifacts/ in the repo."""
    folder = Path(os.environ.get("EDGEPOOL_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(driver: Any, name: str) -> Path:
    """Writes the visible page as PNG `name` into the artifacts folder and returns its path."""
    path = artifacts_dir() / name
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the browser could not write a screenshot to {path}")
    return path


def console(driver: Any) -> list[str]:
    """The browser console's messages since the last call (JavaScript errors show up here)."""
    return [f"{entry['level']}: {entry['message']}" for entry in driver.get_log("browser")]


def wait_for(driver: Any, predicate: Callable[[Any], Any], timeout: float = 10.0, what: str = "the page") -> Any:
    """Polls `predicate(driver)` until it is truthy and returns its value; on timeout fails with the console's log."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except TimeoutException:
        log = "\n".join(console(driver)) or "(empty)"
        raise AssertionError(f"waited {timeout} s for {what}; browser console:\n{log}") from None
