"""Heatmaps on a folder of real photos of mixed sizes and modes (issue 21's "done when").

The photos: benchmarks/make_photo_set.py on scikit-learn's two sample photos (flower, temple),
cropped at several scales and aspect ratios and saved as RGB/grayscale JPEG, grayscale/RGBA/
palette PNG; to its test split the folder adds the whole 640 x 427 temple photo, a 36 x 24
thumbnail of the flower (smaller than the decode size), and one crop saved twice as JPEG:
upright, and stored sideways with an EXIF orientation tag. A tiny fast net trained on the train
split (a few seconds) is explained through the Python API, `cnnlab explain` and `POST /explain`.
Heatmaps are at the decoded (square) size; every peak must be in the file's own upright pixels,
inside the part of the photo the model saw, and map back onto the heatmap's maximum.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from cnnlab import ImagePredictor  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.data.decode import decode_image, list_image_files  # noqa: E402
from cnnlab.evaluation.overlay import MIN_PANEL_SIDE, overlay  # noqa: E402

SIZE = 32  # the run's decode size: every photo is larger or smaller than this, none square
CFG = {
    "name": "photos", "seed": 0, "data": {"image_size": SIZE, "validation_split": 0.2},
    "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 16, 16], "depth": 1}},
    "train": {"epochs": 8, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-2}},
}
METHODS = ("gradcam", "occlusion")


def _builder():
    from conftest import photo_set_builder

    return photo_set_builder()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(trained predictor, folder of photos to explain, {file name: mode})."""
    mod = _builder()
    base = tmp_path_factory.mktemp("explain-photos")
    data = base / "photos"
    mod.build_photo_set(data, {"flower": ["sklearn:flower"], "temple": ["sklearn:china"]},
                        train_per_source=12, test_per_source=5, seed=2, max_side=(24, 400))
    folder = base / "explain"
    folder.mkdir()
    modes = {}
    for row in csv.DictReader((data / "manifest.csv").open()):
        if row["split"] == "test":
            shutil.copy(data / row["file"], folder / Path(row["file"]).name)
            modes[Path(row["file"]).name] = row["mode"]
    with Image.open(mod.sklearn_photo("china")) as im:
        china = im.convert("RGB")
    china.save(folder / "china_full.jpg", quality=90)  # 640 x 427: large-ish, landscape
    modes["china_full.jpg"] = "RGB"
    # A portrait crop, upright, and the same pixels stored sideways with EXIF orientation 6
    # ("rotate 90 degrees clockwise to display"), as phones write them.
    upright = china.crop((60, 40, 260, 340))  # 200 x 300
    upright.save(folder / "rot_upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rot_exif.jpg", quality=95, exif=exif)
    modes["rot_upright.jpg"] = modes["rot_exif.jpg"] = "RGB"
    # A thumbnail smaller than the decode size (upscaled when decoded), as a palette PNG.
    with Image.open(mod.sklearn_photo("flower")) as im:
        im.convert("RGB").resize((36, 24), Image.Resampling.LANCZOS).quantize(64).save(folder / "flower_thumb.png")
    modes["flower_thumb.png"] = "P"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(base / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")
        pred = ImagePredictor(path=base / "run").fit(str(data), config=CFG, log=lambda s: None)
    return pred, folder, modes


def upright_wh(path: Path) -> tuple[int, int]:
    """The file's own (width, height) as a viewer shows it (EXIF orientation applied), by Pillow."""
    from PIL import ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def check_peak(peak, heatmap: np.ndarray, wh: tuple[int, int], name: str) -> None:
    """``peak`` is in the file's own pixels, inside the centre square the model saw (the shorter
    side resized to SIZE, then centre-cropped), and maps back to the heatmap's maximum."""
    w, h = wh
    x, y = peak
    assert isinstance(x, int) and isinstance(y, int), (name, peak)
    assert 0 <= x < w and 0 <= y < h, (name, peak, wh)
    side = min(w, h)  # the crop's side in the file's pixels
    left, top = (w - side) / 2, (h - side) / 2
    assert left - 1 <= x <= left + side and top - 1 <= y <= top + side, (name, peak, wh)
    # back to decoded pixels: scale SIZE / side, minus the crop offset (pixel centres)
    dx, dy = (x + 0.5 - left) * SIZE / side - 0.5, (y + 0.5 - top) * SIZE / side - 0.5
    hy, hx = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    assert abs(dx - hx) <= 1 and abs(dy - hy) <= 1, (name, peak, (hx, hy), wh)


def test_the_folder_has_mixed_sizes_and_modes(photos):
    _, folder, modes = photos
    files = list_image_files([folder])
    assert len(files) == 14 and {p.name for p in files} == set(modes)
    sizes = {upright_wh(p) for p in files}
    assert len(sizes) == 13  # the two rotation files share one upright size
    assert all(w != h for w, h in sizes) and min(map(min, sizes)) < SIZE < max(map(max, sizes))
    assert {"RGB", "L", "P", "RGBA"} <= set(modes.values())
    assert upright_wh(folder / "rot_exif.jpg") == (200, 300)
    with Image.open(folder / "rot_exif.jpg") as im:
        assert im.size == (300, 200)  # stored sideways


@pytest.mark.parametrize("method", METHODS)
def test_api_one_heatmap_per_photo_at_the_decoded_size(photos, method):
    pred, folder, modes = photos
    files = list_image_files([folder])
    e = pred.explanation(files, method=method)
    n = len(files)
    assert pred.decode_size == SIZE and e.names == [str(p) for p in files]
    assert e.heatmaps.shape == (n, SIZE, SIZE) and e.heatmaps.dtype == np.float32
    assert e.heatmaps.min() >= 0.0 and e.heatmaps.max() <= 1.0
    assert np.allclose(e.heatmaps.reshape(n, -1).max(1), 1.0)  # each map has its own peak
    assert (e.heatmaps.reshape(n, -1).std(1) > 0.02).all()  # and is not flat
    assert np.array_equal(pred.explain(files, method=method), e.heatmaps)
    # The images explained are the files decoded by cnnlab's one rule; grey ones are grey.
    for i, p in enumerate(files):
        assert np.array_equal(e.images[i], decode_image(p, SIZE)), p.name
        if modes[p.name] == "L":
            assert np.array_equal(e.images[i][..., 0], e.images[i][..., 2])
    probs = pred.predict_proba(files).to_numpy()
    assert e.labels == [pred.class_names[j] for j in probs.argmax(1)]
    assert np.allclose(e.probabilities, probs.max(1), atol=1e-5)


def test_the_model_learned_the_photos(photos):
    pred, folder, _ = photos
    files = [p for p in list_image_files([folder]) if p.name[:5] in ("flowe", "china")]
    truth = ["flower" if p.name.startswith("flower") else "temple" for p in files]
    assert (np.array(list(pred.predict(files))) == np.array(truth)).mean() >= 0.75


@pytest.mark.parametrize("method", METHODS)
def test_cli_overlays_and_peaks_in_each_photos_own_pixels(photos, method, tmp_path, capsys):
    pred, folder, _ = photos
    out = tmp_path / "overlays"
    assert main(["explain", str(pred.path), str(folder), "--method", method, "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    files = list_image_files([folder])
    assert [r["image"] for r in rows] == [str(p) for p in files]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.{method}.png" for p in files)
    e = pred.explanation(files, method=method)
    scale = math.ceil(MIN_PANEL_SIDE / SIZE)
    side = SIZE * scale
    for i, (r, p) in enumerate(zip(rows, files)):
        assert set(r) == {"image", "label", "probability", "heatmap_png", "peak"}
        assert r["label"] == e.labels[i] and r["probability"] == pytest.approx(e.probabilities[i], abs=1e-5)
        assert Path(r["heatmap_png"]) == out / f"{p.stem}.{method}.png"
        with Image.open(r["heatmap_png"]) as im:
            # documented: the decoded image beside its overlay, enlarged, a caption strip below
            assert im.format == "PNG" and im.size == (2 * side + 4, side + 22), (p.name, im.size)
            px = np.asarray(im.convert("RGB"))
        assert np.array_equal(px[:side:scale, :side:scale], e.images[i]), p.name
        assert np.array_equal(px[:side:scale, side + 4::scale], overlay(e.images[i], e.heatmaps[i])), p.name
        check_peak(r["peak"], e.heatmaps[i], upright_wh(p), p.name)
    by_name = {Path(r["image"]).name: r["peak"] for r in rows}
    # The sideways-stored file is the upright one: the same peak in the same upright pixels
    # (within a decoded pixel, 200 / 32 file pixels: the two JPEGs differ slightly).
    up, rot = by_name["rot_upright.jpg"], by_name["rot_exif.jpg"]
    assert abs(up[0] - rot[0]) <= 7 and abs(up[1] - rot[1]) <= 7, (up, rot)


def test_post_explain_on_a_large_landscape_a_grey_and_a_rotated_photo(photos):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from cnnlab.serving.app import create_app

    pred, folder, modes = photos
    grey = sorted(n for n, m in modes.items() if m == "L")[0]
    names = ["china_full.jpg", grey, "rot_exif.jpg"]
    e = pred.explanation([folder / n for n in names])
    with TestClient(create_app(pred.path)) as client:
        r = client.post("/explain", files=[("files", (n, (folder / n).read_bytes(), "image/jpeg")) for n in names])
    assert r.status_code == 200, r.text
    items = r.json()["explanations"]
    assert len(items) == 3 and all(n in it["image"] for n, it in zip(names, items))  # "files[0] (name)"
    for i, (n, it) in enumerate(zip(names, items)):
        with Image.open(io.BytesIO(base64.b64decode(it["overlay_png"]))) as im:
            assert im.format == "PNG" and im.size == (SIZE, SIZE)  # at the run's decoded size
            assert np.array_equal(np.asarray(im.convert("RGB")), overlay(e.images[i], e.heatmaps[i])), n
        assert it["label"] == e.labels[i] and it["probability"] == pytest.approx(e.probabilities[i], abs=1e-5)
        check_peak(it["peak"], e.heatmaps[i], upright_wh(folder / n), n)
