"""Headless Chromium for the page tests: the binary, its flags, rendering a URL, console problems.

Used by the serving page test and the report test. `require_chromium()` skips
the calling test, with the reason, where no Chromium is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
                  "--log-level=0", "--virtual-time-budget=15000", "--window-size=1400,900"]


def chromium_binary() -> str | None:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name)
  return None


def require_chromium() -> str:
  """The Chromium binary, or skips the test saying how to install it."""
  binary = chromium_binary()
  if binary is None:
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run "
                "installs it where it can")
  return binary


def console_problems(stderr: str) -> list[str]:
  """Console messages, uncaught errors and failed loads that Chromium logged."""
  return [line for line in stderr.splitlines()
          if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line]


def render(url: str, screenshot=None, binary: str | None = None) -> tuple[str, list[str]]:
  """(the DOM after loading `url`, console problems); optionally a screenshot PNG too."""
  binary = binary or require_chromium()
  with tempfile.TemporaryDirectory() as profile:
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([binary, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot:
      subprocess.run([binary, *flags, f"--screenshot={screenshot}", url], capture_output=True,
                     timeout=120, check=True)
  return dom.stdout, console_problems(dom.stderr)
