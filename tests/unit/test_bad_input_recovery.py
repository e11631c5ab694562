"""The other side of the bad-input corpus: what the user is told to do works (--skip-bad counts
what it skips, --discard-state drops a corrupt state and finishes the run), and property-based
tests of image decoding (any bytes: an image or a DataError, never another exception)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.data.decode import decode_image
from cnnlab.data.sources import load_source
from cnnlab.errors import DataError

from test_bad_input_corpus import good_members, png, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")

    def run(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_train_skip_bad_counts_the_skipped_images(cli, tiny_tree, tmp_path):
    (tiny_tree / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tiny_tree / "blue" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg()))
    rc, out, err = cli("train", "-c", cfg, "--data", tiny_tree, "--skip-bad", "--run-dir", tmp_path / "r",
                       "--no-progress")
    assert rc == 0, err
    assert "skipped 2 unreadable images (--skip-bad)" in out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["skipped_images"] == 2


def test_archive_with_an_absolute_member_and_skip_bad(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**good_members(), "/x.png": png(), "../y.png": png()}.items():
            zf.writestr(name, data)
    bundle = load_source(path, skip_bad=True)
    assert bundle.class_names == ["blue", "green", "red"]  # no class named "/" or ".."
    assert bundle.info["skipped"] == 2 and "absolute or '..'" in bundle.info["skipped_files"][0]
    assert len(bundle.train) == 9


def test_dangling_symlink_is_skipped_with_skip_bad(cli, tiny_tree, tmp_path):
    (tiny_tree / "red" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    rc, out, err = cli("data", "inspect", tiny_tree, "--out", tmp_path / "o", "--skip-bad")
    assert rc == 0, err
    assert "skipped 1 unreadable files" in out


def test_discard_state_drops_a_corrupt_state_and_finishes(cli, tiny_tree, tmp_path):
    from cnnlab import api

    class Stop(Exception):
        pass

    def stop(epoch, logs):
        raise Stop

    with pytest.raises(Stop):
        api.train(tiny_cfg(epochs=2), data=str(tiny_tree), run_dir=tmp_path / "r", progress=False,
                  log=lambda s: None, epoch_callback=stop)
    state = tmp_path / "r" / "state" / "train_state.json"
    state.write_text(state.read_text()[:25])
    rc, _, err = cli("train", "--resume", tmp_path / "r", "--no-progress")
    assert rc == 2 and "--discard-state" in err and "Traceback" not in err
    rc, out, err = cli("train", "--resume", tmp_path / "r", "--discard-state", "--no-progress")
    assert rc == 0, err
    assert f"--discard-state: dropped an unreadable state ({tmp_path / 'r' / 'state'})" in out
    assert "training again from epoch 1" in out
    assert (tmp_path / "r" / "model.json").is_file() and not (tmp_path / "r" / "state").exists()


def test_discard_state_says_which_epoch_it_drops(cli, tiny_tree, tmp_path):
    from cnnlab import api

    class Stop(Exception):
        pass

    def stop(epoch, logs):
        raise Stop

    with pytest.raises(Stop):
        api.train(tiny_cfg(epochs=2), data=str(tiny_tree), run_dir=tmp_path / "r", progress=False,
                  log=lambda s: None, epoch_callback=stop)
    rc, out, err = cli("train", "--resume", tmp_path / "r", "--discard-state", "--no-progress")
    assert rc == 0, err
    assert "dropped the state saved after epoch 1" in out


# --------------------------------------------------------------------------- decoding properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_an_image_or_a_data_error(data: bytes) -> None:
    try:
        arr = decode_image(data, name="x.png")
    except DataError as exc:
        assert str(exc).startswith("x.png: ") and "\n" not in str(exc)
        return
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def _encode(arr: np.ndarray, mode: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, fmt)
    return buf.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(1, 40), h=st.integers(1, 40), mode=st.sampled_from(["L", "RGB", "RGBA"]),
       fmt=st.sampled_from(["PNG", "BMP", "TIFF"]), size=st.one_of(st.none(), st.integers(1, 24)),
       seed=st.integers(0, 2**16), cut=st.one_of(st.none(), st.integers(0, 200)))
def test_encoded_images_decode_to_their_size_or_a_data_error(w, h, mode, fmt, size, seed, cut) -> None:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    data = _encode(rng.integers(0, 256, shape, dtype=np.uint8), mode, fmt)
    if cut is not None:
        data = data[:cut]  # truncated: an image (some formats survive a cut) or a DataError
        try:
            decode_image(data, size, name="cut")
        except DataError as exc:
            assert "\n" not in str(exc)
        return
    arr = decode_image(data, size, name="img")
    assert arr.shape == ((h, w, 3) if size is None else (size, size, 3)) and arr.dtype == np.uint8
    if mode == "L" and size is None:  # grey: the value in R, G and B
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_a_nonsense_size_is_refused_as_a_size(size, image_bytes) -> None:
    with pytest.raises(DataError, match="--image-size"):
        decode_image(image_bytes(Image.new("RGB", (4, 4))), size)


def test_path_that_is_a_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder, not an image file"):
        decode_image(tmp_path)
