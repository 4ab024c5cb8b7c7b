"""Screenshots of the web console on the demo network, for the README.

Runs ``salus demo --size small`` into a temporary folder, serves it, signs in
as each role with Debian's Chromium (Playwright) and saves the pages under
``docs/images/console-*.png``::

    .venv/bin/python scripts/console_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

CHROMIUM = os.environ.get("SALUS_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def login(page: Page, user: dict[str, Any]) -> None:
    page.context.clear_cookies()
    page.goto("/login")
    page.get_by_label("Username").fill(user["name"])
    page.get_by_label("Password").fill(user["password"])
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(re.compile(r".*/(?!login).*$"))


def first(users: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return next(u for u in users if u["role"] == role)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    salus = [sys.executable, "-m", "salus"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demo"
        subprocess.run(
            [
                *salus,
                "demo",
                "--size",
                "small",
                "--dir",
                str(folder),
                "--exit-after-ingest",
                "--port",
                str(free_port()),
                "--dicom-port",
                str(free_port()),
                "--mllp-port",
                str(free_port()),
            ],
            env=env,
            check=True,
        )
        users = json.loads((folder / "logins.json").read_text())["users"]
        port = free_port()
        server = subprocess.Popen(
            [*salus, "--config", str(folder / "salus.toml"), "serve", "--port", str(port)],
            env={**env, "SALUS_DICOM_PORT": str(free_port()), "SALUS_MLLP_PORT": str(free_port())},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                context = browser.new_context(
                    base_url=base, viewport={"width": 1366, "height": 768}, locale="en-GB"
                )
                page = context.new_page()

                def shot(name: str) -> None:
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=str(args.out / f"console-{name}.png"))
                    print(f"  {args.out / f'console-{name}.png'}")

                login(page, first(users, "clinician"))
                page.goto("/patients")
                shot("patients")
                page.locator("main table a[href^='/patients/']").first.click()
                page.wait_for_url("**/patients/*")
                shot("record")
                viewer = page.locator("a[href^='/viewer/']")
                if viewer.count():
                    viewer.first.click()
                    page.wait_for_url("**/viewer/*")
                    page.wait_for_timeout(1500)
                    shot("viewer")
                login(page, first(users, "data_steward"))
                page.goto("/inbox")
                shot("inbox")
                login(page, first(users, "security_officer"))
                page.goto("/audit")
                shot("audit")
                login(page, first(users, "authority_analyst"))
                page.goto("/dashboards")
                shot("dashboards")
                page.goto("/dashboards/compare")
                shot("compare")
                login(page, first(users, "administrator"))
                page.goto("/admin/users")
                shot("admin")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
