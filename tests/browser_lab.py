"""A real JupyterLab in a real browser, for tests: a JupyterLab server on 127.0.0.1 with a token and a
temporary root, Debian's chromium driven by Playwright, cells typed into the page and run with
Shift+Enter. The notebook's kernels reach the model through $AGENT_KERNEL_MODEL / $AGENT_KERNEL_API_BASE,
pointed at a scripted server (tests/scripted_server.py) in the test process.

Every wait is on a DOM condition (Playwright's auto-retrying `expect`), never a sleep. Screenshots go to
tests/browser-screenshots/ (gitignored; the README's come from there).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = os.environ.get("AGENT_KERNEL_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "browser-screenshots"
RUN_TIMEOUT_MS = 120_000  # a cell that starts a sandbox kernel on 2 busy cores
DARK, LIGHT = "JupyterLab Dark", "JupyterLab Light"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server process serving `root` on 127.0.0.1:`port`, asked with `token`."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        config = root.parent / "jupyter-config"
        notification = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text(  # no news toast over the cells
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        server_env = {
            **os.environ,
            **env,
            "JUPYTER_CONFIG_DIR": str(config),  # none of the machine's own settings or extensions' state
            "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(config / "lab" / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(root.parent / "jupyter-runtime"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self._log = (root.parent / "jupyterlab.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the theme command
             "--allow-root", "--LabApp.extension_manager=readonly", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=server_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=root,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.process.returncode}); see {self._log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)  # polling the server's readiness, not an assertion
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s; see {self._log.name}")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")  # kernels end, and their sandboxes with them
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium under Playwright (Playwright cannot download its own builds here)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Notebook:
    """One notebook open in its own page (and its own JupyterLab workspace, so tabs do not pile up)."""

    def __init__(self, lab: Lab, browser: Browser, name: str, width: int = 1200, existing: bool = False) -> None:
        """A new empty notebook `name`.ipynb, or (`existing`) the one already in the root."""
        self.lab, self.name = lab, name
        if not existing:
            lab.api("PUT", f"/api/contents/{name}.ipynb", {"type": "notebook", "format": "json", "content": {
                "cells": [], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                            "language": "python"}},
            }})
        # A kernel session first, of the kernel the notebook names (as JupyterLab would start): the
        # page attaches to it instead of asking which kernel to start.
        kernel = json.loads((lab.root / f"{name}.ipynb").read_text())["metadata"]["kernelspec"]["name"]
        lab.api("POST", "/api/sessions", {"path": f"{name}.ipynb", "type": "notebook", "name": f"{name}.ipynb",
                                          "kernel": {"name": kernel}})
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page: Page = self.context.new_page()
        self.dialogs: list[str] = []  # alert/confirm/prompt fired by the page: hostile output must fire none
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(f"{lab.url}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={lab.token}")
        expect(self.page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
        self.page.evaluate("window.jupyterapp.shell.collapseLeft()")  # the file browser: room for the run
        # The kernel is connected and idle (the status bar says so) before anything is typed.
        expect(self.page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle"))).to_have_count(
            1, timeout=90_000)

    @property
    def cells(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def run(self, source: str, timeout: int = RUN_TIMEOUT_MS, wait: bool = True) -> Locator:
        """Type `source` into the last cell and run it (Shift+Enter); wait until its prompt has a number."""
        cell = self.cells.nth(self.cells.count() - 1)  # pinned: Shift+Enter adds a new last cell
        editor = cell.locator(".cm-content")
        editor.click()
        self.page.keyboard.press("ControlOrMeta+a")
        self.page.keyboard.insert_text(source)  # no keystrokes: no auto-closed brackets or auto-indent
        expect(editor).to_contain_text(source.splitlines()[0])  # typed into this cell, not elsewhere
        self.page.keyboard.press("Shift+Enter")
        if wait:
            self.wait_done(cell, timeout)
        return cell

    @staticmethod
    def wait_done(cell: Locator, timeout: int = RUN_TIMEOUT_MS) -> None:
        expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[\d+\]:"), timeout=timeout)

    def run_all(self, timeout: int = RUN_TIMEOUT_MS) -> None:
        """Run > Run All Cells, then wait until the last cell has run."""
        self.page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        self.wait_done(self.cells.nth(self.cells.count() - 1), timeout)

    def theme(self, name: str) -> None:
        self.page.evaluate("name => window.jupyterapp.commands.execute('apputils:change-theme', {theme: name})", name)
        expect(self.page.locator("body")).to_have_attribute("data-jp-theme-name", name, timeout=30_000)
        # The new theme's stylesheet loads behind a splash screen: wait until it is gone.
        expect(self.page.locator("#jupyterlab-splash")).to_have_count(0, timeout=30_000)

    def screenshot(self, name: str, target: Locator | None = None) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        (target or self.page).screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.context.close()


def mid_word_breaks(target: Locator) -> list[str]:
    """Places where rendered text wraps to a new line between two letters of one word."""
    return target.evaluate(
        """root => {
        const found = [];
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
        const range = document.createRange();
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const text = node.textContent;
            let top = null;
            for (let i = 0; i < text.length; i++) {
                range.setStart(node, i); range.setEnd(node, i + 1);
                const rect = range.getBoundingClientRect();
                if (rect.height === 0) continue;
                if (top !== null && rect.top > top + rect.height / 2 && i > 0
                    && /\\w/.test(text[i - 1]) && /\\w/.test(text[i])) {
                    found.push(text.slice(Math.max(0, i - 12), i) + "|" + text.slice(i, i + 12));
                }
                top = rect.top;
            }
        }
        return found;
    }"""
    )


def contrast_problems(target: Locator) -> list[str]:
    """Text whose colour is too close to the background it is drawn on (WCAG contrast below 3),
    each with its colours; the background is the nearest ancestor's that is not transparent."""
    return target.evaluate(
        """root => {
        const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
        const lum = c => { const [r, g, b] = rgb(c).slice(0, 3).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const background = el => { for (; el; el = el.parentElement) {
            const c = getComputedStyle(el).backgroundColor, a = rgb(c);
            if (a.length && !(a.length === 4 && a[3] === 0)) return c; } return "rgb(255, 255, 255)"; };
        const found = [];
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (!node.textContent.trim()) continue;
            const el = node.parentElement, fg = getComputedStyle(el).color, bg = background(el);
            const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
            const ratio = (hi + 0.05) / (lo + 0.05);
            if (ratio < 3) found.push(`${node.textContent.trim().slice(0, 20)}: ${fg} on ${bg} (${ratio.toFixed(1)})`);
        }
        return found;
    }"""
    )


def luminance(target: Locator, prop: str = "backgroundColor") -> float:
    """The relative luminance (0 black .. 1 white) of a computed colour of the element."""
    return target.evaluate(
        """(el, prop) => { const [r, g, b] = getComputedStyle(el)[prop].match(/[\\d.]+/g).map(Number)
            .map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; }""", prop)
