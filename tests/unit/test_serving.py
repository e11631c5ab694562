"""The web service with FastAPI's test client: good requests, every kind of bad one, batching."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402

from cnnlab import api  # noqa: E402
from conftest import TINY_CLASSES  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.serving.app import create_app  # noqa: E402
from cnnlab.serving.batcher import MicroBatcher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = list(TINY_CLASSES)  # the classes of the run_dir fixture (conftest.py)


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, max_upload_bytes=200_000, max_pixels=1_000_000, max_images=8)) as c:
        yield c


def png(colour=(215, 35, 30), size=(20, 24), fmt="PNG") -> bytes:
    rng = np.random.default_rng(sum(colour))
    px = np.clip(np.array(colour) + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ good requests


def test_one_image_multipart_matches_cnnlab_predict(client, run_dir, tmp_path):
    data = png()
    r = client.post("/predict?top_k=2", files=[("files", ("red.png", data, "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backend"] == "torch" and body["model"] == "cifar_fastnet"
    (pred,) = body["predictions"]
    assert pred["image"] == "files[0] (red.png)" and len(pred["top"]) == 2
    (tmp_path / "red.png").write_bytes(data)
    (ref,) = api.predict(run_dir, [tmp_path / "red.png"], top_k=2)  # the CLI's path: same decoding
    assert [t["label"] for t in pred["top"]] == [t["label"] for t in ref["top"]]
    np.testing.assert_allclose([t["probability"] for t in pred["top"]], [t["probability"] for t in ref["top"]],
                               atol=1e-6)


def test_many_images_multipart_and_json_base64(client):
    imgs = [png((215, 35, 30)), png((35, 200, 45), fmt="JPEG"), png((30, 40, 210), size=(64, 48))]
    r1 = client.post("/predict", files=[("files", (f"{i}.img", d, "application/octet-stream"))
                                        for i, d in enumerate(imgs)])
    r2 = client.post("/predict", json={"images": [b64(imgs[0]), "data:image/jpeg;base64," + b64(imgs[1]),
                                                  b64(imgs[2])]})
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    p1, p2 = r1.json()["predictions"], r2.json()["predictions"]
    assert len(p1) == len(p2) == 3 and len(p1[0]["top"]) == 3  # top_k 5, clipped to 3 classes
    assert p2[1]["image"] == "images[1]"
    for a, b in zip(p1, p2):
        assert a["top"] == b["top"]
        assert abs(sum(t["probability"] for t in a["top"]) - 1) < 1e-6


def test_health_metadata_page_and_docs(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["backend"] == "torch" and h["batching"]["max_batch"] == 32
    m = client.get("/metadata").json()
    assert m["classes"] == CLASSES and m["image_size"] == 16 and m["architecture"] == "cifar_fastnet"
    assert m["limits"]["max_upload_bytes"] == 200_000 and "image/png" in m["limits"]["accepted_content_types"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "predict?top_k=5" in page.text and "http" not in page.text.lower()
    assert client.get("/docs").status_code == 404  # Swagger UI would come from a CDN
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_onnxruntime_backend_serves_the_same_answers(run_dir, client, monkeypatch, tmp_path):
    """ONNX Runtime (fp32 graph) against the torch path, held to 1e-5 when both run fp32."""
    import shutil

    from cnnlab.utils import hardware

    run_dir = shutil.copytree(run_dir, tmp_path / "run")  # the backend exports model.onnx into the run: a copy

    monkeypatch.setenv(hardware.BF16_ENV, "0")  # the torch server below starts in fp32 whatever this CPU has
    data = png((35, 200, 45))
    with TestClient(create_app(run_dir, backend="onnxruntime")) as ort_client:
        a = ort_client.post("/predict", files=[("files", ("g.png", data, "image/png"))]).json()
        assert ort_client.get("/health").json()["backend"] == "onnxruntime"
    with TestClient(create_app(run_dir, backend="torch")) as torch_client:
        b = torch_client.post("/predict", files=[("files", ("g.png", data, "image/png"))])
    b = b.json()
    assert [t["label"] for t in a["predictions"][0]["top"]] == [t["label"] for t in b["predictions"][0]["top"]]
    np.testing.assert_allclose([t["probability"] for t in a["predictions"][0]["top"]],
                               [t["probability"] for t in b["predictions"][0]["top"]], atol=1e-5)


# ------------------------------------------------------------------ bad requests: 4xx JSON naming the problem


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, "PNG")  # 4 M pixels in a few kB: over max_pixels=1 M
    return buf.getvalue()


BAD = [
    ("not an image", dict(files=[("files", ("a.png", b"hello world", "image/png"))]), 400, "not_an_image", "files[0] (a.png)"),
    ("truncated", dict(files=[("files", ("t.png", png()[:60], "image/png"))]), 400, "bad_image", "truncated"),
    ("too large", dict(files=[("files", ("big.png", b"\0" * 300_000, "image/png"))]), 413, "too_large", "200,000 bytes"),
    ("too many pixels", dict(files=[("files", ("bomb.png", _bomb(), "image/png"))]), 413, "too_many_pixels", "decompression bomb"),
    ("too many images", dict(files=[("files", (f"{i}.png", png(), "image/png")) for i in range(9)]), 413, "too_many_images", "limit is 8"),
    ("wrong field", dict(files=[("file", ("a.png", png(), "image/png"))]), 400, "missing_field", "'files'"),
    ("text in files", dict(files=[("files", (None, b"hello"))]), 400, "wrong_field", "must be a file upload"),
    ("wrong part type", dict(files=[("files", ("a.txt", b"hi", "text/plain"))]), 415, "unsupported_type", "text/plain"),
    ("empty body", dict(content=b"", headers={"content-type": "application/json"}), 400, "empty_body", "empty request body"),
    ("no content type", dict(content=b"abc"), 415, "unsupported_media_type", "multipart/form-data"),
    ("bad json", dict(content=b"{bad", headers={"content-type": "application/json"}), 400, "bad_json", "not valid JSON"),
    ("json without images", dict(json={"pictures": []}), 400, "missing_field", "'images'"),
    ("images not a list", dict(json={"images": "abc"}), 400, "wrong_field", "non-empty list"),
    ("bad base64", dict(json={"images": ["%%%not-base64"]}), 400, "bad_base64", "images[0]"),
    ("base64 of text", dict(json={"images": [b64(b"just text")]}), 400, "not_an_image", "images[0]"),
    ("bad multipart", dict(content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}),
     400, None, None),
]


@pytest.mark.parametrize("what,kwargs,status,code,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_json_error_naming_the_problem(client, what, kwargs, status, code, needle):
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and "Traceback" not in r.text
    if code:
        assert body["error"] == code
    if needle:
        assert needle in body["detail"]


@pytest.mark.parametrize("method,path,query,status,needle", [
    ("get", "/nope", "", 404, "no such route: GET /nope"),
    ("get", "/predict", "", 405, "not allowed"),
    ("post", "/predict", "?top_k=0", 422, "top_k"),
    ("post", "/predict", "?top_k=abc", 422, "top_k"),
])
def test_routes_and_parameters(client, method, path, query, status, needle):
    kwargs = {"files": [("files", ("a.png", png(), "image/png"))]} if method == "post" else {}
    r = getattr(client, method)(path + query, **kwargs)
    assert r.status_code == status and needle in r.json()["detail"] and "Traceback" not in r.text


def test_declared_body_too_large_is_refused_before_reading(client):
    r = client.post("/predict", content=b"x" * 10, headers={"content-type": "application/json",
                                                             "content-length": "999999999"})
    assert r.status_code == 413 and "999,999,999 bytes" in r.json()["detail"]


def test_timeout_and_internal_errors_are_json_without_traceback(run_dir):
    app = create_app(run_dir, timeout_s=0.2)
    app.state.batcher.predict = lambda x: (time.sleep(1.0), np.zeros((len(x), 3)))[1]
    with TestClient(app) as c:
        r = c.post("/predict", files=[("files", ("a.png", png(), "image/png"))])
    assert r.status_code == 503 and r.json()["error"] == "timeout" and "0.2 s" in r.json()["detail"]
    app2 = create_app(run_dir)

    def broken(x):
        raise RuntimeError("secret internals")

    app2.state.batcher.predict = broken
    with TestClient(app2, raise_server_exceptions=False) as c:
        r = c.post("/predict", files=[("files", ("a.png", png(), "image/png"))])
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert "secret internals" not in r.text and "Traceback" not in r.text


# ------------------------------------------------------------------ micro-batching


def test_the_batcher_batches_concurrent_requests_and_routes_rows_back():
    calls = []

    def predict(x):
        calls.append(len(x))
        time.sleep(0.02)
        return x.reshape(len(x), -1)[:, :1].astype(np.float32)  # each row: its image's first pixel

    async def go(batcher):
        xs = [np.full((1 + i % 2, 2, 2, 3), i, np.uint8) for i in range(12)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        for i, (x, out) in enumerate(zip(xs, outs)):
            assert out.shape == (len(x), 1) and (out == i).all()
        await batcher.stop()

    b = MicroBatcher(predict, max_batch=8, window_ms=5)
    asyncio.run(go(b))
    assert b.stats.largest > 1 and max(calls) <= 8 and sum(calls) == 18
    single = MicroBatcher(predict, max_batch=1, window_ms=5)
    calls.clear()
    asyncio.run(go(single))
    assert single.stats.largest <= 2 and len(calls) == 12  # one request per call (2-image requests stay whole)


def test_concurrent_http_requests_form_batches(run_dir):
    app = create_app(run_dir, max_batch=16, batch_window_ms=20)
    inner = app.state.batcher.predict
    app.state.batcher.predict = lambda x: (time.sleep(0.01), inner(x))[1]
    data = png()
    with TestClient(app) as c:
        statuses = []

        def one():
            statuses.append(c.post("/predict", files=[("files", ("a.png", data, "image/png"))]).status_code)

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = c.get("/health").json()["batching"]
    assert statuses == [200] * 12
    assert stats["images"] == 12 and stats["largest_batch"] > 1 and stats["batches"] < 12


def test_serve_command_bad_run_dir_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error:") and "no such folder" in err and "\n" not in err
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
