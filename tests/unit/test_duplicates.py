"""Duplicates and leaks: planted copies among distinct real photos, the search, the CLI and the fit hook."""

from __future__ import annotations

import io
import json
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import duplicates as dup

pytest.importorskip("sklearn")


def _crops() -> dict[str, Image.Image]:
    """24 distinct photos: a 4 x 3 grid of non-overlapping crops of each of scikit-learn's sample photos."""
    out = {}
    for name in ("china", "flower"):
        im = Image.open(str(files("sklearn.datasets") / "images" / f"{name}.jpg")).convert("RGB")
        w, h = im.size
        for r in range(3):
            for c in range(4):
                out[f"{name}{r * 4 + c:02d}"] = im.crop((c * w // 4, r * h // 3, (c + 1) * w // 4, (r + 1) * h // 3))
    return out


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set, set]:
    """train/ and test/ of distinct photos, with planted copies. Returns (root, exact pairs, near pairs)
    as sets of frozensets of file names."""
    root = tmp_path_factory.mktemp("photos")
    crops = _crops()
    for name, im in crops.items():
        cls = "china" if name.startswith("china") else "flower"
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        im.save(root / "train" / cls / f"{name}.png")
    (root / "test" / "china").mkdir(parents=True)
    (root / "test" / "flower").mkdir(parents=True)
    t = root / "train"
    shutil.copy(t / "china/china01.png", t / "china/copy_of_china01.png")  # exact, within train
    shutil.copy(t / "china/china08.png", root / "test/china/t_exact.png")  # exact, across splits
    c4 = crops["china04"]
    c4.resize((c4.width // 2, c4.height // 2), Image.Resampling.BICUBIC).save(root / "test/china/t_resized.png")
    (root / "test/flower/t_jpeg.jpg").write_bytes(_jpeg(crops["flower05"], 40))  # re-encoded, across splits
    f9 = crops["flower09"]
    (t / "flower/resized_jpeg.jpg").write_bytes(_jpeg(f9.resize((f9.width * 2 // 3, f9.height * 2 // 3)), 50))
    exact = {frozenset({"china01.png", "copy_of_china01.png"}), frozenset({"china08.png", "t_exact.png"})}
    near = {frozenset({"china04.png", "t_resized.png"}), frozenset({"flower05.png", "t_jpeg.jpg"}),
            frozenset({"flower09.png", "resized_jpeg.jpg"})}
    return root, exact, near


def _names(pairs: list[dict]) -> set:
    return {frozenset({Path(p["a"]).name, Path(p["b"]).name}) for p in pairs}


def test_every_planted_pair_found_and_no_false_pair(photo_tree) -> None:
    from cnnlab.data.sources import load_source

    root, exact, near = photo_tree
    bundle = load_source(root, image_size=96)
    rep = dup.find_duplicates(bundle.splits())
    assert _names(rep.exact) == exact
    assert _names(rep.near) == near
    assert all(p["distance"] == 0 for p in rep.exact)
    assert all(0 <= p["distance"] <= dup.MAX_DISTANCE for p in rep.near)
    cross = _names(rep.cross_split)
    assert cross == {frozenset({"china08.png", "t_exact.png"}), frozenset({"china04.png", "t_resized.png"}),
                     frozenset({"flower05.png", "t_jpeg.jpg"})}
    assert all("/train/" in p["a"] and "/test/" in p["b"] for p in rep.cross_split)  # a: the training side
    leaked = sorted(Path(bundle.train.paths[i]).name for i in rep.train_leaks)
    assert leaked == ["china04.png", "china08.png", "flower05.png"]


def test_threshold_sits_in_the_gap_between_copies_and_distinct_photos() -> None:
    """The justification of MAX_DISTANCE: resized / re-encoded copies of detailed photos land at or
    under it, distinct photos well over it (a featureless sky crop, china02, is left out of the copies:
    its pHash is unstable, the documented limitation)."""
    crops = _crops()

    def arr(im: Image.Image) -> np.ndarray:
        return np.asarray(im.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR))

    names = list(crops)
    h = dup.phashes(np.stack([arr(crops[n]) for n in names]))
    d = dup._popcount(h[:, None] ^ h[None, :])
    distinct = d[np.triu_indices(len(h), 1)]
    assert distinct.min() > 2 * dup.MAX_DISTANCE  # 20 measured
    worst = 0
    for n in names:
        if np.asarray(crops[n].convert("L")).std() < 20:  # near-featureless crops: see the docstring
            continue
        im = crops[n]
        for v in (im.resize((im.width // 2, im.height // 2)), im.resize((im.width * 2, im.height * 2)),
                  Image.open(io.BytesIO(_jpeg(im, 40))), Image.open(io.BytesIO(_jpeg(im.resize((im.width * 2 // 3, im.height * 2 // 3)), 50)))):
            hv = dup.phashes(arr(v)[None])[0]
            worst = max(worst, int(dup._popcount(np.array([hv ^ h[names.index(n)]]))[0]))
    assert worst <= dup.MAX_DISTANCE


def test_batched_phash_is_imagehash_phash_bit_for_bit() -> None:
    imagehash = pytest.importorskip("imagehash")
    rng = np.random.default_rng(0)
    crops = list(_crops().values())[:6]
    x = np.stack([np.asarray(c.resize((64, 64))) for c in crops]
                 + [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)])
    ours = dup.phashes(x, batch=3)
    ref = [int(str(imagehash.phash(Image.fromarray(a))), 16) for a in x]
    assert [int(v) for v in ours] == ref


def test_near_pairs_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**63, 400, dtype=np.uint64) | (rng.integers(0, 2, 400, dtype=np.uint64) << np.uint64(63))
    for k in range(0, 399, 7):  # planted neighbours at 0 .. 9 bits
        bits = rng.choice(64, size=k % 10, replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(b) for b in bits))
    d = dup._popcount(h[:, None] ^ h[None, :])
    i, j = np.triu_indices(len(h), 1)
    keep = d[i, j] <= dup.MAX_DISTANCE
    want = set(zip(i[keep].tolist(), j[keep].tolist(), d[i, j][keep].tolist()))
    gi, gj, gd = dup.near_pairs(h)
    assert set(zip(gi.tolist(), gj.tolist(), gd.tolist())) == want
    assert len(want) >= 30  # the planted ones at <= MAX_DISTANCE, at least


def test_inspect_cli_json_and_page(photo_tree, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    from cnnlab import api
    from cnnlab.cli.main import main

    root, exact, near = photo_tree
    assert main(["data", "inspect", str(root), "--image-size", "96", "--out", str(tmp_path / "o"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("exact_duplicates", "near_duplicates", "cross_split_duplicates"):
        assert all(set(p) == {"a", "b", "distance"} for p in out[key])
    assert _names(out["exact_duplicates"]) == exact and _names(out["near_duplicates"]) == near
    assert len(out["cross_split_duplicates"]) == 3
    page = (tmp_path / "o" / "duplicates.html").read_text()
    assert page.count("<div class='pair'>") == 3 + 2 + 3  # cross-split, exact, near sections
    assert "t_resized.png" in page and "data:image/png;base64," in page
    monkeypatch.setattr(api, "inspect_data", lambda *a, **k: out)  # the text form of the same summary
    assert main(["data", "inspect", str(root), "--image-size", "96", "--out", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "duplicates: 2 exact pairs, 3 near-duplicate pairs (pHash distance <= 6), 3 across splits " \
           "(3 training images duplicate a validation or test image)" in text
    assert text.count(" ~ ") == 3  # the cross-split examples


def test_clean_tree_has_no_duplicates(tiny_tree: Path) -> None:
    from cnnlab.data.sources import load_source

    # the tiny tree: per-pixel noise over one colour a class (no structure: pHashes of noise are far apart)
    rep = dup.find_duplicates(load_source(tiny_tree).splits())
    assert rep.exact == [] and rep.near == [] and rep.cross_split == [] and rep.warning() is None


def test_fit_start_warns_and_drop_leaks_removes_them(photo_tree) -> None:
    from cnnlab.data.sources import load_source

    root, _, _ = photo_tree
    b = load_source(root, image_size=96)
    lines: list[str] = []
    train, rep = dup.check_splits(b.train, None, b.test, log=lines.append)
    assert len(train) == len(b.train) and len(lines) == 1
    assert lines[0].startswith("warning: duplicates: 2 exact and 3 near-duplicate pairs")
    assert "3 training images duplicate a validation or test image" in lines[0]
    lines.clear()
    train, _ = dup.check_splits(b.train, None, b.test, drop_leaks=True, log=lines.append)
    assert len(train) == len(b.train) - 3
    assert {"china04.png", "china08.png", "flower05.png"}.isdisjoint(Path(p).name for p in train.paths)
    assert "removed 3 training images" in lines[1]
    again, rep2 = dup.check_splits(train, None, b.test, log=lines.append)
    assert rep2.cross_split == [] and rep2.train_leaks == []


def test_drop_leaks_refuses_to_empty_a_class() -> None:
    from cnnlab.data.dataset import ImageArrays
    from cnnlab.errors import DataError

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    train = ImageArrays(imgs[:3], np.array([0, 1, 1]), ["a", "b"])
    test = ImageArrays(imgs[[0, 3]], np.array([0, 1]), ["a", "b"])  # class a's one training image is a test image
    with pytest.raises(DataError, match="--drop-leaks: every training image of class 'a'"):
        dup.check_splits(train, None, test, drop_leaks=True, log=lambda s: None)


def test_cli_fit_passes_drop_leaks(monkeypatch, tmp_path: Path) -> None:
    from cnnlab.autofit import fit as fit_mod
    from cnnlab.cli.main import main

    seen = {}

    class Stop(Exception):
        pass

    def fake(pred, data, tuning, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(fit_mod, "auto_fit", fake)
    with pytest.raises(Stop):
        main(["fit", "--data", str(tmp_path), "--time-limit", "20s", "--drop-leaks", "--out", str(tmp_path / "f")])
    assert seen["drop_leaks"] is True
