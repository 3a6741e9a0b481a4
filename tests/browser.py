"""Pages as a reviewer sees them, on an air-gapped machine: Debian's chromium, headless,
driven by Playwright, with every request that leaves loopback refused and recorded (a page
that needs a CDN renders blank at a bank, and on these machines).

Playwright's own browser download does not work here (no network beyond the package
registries), so it drives the system's chromium: `make tools` installs it; without it the
tests skip, and fail under RISKLOOP_REQUIRE_TOOLS=1 (CI), like promtool's."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import debian_tool

# schemes that never touch the network (the page itself may be a file://)
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
# Playwright already turns off most of chromium's background traffic; these are the flags
# that were still needed on these machines (shared/MACHINE.md), and root needs --no-sandbox
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium() -> str:
    return debian_tool("chromium", "chromium")


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class OfflinePage:
    page: object  # playwright.sync_api.Page
    blocked: list[str] = field(default_factory=list)  # requests refused: they left loopback
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG, checked not to be one flat colour (a blank page)."""
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)
        with Image.open(path) as image:
            extrema = image.convert("L").getextrema()
        assert extrema[0] != extrema[1], f"{path} is blank"
        return path


def refuse_beyond_loopback(context, blocked: list[str]) -> None:
    """Every request of a Playwright browser context that leaves loopback is refused and
    recorded in `blocked`."""

    def gate(route) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", gate)


@contextlib.contextmanager
def offline_page(width: int = 1280, height: int = 900) -> Iterator[OfflinePage]:
    """A page in headless chromium on which every non-loopback request is refused and
    recorded in `.blocked` (a test asserts it stays empty)."""
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            result = OfflinePage(context.new_page())

            refuse_beyond_loopback(context, result.blocked)
            result.page.on("pageerror", lambda exc: result.errors.append(str(exc)))
            yield result
        finally:
            browser.close()


def screenshot_dir(default: Path) -> Path:
    """Where screenshots go: RISKLOOP_SCREENSHOTS when set (to look at them), else `default`."""
    return Path(os.environ.get("RISKLOOP_SCREENSHOTS") or default)
