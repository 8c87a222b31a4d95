"""Headless Chromium for the tests and the README's viewer picture: the DevTools protocol over
a websocket, enough to load a page and take screenshots. WebGL runs on SwiftShader: no GPU."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np

from neuralgs_ns.distributed import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
__all__ = ["CHROMIUM", "HeadlessChromium", "free_port", "show_in_browser"]


class HeadlessChromium:
    """Chromium driven through the DevTools protocol (websocket), enough to load a page and
    take screenshots; WebGL through SwiftShader, so no GPU is needed."""

    def __init__(self, profile: Path, width: int, height: int):
        port = free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
             "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--remote-debugging-port={port}",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._connect(port)
        except BaseException:
            self.close()
            raise
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _connect(self, port: int) -> None:
        from websockets.sync.client import connect

        self.socket = None
        deadline = time.time() + 60
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.2)
        page = next(t for t in targets if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        # The whole process group: renderer and GPU processes must not outlive the test.
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def show_in_browser(viewer, browser: HeadlessChromium, timeout_s: float = 240.0) -> np.ndarray:
    """Loads `viewer` (a `neuralgs_ns.view.SplatViewer`) in `browser` and returns the screenshot
    [H, W, 3] in [0, 1] once the full-resolution frame is shown (the viewer sends
    low-resolution previews first)."""
    browser.call("Page.navigate", url=viewer.url)
    max_res = viewer.viewer.control_panel.max_res
    deadline = time.time() + timeout_s  # first renders on a busy 2-core machine are slow

    def full_resolution_sent() -> bool:  # the viewer's stats name the size of the last frame sent
        stats = viewer.viewer.stats_markdown.content
        return f" {max_res}x" in stats or f"x{max_res}px" in stats

    shots = []
    while True:
        if time.time() > deadline:
            raise TimeoutError(f"the viewer did not settle on a full-resolution frame: "
                               f"{viewer.viewer.stats_markdown.content!r}")
        # A camera update (the page settling its layout) restarts the previews: keep looking
        # until three screenshots a second apart agree, with the full-resolution frame sent
        # before each.
        shots = shots + [browser.screenshot()] if full_resolution_sent() else []
        if len(shots) >= 3 and all(np.abs(shot - shots[-1]).mean() < 1e-3 for shot in shots[-3:]):
            return shots[-1]
        time.sleep(1.0)
