"""The service's page end to end in real headless Chromium: `cnnlab serve` in a subprocess on
127.0.0.1, Chromium driven over the DevTools protocol (a tiny client on `websockets`): load the
page, upload an image through its file input, read the top-1 label the page shows, screenshot,
then toggle the heatmap overlay (POST /explain) on and off."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")

from cnnlab import api  # noqa: E402


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
                None)


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")]

TRAIN_CFG = {
    "name": "browser-test", "seed": 0, "data": {"validation_split": 0.25},
    "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 16, 16], "depth": 1}, "head": {"pooling": "max"}},
    "train": {"epochs": 4, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-2}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class DevTools:
    """The few DevTools-protocol calls the test needs, over one flattened browser session."""

    def __init__(self, ws_url: str):
        self._conn = ws_client.connect(ws_url, max_size=None, open_timeout=30)
        self.ws = self._conn.__enter__()
        self.ids = itertools.count(1)
        self.session: str | None = None

    def call(self, method: str, timeout: float = 30, **params):
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.fixture
def server(tmp_path):
    from conftest import _write_tree

    tree = _write_tree(tmp_path / "tree")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = api.train(TRAIN_CFG, data=str(tree), run_dir=tmp_path / "run", progress=False, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = Path(api.__file__).parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(run.run_dir), "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"cnnlab serve exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if _get(base + "/health")["status"] == "ok":
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("cnnlab serve did not answer /health within 30 s")
        yield base, run.run_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
           f"--user-data-dir={tmp_path / 'profile'}", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = None
        deadline = time.monotonic() + 60
        while ws_url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError("chromium exited before opening its DevTools port")
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            ws_url = m.group(1) if m else None
        assert ws_url, "chromium did not print its DevTools address"
        dt = DevTools(ws_url)
        target = dt.call("Target.createTarget", url="about:blank")["targetId"]
        dt.session = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        yield dt
        dt._conn.__exit__(None, None, None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_classifies_an_uploaded_image_in_chromium(server, browser, tmp_path):
    base, run_dir = server
    image = tmp_path / "red.png"
    rng = np.random.default_rng(1)
    Image.fromarray(np.clip(np.array((215, 35, 30)) + rng.integers(-20, 21, (40, 40, 3)), 0, 255)
                    .astype(np.uint8)).save(image)
    expected = api.predict(run_dir, [image], top_k=5)[0]["top"]

    browser.call("Page.enable")
    browser.call("Runtime.enable")
    browser.call("Page.navigate", url=base + "/")
    browser.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent"
                     ".indexOf('cifar_fastnet') >= 0")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(image)])
    top1 = browser.wait_for("document.getElementById('top1').textContent")
    rows = browser.evaluate("Array.from(document.querySelectorAll('#bars .row')).map("
                            "r => r.querySelector('.label').textContent)")
    status = browser.evaluate("document.getElementById('status').textContent")

    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "page.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 1000

    assert top1 == expected[0]["label"] == "red", (top1, expected, status)
    assert rows == [t["label"] for t in expected]  # the bar chart: every class, most likely first

    # The heatmap overlay (POST /explain) arrives behind a toggle: off, the image; on, the overlay.
    browser.wait_for("document.getElementById('overlay').src.indexOf('data:image/png;base64,') === 0 && "
                     "document.getElementById('toggle').style.display === 'block'")
    shown = "['preview', 'overlay'].map(i => getComputedStyle(document.getElementById(i)).display)"
    assert browser.evaluate(shown) == ["inline-block", "none"]
    browser.evaluate("document.getElementById('heatmap').click()")
    assert browser.evaluate(shown) == ["none", "inline-block"]
    size = browser.wait_for("document.getElementById('overlay').complete && "
                            "[document.getElementById('overlay').naturalWidth, "
                            "document.getElementById('overlay').naturalHeight]")
    assert size == [16, 16]  # the overlay at the run's decoded size (make_tree's 16 x 16 images)
    browser.evaluate("document.getElementById('heatmap').click()")
    assert browser.evaluate(shown) == ["inline-block", "none"]
