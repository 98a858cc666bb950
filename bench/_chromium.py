"""The Chromium the browser tests and benchmarks drive: Debian's, and the flags it runs with.

One place for both: tests/ui_helpers.py imports it as ``bench._chromium``, the bench
scripts (run with bench/ on ``sys.path``) as ``_chromium``. Standard library only, so
either can import it without pulling the other's dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("CORRALTEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
