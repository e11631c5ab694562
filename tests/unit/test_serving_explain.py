"""POST /explain: heatmap overlays from the web service (FastAPI's test client)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from cnnlab import ImagePredictor  # noqa: E402
from cnnlab.data.decode import to_original_xy  # noqa: E402
from cnnlab.evaluation.explain import peak  # noqa: E402
from cnnlab.serving.app import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, max_upload_bytes=200_000, max_pixels=1_000_000, max_images=2)) as c:
        yield c


def png(seed: int, size=(40, 24)) -> bytes:
    px = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "PNG")
    return buf.getvalue()


def test_explain_returns_the_overlay_label_probability_and_peak(client, run_dir, tmp_path):
    data = png(1)
    r = client.post("/explain", files=[("files", ("a.png", data, "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam" and body["layer"] == "backbone.blocks.1"  # 3x3 at 16 px
    (item,) = body["explanations"]
    overlay = Image.open(io.BytesIO(base64.b64decode(item["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (16, 16)  # at the run's decoded size
    # The same as the Python API on the same file; the peak in the upload's own 40 x 24 pixels.
    (tmp_path / "a.png").write_bytes(data)
    e = ImagePredictor.load(run_dir).explanation([tmp_path / "a.png"])
    assert item["label"] == e.labels[0] and item["probability"] == pytest.approx(e.probabilities[0], abs=1e-5)
    assert item["peak"] == list(to_original_xy(*peak(e.heatmaps[0]), (40, 24), 16))
    assert 0 <= item["peak"][0] < 40 and 0 <= item["peak"][1] < 24


def test_explain_json_target_and_method(client):
    r = client.post("/explain?method=occlusion&target=green", json={"images": [base64.b64encode(png(2)).decode()]})
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "occlusion" and r.json()["explanations"][0]["label"] == "green"


@pytest.mark.parametrize("query,kwargs,status,needle", [
    ("?method=lime", {"files": [("files", ("a.png", png(3), "image/png"))]}, 400, "method must be one of"),
    ("?target=cat", {"files": [("files", ("a.png", png(3), "image/png"))]}, 400, "target 'cat' is not a class"),
    ("", {"files": [("files", (f"{i}.png", png(i), "image/png")) for i in range(3)]}, 413, "limit is 2"),
    ("", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
    ("", {"files": [("files", ("a.png", b"not an image", "image/png"))]}, 400, "not an image"),
])
def test_explain_refuses_bad_requests_like_predict(client, query, kwargs, status, needle):
    r = client.post("/explain" + query, **kwargs)
    assert r.status_code == status and needle in r.json()["detail"], r.text
