"""Data sources end to end: folder trees, archives, CSV / DataFrame, ``cifar10`` via CNNLAB_CIFAR10,
the decoded-pixel disk cache, bad-input errors, label alignment and ``cnnlab data inspect``."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnlab.api import align_labels, inspect_data
from cnnlab.cli.main import main
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.sources import load_source
from cnnlab.errors import DataError

CLASSES = ["blue", "green", "red"]
COLOURS = np.array([(30, 40, 210), (35, 200, 45), (215, 35, 30)])  # conftest.CLASS_COLOURS order


# --------------------------------------------------------------------------- helpers


def colour_labels(x: np.ndarray) -> np.ndarray:
    """The class each image's mean colour is nearest to (tiny_tree's classes)."""
    means = x.reshape(len(x), -1, 3).mean(axis=1)
    return np.argmin(((means[:, None, :] - COLOURS[None]) ** 2).sum(-1), axis=1)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def by_relpath(arrays: ImageArrays, strip: str) -> dict[str, tuple[np.ndarray, str]]:
    """Map each image's path (less ``strip`` and a leading "./") to (pixels, class name)."""
    out = {}
    assert arrays.paths is not None
    for x, y, p in zip(arrays.x, arrays.y, arrays.paths):
        assert p.startswith(strip), (p, strip)
        rel = p[len(strip) :].lstrip("/")
        rel = rel[2:] if rel.startswith("./") else rel
        out[rel] = (x, arrays.class_names[y])
    return out


def write_archive(src: Path, dest: Path, wrap: str = "", dir_entries: bool = True) -> Path:
    """Pack the tree under ``src`` into ``dest`` (.zip / .tar / .tar.gz), inside folder ``wrap``."""
    files = sorted(p for p in src.rglob("*"))
    name = dest.name
    prefix = f"{wrap}/" if wrap else ""
    if name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w") as zf:
            for p in files:
                arc = prefix + p.relative_to(src).as_posix()
                if p.is_dir():
                    if dir_entries:
                        zf.writestr(arc + "/", b"")
                else:
                    zf.write(p, arc)
    else:
        mode = "w:gz" if name.endswith(".tar.gz") else "w"
        with tarfile.open(dest, mode) as tf:
            for p in files:
                if p.is_file() or dir_entries:
                    tf.add(p, prefix + p.relative_to(src).as_posix(), recursive=False)
    return dest


