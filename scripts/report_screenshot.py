"""Render a deploy report (DIR/report.html, or a sweep's report.html) to PNG in headless Chromium.

    python scripts/report_screenshot.py out/r18/report.html out/r18/report.png [--width 1280 --height 1600]

Chromium comes from the system (Debian: apt-get install chromium). The page is opened from the file
itself with the network off, which also proves it is self-contained: nothing it needs is fetched.
Exit 3 when no Chromium is found.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# no background connections (this machine's network is closed), no sandbox (root in CI), no GPU
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600, timeout: float = 60.0) -> Path:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--screenshot={png.resolve()}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args()
    if not args.page.is_file():
        print(f"error: {args.page}: no such file", file=sys.stderr)
        return 2
    try:
        screenshot(args.page, args.png, args.width, args.height)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
