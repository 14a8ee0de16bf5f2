"""How the UI tests and the demo's screenshots start Chromium (headless, offline, no sandbox in containers)."""

from __future__ import annotations

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