def touch_later(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def noise_png(size: int = 48, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def split_tree(tmp_path: Path, make_tree: Callable[..., Path]) -> Path:
    """root/train (3 classes x 6), root/test (x 2), root/validation (x 1), 16 x 16 images."""
    root = tmp_path / "splits"
    make_tree(root / "train", per_class=6, seed=1)
    make_tree(root / "test", per_class=2, seed=2)
    make_tree(root / "validation", per_class=1, seed=3)
    return root


# --------------------------------------------------------------------------- folder trees


def test_flat_folder_tree(tiny_tree: Path) -> None:
    b = load_source(tiny_tree)
    assert isinstance(b, DatasetBundle)
    assert b.class_names == CLASSES
    assert b.train.x.shape == (72, 16, 16, 3) and b.train.x.dtype == np.uint8
    assert b.train.class_counts() == {"blue": 24, "green": 24, "red": 24}
    assert b.val is None and b.test is None
    assert b.info["skipped"] == 0 and b.info["cache"] == "miss"
    np.testing.assert_array_equal(colour_labels(b.train.x), b.train.y)  # labels follow the folders
    # each array is exactly its file's pixels, and its label is its folder
    for x, y, p in list(zip(b.train.x, b.train.y, b.train.paths))[:6]:
        np.testing.assert_array_equal(x, read_rgb(Path(p)))
        assert Path(p).parent.name == CLASSES[y]
    # stored in a fixed shuffled order, not class by class (Keras's last-20% split needs it)
    assert len(set(b.train.y[:24].tolist())) == 3


def test_folder_tree_with_train_test_validation(split_tree: Path) -> None:
    b = load_source(split_tree)
    assert b.class_names == CLASSES
    assert (len(b.train), len(b.test), len(b.val)) == (18, 6, 3)
    assert b.test.class_counts() == {"blue": 2, "green": 2, "red": 2}
    assert b.val.class_counts() == {"blue": 1, "green": 1, "red": 1}
    for part in (b.train, b.test, b.val):
        np.testing.assert_array_equal(colour_labels(part.x), part.y)
    assert all("/test/" in p for p in b.test.paths) and all("/validation/" in p for p in b.val.paths)


def test_val_folder_name_and_no_test(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(tmp_path / "d" / "train", per_class=3)
    make_tree(tmp_path / "d" / "val", per_class=2, seed=5)
    b = load_source(tmp_path / "d")
    assert b.test is None and len(b.val) == 6 and len(b.train) == 9


def test_test_split_class_missing_from_train(split_tree: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(split_tree / "test", classes=["purple"], per_class=1)
    with pytest.raises(DataError, match=r"test split has class 'purple' that the train split lacks"):
        load_source(split_tree)


def test_split_folders_without_train_are_refused(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    """test/ and val/ alone are a split layout missing train/, not two classes "test" and "val"."""
    make_tree(tmp_path / "d" / "test", per_class=2)
    make_tree(tmp_path / "d" / "val", per_class=2)
    with pytest.raises(DataError, match=r"has \['test', 'val'\] folders but no train/ folder"):
        load_source(tmp_path / "d")


def test_non_images_and_hidden_folders_are_ignored(tiny_tree: Path, make_tree: Callable[..., Path]) -> None:
    (tiny_tree / "README.txt").write_text("about")
    (tiny_tree / "red" / "notes.md").write_text("x")
    make_tree(tiny_tree / ".thumbnails", classes=["blue"], per_class=2)
    b = load_source(tiny_tree)
    assert len(b.train) == 72 and b.class_names == CLASSES
    assert b.info["ignored_files"] == 2


def test_images_in_subfolders_belong_to_the_class(tiny_tree: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(tiny_tree / "red" / "more", classes=["x"], per_class=3, colours=[(215, 35, 30)], seed=9)
    b = load_source(tiny_tree)
    assert b.class_names == CLASSES and b.train.class_counts()["red"] == 27


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_archive_with_a_wrapping_folder_matches_the_folder(
    tmp_path: Path, split_tree: Path, suffix: str
) -> None:
    folder = load_source(split_tree)
    arch = write_archive(split_tree, tmp_path / f"data{suffix}", wrap="my-dataset")
    b = load_source(arch)
    assert b.class_names == CLASSES
    assert (len(b.train), len(b.test), len(b.val)) == (18, 6, 3)
    for split in ("train", "test", "val"):
        want = by_relpath(getattr(folder, split), str(split_tree))
        got = by_relpath(getattr(b, split), f"{arch}:my-dataset/")
        assert set(got) == set(want)
        for rel, (x, label) in want.items():
            np.testing.assert_array_equal(got[rel][0], x)
            assert got[rel][1] == label


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_flat_archive_without_directory_entries(tmp_path: Path, tiny_tree: Path, suffix: str) -> None:
    arch = write_archive(tiny_tree, tmp_path / f"flat{suffix}", dir_entries=False)
    b = load_source(arch)
    assert b.class_names == CLASSES
    assert b.train.class_counts() == {"blue": 24, "green": 24, "red": 24}
    np.testing.assert_array_equal(colour_labels(b.train.x), b.train.y)
    assert b.train.paths[0].startswith(f"{arch}:")


def test_flat_archive_with_wrapping_folder(tmp_path: Path, tiny_tree: Path) -> None:
    arch = write_archive(tiny_tree, tmp_path / "w.tar.gz", wrap="photos")
    b = load_source(arch)
    assert b.class_names == CLASSES and len(b.train) == 72  # not one class called "photos"


def test_archive_with_an_empty_class_folder(tmp_path: Path, tiny_tree: Path) -> None:
    (tiny_tree / "yellow").mkdir()
    arch = write_archive(tiny_tree, tmp_path / "e.zip", wrap="top")
    with pytest.raises(DataError, match=r"e\.zip: class folder 'yellow' holds no images"):
        load_source(arch)


def test_corrupt_archive(tmp_path: Path, tiny_tree: Path) -> None:
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"broken\.zip: cannot read archive"):
        load_source(bad)
    good = write_archive(tiny_tree, tmp_path / "cut.tar.gz").read_bytes()
    cut = tmp_path / "cut2.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut2\.tar\.gz: "):
        load_source(cut)


# --------------------------------------------------------------------------- CSV and DataFrame


@pytest.fixture
def csv_data(tmp_path: Path, make_tree: Callable[..., Path]) -> Path:
    """tmp/csvdata/images/<class>/NNN.png and tmp/csvdata/labels.csv with relative paths."""
    root = tmp_path / "csvdata"
    make_tree(root / "images", per_class=4, seed=7)
    rows = []
    for p in sorted((root / "images").rglob("*.png")):
        split = "test" if p.stem == "003" else "train"
        rows.append({"filepath": p.relative_to(root).as_posix(), "class": p.parent.name, "split": split})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_csv_paths_are_relative_to_the_csv(
    csv_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    b = load_source(csv_data)
    assert b.class_names == CLASSES
    assert len(b.train) == 9 and len(b.test) == 3 and b.val is None
    np.testing.assert_array_equal(colour_labels(b.train.x), b.train.y)
    for x, p in zip(b.train.x, b.train.paths):
        np.testing.assert_array_equal(x, read_rgb(Path(p)))
        assert Path(p).is_relative_to(csv_data.parent)


def test_dataframe_with_base_dir_matches_csv(csv_data: Path) -> None:
    df = pd.read_csv(csv_data)
    from_csv = load_source(csv_data)
    from_df = load_source(df, base_dir=csv_data.parent)
    assert from_df.class_names == from_csv.class_names
    np.testing.assert_array_equal(from_df.train.x, from_csv.train.x)
    np.testing.assert_array_equal(from_df.train.y, from_csv.train.y)
    np.testing.assert_array_equal(from_df.test.x, from_csv.test.x)


def test_dataframe_with_absolute_paths_and_named_columns(csv_data: Path) -> None:
    df = pd.read_csv(csv_data)
    df = pd.DataFrame({"pic": [str(csv_data.parent / p) for p in df["filepath"]], "kind": df["class"]})
    b = load_source(df, image_column="pic", label_column="kind")
    assert b.class_names == CLASSES and len(b.train) == 12


def test_numeric_labels_sort_as_numbers(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(tmp_path / "n", classes=["a", "b"], per_class=2)
    paths = sorted((tmp_path / "n").rglob("*.png"))
    labels = [10 if p.parent.name == "a" else 2 for p in paths]
    pd.DataFrame({"image": [str(p) for p in paths], "label": labels}).to_csv(tmp_path / "n.csv", index=False)
    b = load_source(tmp_path / "n.csv")
    assert b.class_names == ["2", "10"]
    assert b.train.y.tolist() == [1, 1, 0, 0]


def test_csv_missing_image_column_lists_the_columns(tmp_path: Path) -> None:
    pd.DataFrame({"foo": ["a.png", "b.png"], "label": [0, 1]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError) as exc:
        load_source(tmp_path / "m.csv")
    msg = str(exc.value)
    assert "m.csv" in msg and "image path column" in msg and "['foo', 'label']" in msg


def test_csv_missing_label_column_lists_the_columns(tmp_path: Path) -> None:
    pd.DataFrame({"image": ["a.png"], "kind": [0]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"missing the label column.*columns are \['image', 'kind'\]"):
        load_source(tmp_path / "m.csv")
    with pytest.raises(DataError, match=r"no column 'species' for the label; columns are \['image', 'kind'\]"):
        load_source(tmp_path / "m.csv", label_column="species")


def test_csv_missing_image_path_names_row_and_path(csv_data: Path) -> None:
    df = pd.read_csv(csv_data)
    df.loc[2, "filepath"] = "images/red/nope.png"
    df.to_csv(csv_data, index=False)
    with pytest.raises(DataError) as exc:
        load_source(csv_data)
    msg = str(exc.value)
    assert "row 3" in msg and str(csv_data.parent / "images" / "red" / "nope.png") in msg
    b = load_source(csv_data, skip_bad=True)
    assert b.info["skipped"] == 1 and len(b.train) + len(b.test) == 11
    assert "nope.png" in b.info["skipped_files"][0]


def test_csv_corrupt_image_names_file_and_suggests_skip_bad(csv_data: Path) -> None:
    victim = csv_data.parent / "images" / "green" / "001.png"
    victim.write_text("not an image")
    with pytest.raises(DataError) as exc:
        load_source(csv_data)
    msg = str(exc.value)
    assert str(victim) in msg and "--skip-bad" in msg


def test_csv_empty_label_and_bad_split(csv_data: Path) -> None:
    df = pd.read_csv(csv_data)
    df.loc[4, "class"] = None
    df.to_csv(csv_data, index=False)
    with pytest.raises(DataError, match=r"row 5 has an empty 'class'"):
        load_source(csv_data)
    df = pd.read_csv(csv_data).fillna("red")
    df.loc[1, "split"] = "holdout"
    df.to_csv(csv_data, index=False)
    with pytest.raises(DataError, match=r"split 'holdout' is not one of train, val, test"):
        load_source(csv_data)


# --------------------------------------------------------------------------- cifar10 via CNNLAB_CIFAR10


@pytest.fixture
def fake_cifar_tree(tmp_path: Path, make_tree: Callable[..., Path]) -> Path:
    root = tmp_path / "fake-cifar"
    make_tree(root / "cifar10" / "train", classes=["airplane", "automobile", "bird"], per_class=4, size=(8, 8))
    make_tree(root / "cifar10" / "test", classes=["airplane", "automobile", "bird"], per_class=2, size=(8, 8))
    return root


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_cifar10_from_an_image_folder_archive(
    tmp_path: Path, fake_cifar_tree: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    arch = write_archive(fake_cifar_tree, tmp_path / f"cifar{suffix}")
    monkeypatch.setenv("CNNLAB_CIFAR10", str(arch))
    b = load_source("cifar10")
    assert b.name == "cifar10"
    assert b.class_names == ["airplane", "automobile", "bird"]
    assert b.train.x.shape == (12, 8, 8, 3) and len(b.test) == 6
    assert b.info["source"] == str(arch)
    assert load_source("CIFAR10").info["cache"] == "hit"


def test_cifar10_from_an_image_folder(fake_cifar_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CIFAR10", str(fake_cifar_tree))
    b = load_source("cifar10", image_size=4)
    assert b.name == "cifar10" and b.class_names == ["airplane", "automobile", "bird"]
    assert b.train.x.shape == (12, 4, 4, 3)


def test_cifar10_env_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CIFAR10", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"CNNLAB_CIFAR10=.*nowhere: no such file or folder"):
        load_source("cifar10")
    (tmp_path / "notes.txt").write_text("hi")
    monkeypatch.setenv("CNNLAB_CIFAR10", str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match=r"CNNLAB_CIFAR10=.*notes\.txt: neither the official"):
        load_source("cifar10")


# --------------------------------------------------------------------------- the decoded-pixel cache


def test_cache_hit_returns_identical_arrays(tiny_tree: Path, isolated_home: Path) -> None:
    first = load_source(tiny_tree)
    second = load_source(tiny_tree)
    assert first.info["cache"] == "miss" and second.info["cache"] == "hit"
    assert second.class_names == first.class_names and second.name == first.name
    np.testing.assert_array_equal(second.train.x, first.train.x)
    np.testing.assert_array_equal(second.train.y, first.train.y)
    assert second.train.paths == first.train.paths
    assert second.train.x.dtype == np.uint8 and second.train.y.dtype == np.int64
    assert len(list((isolated_home / "decoded").iterdir())) == 1


def test_cache_keeps_splits_and_skipped_counts(split_tree: Path) -> None:
    (split_tree / "train" / "red" / "bad.png").write_text("nope")
    first = load_source(split_tree, skip_bad=True)
    second = load_source(split_tree, skip_bad=True)
    assert second.info["cache"] == "hit" and second.info["skipped"] == 1
    np.testing.assert_array_equal(second.test.x, first.test.x)
    np.testing.assert_array_equal(second.val.y, first.val.y)


def test_touching_a_file_is_a_miss(tiny_tree: Path) -> None:
    load_source(tiny_tree)
    touch_later(tiny_tree / "green" / "005.png")
    assert load_source(tiny_tree).info["cache"] == "miss"
    assert load_source(tiny_tree).info["cache"] == "hit"


def test_modified_image_is_redecoded(tiny_tree: Path) -> None:
    target = tiny_tree / "green" / "005.png"
    load_source(tiny_tree)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(target)
    touch_later(target)  # a different mtime even on coarse-clock file systems
    b = load_source(tiny_tree)
    assert b.info["cache"] == "miss"
    i = b.train.paths.index(str(target))
    assert b.train.x[i].reshape(-1, 3).tolist()[0] == [1, 2, 3]


def test_added_file_and_other_size_are_misses(tiny_tree: Path, make_tree: Callable[..., Path]) -> None:
    load_source(tiny_tree)
    assert load_source(tiny_tree, image_size=8).info["cache"] == "miss"
    make_tree(tiny_tree / "red", classes=["new"], per_class=1)
    assert len(load_source(tiny_tree).train) == 73


def test_archive_touch_is_a_miss(tmp_path: Path, tiny_tree: Path) -> None:
    arch = write_archive(tiny_tree, tmp_path / "t.tar")
    assert load_source(arch).info["cache"] == "miss"
    assert load_source(arch).info["cache"] == "hit"
    touch_later(arch)
    assert load_source(arch).info["cache"] == "miss"


def test_csv_cache_notices_an_edited_image(csv_data: Path) -> None:
    assert load_source(csv_data).info["cache"] == "miss"
    assert load_source(csv_data).info["cache"] == "hit"
    target = csv_data.parent / "images" / "blue" / "000.png"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(target)
    touch_later(target)
    b = load_source(csv_data)
    assert b.info["cache"] == "miss"
    assert b.train.x[b.train.paths.index(str(target))].max() == 9


def test_cifar10_env_folder_cache_notices_an_edited_image(
    fake_cifar_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNLAB_CIFAR10", str(fake_cifar_tree))
    load_source("cifar10")
    assert load_source("cifar10").info["cache"] == "hit"
    target = fake_cifar_tree / "cifar10" / "train" / "bird" / "000.png"
    Image.new("RGB", (8, 8), (255, 255, 255)).save(target)
    touch_later(target)
    b = load_source("cifar10")
    assert b.info["cache"] == "miss"
    assert (b.train.x == 255).all(axis=(1, 2, 3)).sum() == 1


def test_no_cache_env_disables_the_cache(
    tiny_tree: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNLAB_NO_CACHE", "1")
    assert load_source(tiny_tree).info["cache"] == "miss"
    assert load_source(tiny_tree).info["cache"] == "miss"
    assert not (isolated_home / "decoded").exists() or not any((isolated_home / "decoded").iterdir())
    monkeypatch.delenv("CNNLAB_NO_CACHE")
    load_source(tiny_tree)
    assert load_source(tiny_tree).info["cache"] == "hit"


# --------------------------------------------------------------------------- bad files in a source


def _bad_bytes(kind: str) -> bytes:
    data = noise_png()
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "corrupt":
        b = bytearray(data)
        i = b.index(b"IDAT")
        b[i + 20 : i + 60] = b"\xff" * 40
        return bytes(b)
    if kind == "empty":
        return b""
    return b"just some text, saved with an image suffix\n"


BAD_KINDS = {"truncated": "truncated", "corrupt": "corrupt", "empty": "empty file", "text": "not an image"}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_file_in_a_folder_names_it(tiny_tree: Path, kind: str) -> None:
    bad = tiny_tree / "green" / f"bad_{kind}.png"
    bad.write_bytes(_bad_bytes(kind))
    with pytest.raises(DataError) as exc:
        load_source(tiny_tree)
    msg = str(exc.value)
    assert str(bad) in msg and BAD_KINDS[kind] in msg and "--skip-bad" in msg


def test_skip_bad_skips_and_counts(tiny_tree: Path) -> None:
    names = []
    for k, kind in enumerate(sorted(BAD_KINDS)):
        path = tiny_tree / CLASSES[k % 3] / f"bad_{kind}.jpg"
        path.write_bytes(_bad_bytes(kind))
        names.append(str(path))
    b = load_source(tiny_tree, skip_bad=True)
    assert b.info["skipped"] == 4
    assert len(b.train) == 72 and b.train.class_counts() == {"blue": 24, "green": 24, "red": 24}
    assert sorted(m.split(": ")[0] for m in b.info["skipped_files"]) == sorted(names)
    assert not any(Path(p).name.startswith("bad_") for p in b.train.paths)


def test_skip_bad_in_an_archive(tmp_path: Path, tiny_tree: Path) -> None:
    (tiny_tree / "red" / "cut.png").write_bytes(_bad_bytes("truncated"))
    arch = write_archive(tiny_tree, tmp_path / "b.tar.gz", wrap="top")
    with pytest.raises(DataError) as exc:
        load_source(arch)
    assert f"{arch}:top/red/cut.png" in str(exc.value)
    b = load_source(arch, skip_bad=True)
    assert b.info["skipped"] == 1 and len(b.train) == 72


def test_skip_bad_that_empties_a_class_is_an_error(tiny_tree: Path) -> None:
    (tiny_tree / "yellow").mkdir()
    for i in range(2):
        (tiny_tree / "yellow" / f"{i}.png").write_text("no")
    with pytest.raises(DataError, match=r"class folder 'yellow' has no readable images \(2 bad files skipped\)"):
        load_source(tiny_tree, skip_bad=True)


# --------------------------------------------------------------------------- unusable trees


def test_empty_class_folder_is_named(tiny_tree: Path) -> None:
    (tiny_tree / "purple").mkdir()
    with pytest.raises(DataError, match=rf"{tiny_tree}: class folder 'purple' holds no images"):
        load_source(tiny_tree)


def test_empty_class_folder_in_train_split(split_tree: Path) -> None:
    (split_tree / "train" / "purple").mkdir()
    (split_tree / "train" / "purple" / "readme.txt").write_text("only text here")
    with pytest.raises(DataError, match=r"class folder 'purple' holds no images"):
        load_source(split_tree)


def test_fewer_than_two_classes(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(tmp_path / "one", classes=["only"], per_class=3)
    with pytest.raises(DataError, match=r"need at least two classes.*found 'only'"):
        load_source(tmp_path / "one")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"none: found no images in class folders"):
        load_source(tmp_path / "none")


def test_fewer_than_two_classes_in_a_csv(tmp_path: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(tmp_path / "c", classes=["only"], per_class=2)
    paths = sorted((tmp_path / "c").rglob("*.png"))
    pd.DataFrame({"image": [str(p) for p in paths], "label": "only"}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match=r"c\.csv: need at least two classes"):
        load_source(tmp_path / "c.csv")


def test_mixed_sizes_need_an_image_size(tiny_tree: Path, make_tree: Callable[..., Path]) -> None:
    make_tree(tiny_tree / "red", classes=["wide"], per_class=1, size=(20, 16))
    with pytest.raises(DataError, match=r"different sizes.*--image-size"):
        load_source(tiny_tree)
    b = load_source(tiny_tree, image_size=12)
    assert b.train.x.shape == (73, 12, 12, 3)


def test_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'.*missing-dir': no such file or folder"):
        load_source(tmp_path / "missing-dir")
    (tmp_path / "pic.png").write_bytes(noise_png(4))
    with pytest.raises(DataError, match=r"pic\.png': not a folder, an archive"):
        load_source(tmp_path / "pic.png")


# --------------------------------------------------------------------------- labels at evaluation


def test_align_labels_maps_by_name() -> None:
    split = ImageArrays(np.zeros((3, 2, 2, 3), np.uint8), np.array([0, 1, 1]), ["cat", "dog"])
    mapped = align_labels(split, ["bird", "dog", "cat"], "src")
    assert mapped.tolist() == [2, 1, 1]


def test_align_labels_unknown_label_is_named() -> None:
    split = ImageArrays(np.zeros((2, 2, 2, 3), np.uint8), np.array([0, 1]), ["cat", "frog"])
    with pytest.raises(DataError) as exc:
        align_labels(split, ["cat", "dog"], "new.csv")
    msg = str(exc.value)
    assert msg.startswith("new.csv:") and "'frog'" in msg and "cat, dog" in msg
    # a class the source names but no image uses is not an error
    unused = ImageArrays(np.zeros((1, 2, 2, 3), np.uint8), np.array([0]), ["cat", "frog"])
    assert align_labels(unused, ["dog", "cat"], "x").tolist() == [1]


# --------------------------------------------------------------------------- inspecting a source


def test_inspect_data_summary(split_tree: Path) -> None:
    s = inspect_data(split_tree)
    assert s["classes"] == CLASSES
    assert s["splits"]["train"]["shape"] == [18, 16, 16, 3]
    assert s["splits"]["test"]["class_counts"] == {"blue": 2, "green": 2, "red": 2}
    x = load_source(split_tree).train.x
    assert s["splits"]["train"]["pixel_min"] == int(x.min()) and s["splits"]["train"]["pixel_max"] == int(x.max())
    assert "figures" not in s


def test_cli_data_inspect(tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    assert main(["data", "inspect", str(tiny_tree), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "3 classes" in stdout
    assert "images (72, 16, 16, 3), labels (72,)" in stdout
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.split()[:1] in (["blue"], ["green"], ["red"])}
    assert rows == {"blue": ["24"], "green": ["24"], "red": ["24"]}
    for name in ("example_images.png", "label_scatter.png"):
        path = out / name
        assert path.is_file() and str(path) in stdout
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


def test_cli_data_inspect_json(tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_tree / "red" / "bad.png").write_text("x")
    assert main(["data", "inspect", str(tiny_tree), "--out", str(tmp_path / "o"), "--skip-bad",
                 "--image-size", "8", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["skipped"] == 1 and s["splits"]["train"]["shape"] == [72, 8, 8, 3]
    assert s["splits"]["train"]["class_counts"] == {"blue": 24, "green": 24, "red": 24}
