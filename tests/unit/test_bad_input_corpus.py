"""The bad-input corpus (issue 14): data, archives, CSVs, configs, flags, run folders and model
files a new user might hand the CLI. Every case must exit with status 2, print no traceback and
one ``cnnlab: error:`` line holding the key words of its message (at most three lines in all).

The CLI runs in-process (tests/unit/test_cli_errors.py has the pattern); the run folders come
from one tiny training per module, copied and damaged per case.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab import api
from cnnlab.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("blue", "green", "red")
COLOURS = ((30, 40, 210), (35, 200, 45), (215, 35, 30))


def png(colour=(128, 128, 128), size=(16, 16), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    px = np.clip(np.array(colour)[None, None] + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(px.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_tree(root: Path, per_class: int = 8, classes=CLASSES) -> Path:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i:03d}.png").write_bytes(png(COLOURS[k % 3], seed=k * 100 + i))
    return root


def tiny_cfg(**train) -> dict:
    return {"name": "tiny", "seed": 0, "data": {"validation_split": 0.25},
            "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 8, 8], "depth": 1}},
            "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3},
                      **train}}


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished run and a run stopped after its first epoch (state/ still there)."""
    root = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        tree = write_tree(root / "tree")
        api.train(tiny_cfg(), data=str(tree), run_dir=root / "done", progress=False, log=lambda s: None)

        def stop(epoch, logs):
            raise _Stop

        with pytest.raises(_Stop):
            api.train(tiny_cfg(epochs=3), data=str(tree), run_dir=root / "partial", progress=False,
                      log=lambda s: None, epoch_callback=stop)
        torch.set_num_threads(before)
    assert (root / "partial" / "state" / "train_state.json").is_file()
    return {"tree": tree, "done": root / "done", "partial": root / "partial"}


class Ctx:
    """What a case's setup works with: a fresh folder and fresh copies of the fixtures."""

    def __init__(self, tmp: Path, runs: dict[str, Path]):
        self.tmp, self._runs = tmp, runs

    def copy(self, name: str) -> Path:
        dst = self.tmp / name
        if not dst.exists():
            shutil.copytree(self._runs[name], dst)
        return dst

    @property
    def tree(self) -> Path:
        return self.copy("tree")

    @property
    def done(self) -> Path:
        return self.copy("done")

    @property
    def partial(self) -> Path:
        return self.copy("partial")

    def write(self, name: str, data: str | bytes) -> Path:
        top = name.split("/")[0]
        if top in self._runs and "/" in name:
            self.copy(top)  # writing into a copy of a fixture: copy it first
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        return p

    def inspect(self, source: Path, *more: str) -> list[str]:
        return ["data", "inspect", str(source), "--out", str(self.tmp / "out"), *more]

    def train(self, *more: str) -> list[str]:
        return ["train", "--run-dir", str(self.tmp / "newrun"), "--no-progress", *more]

    def config(self, text: str) -> list[str]:
        return self.train("--config", str(self.write("exp.yaml", text)), "--data", str(self.tree))


def zip_of(ctx: Ctx, members: dict[str, bytes], name: str = "data.zip") -> Path:
    path = ctx.tmp / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def tar_of(ctx: Ctx, members: dict[str, bytes], name: str = "data.tar") -> Path:
    path = ctx.tmp / name
    with tarfile.open(path, "w") as tf:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def good_members(prefix: str = "", per_class: int = 3) -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": png(COLOURS[k], seed=i) for k, c in enumerate(CLASSES) for i in range(per_class)}


def csv_file(ctx: Ctx, text: str) -> Path:
    ctx.tree  # the images the CSV names: tree/<class>/<i>.png
    return ctx.write("labels.csv", text)


def csv_rows(sep: str = ",", header: str = "image{sep}label") -> str:
    rows = [header.format(sep=sep)] + [f"tree/{c}/{i:03d}.png{sep}{c}" for c in CLASSES for i in range(3)]
    return "\n".join(rows) + "\n"


def dangling(ctx: Ctx) -> list[str]:
    (ctx.tree / "red" / "gone.png").symlink_to(ctx.tmp / "nowhere.png")
    return ctx.inspect(ctx.tree)


def bomb(ctx: Ctx, mp: pytest.MonkeyPatch) -> list[str]:
    from cnnlab.data import decode

    mp.setattr(decode, "MAX_PIXELS", 500)  # cnnlab's limit; Pillow's error threshold is twice its own
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ctx.write("tree/red/big.png", png(size=(64, 64)))
    return ctx.inspect(ctx.tree)


def torch_pickle(ctx: Ctx, zipped: bool = True) -> list[str]:
    run = ctx.done
    state = {"w": torch.zeros(2)}
    torch.save(state, run / "model.safetensors", _use_new_zipfile_serialization=zipped)
    return ["predict", str(run), str(ctx.tree / "red" / "000.png")]


def damage(ctx: Ctx, run: str, name: str, data: str | bytes | None) -> Path:
    folder = ctx.copy(run)
    p = folder / name
    if data is None:
        p.unlink()
    else:
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return folder


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def state_json(folder: Path) -> Path:
    return folder / "state" / "train_state.json"


def _missing_tensors(ctx: Ctx) -> list[str]:
    for f in (ctx.partial / "state").glob("train_state-e*.safetensors"):
        f.unlink()
    return ["train", "--resume", str(ctx.partial), "--no-progress"]


def _corrupt_tensors(ctx: Ctx) -> list[str]:
    for f in (ctx.partial / "state").glob("train_state-e*.safetensors"):
        truncate(f, 100)
    return ["train", "--resume", str(ctx.partial), "--no-progress"]


def _truncated_state(ctx: Ctx) -> list[str]:
    truncate(state_json(ctx.partial), 30)
    return ["train", "--resume", str(ctx.partial), "--no-progress"]


def _card(ctx: Ctx, card: object) -> list[str]:
    run = damage(ctx, "done", "model.json", json.dumps(card))
    return ["predict", str(run), str(ctx.tree / "red" / "000.png")]


def _other_model_weights(ctx: Ctx) -> list[str]:
    from safetensors.torch import save_file

    save_file({"head.classifier.weight": torch.zeros(7, 8)}, str(ctx.done / "model.safetensors"))
    return ["evaluate", str(ctx.done)]


Setup = Callable[..., list[str]]
C = pytest.param

CASES: list = [
    # ------------------------------------------------------------------ data: folders and images
    C(lambda c: c.inspect(c.tmp / "nope"), ["no such file or folder"], id="data-missing-path"),
    C(lambda c: c.inspect(c.write("tree/red/bad.jpg", b"\xff\xd8\xff\xe0 stops") and c.tree),
      ["bad.jpg", "--skip-bad"], id="data-corrupt-jpeg"),
    C(lambda c: c.inspect(c.write("tree/red/empty.png", b"") and c.tree), ["empty.png", "empty file", "--skip-bad"],
      id="data-empty-png"),
    C(lambda c: c.inspect(c.write("tree/red/half.png", png()[:30]) and c.tree), ["half.png", "--skip-bad"],
      id="data-truncated-png"),
    C(lambda c: c.inspect(c.write("tree/red/text.png", "hello, not an image") and c.tree),
      ["text.png", "not an image"], id="data-text-as-png"),
    C(dangling, ["gone.png", "broken symbolic link"], id="data-dangling-symlink"),
    C(bomb, ["big.png", "4,096 pixels", "limit of 500", "decompression bomb"], id="data-decompression-bomb"),
    C(lambda c: c.inspect(write_tree(c.tmp / "one", classes=("cat",))), ["need at least two classes", "'cat'"],
      id="data-one-class"),
    C(lambda c: c.inspect((c.tree / "purple").mkdir() or c.tree), ["'purple'", "holds no images"],
      id="data-empty-class-folder"),
    C(lambda c: c.inspect((c.tmp / "void" / "a").mkdir(parents=True) or c.tmp / "void"), ["found no images"],
      id="data-no-images"),
    C(lambda c: c.inspect(c.write("tree/red/wide.png", png(size=(20, 16))) and c.tree),
      ["different sizes", "--image-size"], id="data-mixed-sizes"),
    C(lambda c: c.inspect(write_tree(c.tmp / "s" / "test") and c.tmp / "s"), ["no train/ folder"],
      id="data-splits-without-train"),
    C(lambda c: c.inspect(write_tree(c.tmp / "s" / "train") and write_tree(c.tmp / "s" / "test", 2,
                                                                          ("blue", "pink")) and c.tmp / "s"),
      ["'pink'", "train split lacks"], id="data-test-class-unknown"),
    C(lambda c: c.inspect(c.tree, "--image-size", "0"), ["--image-size", ">= 8", "got 0"], id="data-image-size-0"),
    C(lambda c: c.inspect(c.write("notes.txt", "hi")), ["not a folder, an archive"], id="data-plain-file"),
    # ------------------------------------------------------------------ archives
    C(lambda c: c.inspect(zip_of(c, {**good_members(), "/x.png": png()})), ["/x.png", "absolute or '..'"],
      id="zip-absolute-member"),
    C(lambda c: c.inspect(zip_of(c, {**good_members(), "red/../../x.png": png()})), ["../x.png", "'..'"],
      id="zip-dotdot-member"),
    C(lambda c: c.inspect(tar_of(c, {**good_members(), "/abs/x.png": png()})), ["/abs/x.png", "absolute"],
      id="tar-absolute-member"),
    C(lambda c: c.inspect(tar_of(c, {**good_members(), "../x.png": png()})), ["../x.png", "refused"],
      id="tar-dotdot-member"),
    C(lambda c: c.inspect(c.write("cut.zip", zip_of(c, good_members(), "full.zip").read_bytes()[:200])),
      ["cut.zip", "cannot read archive"], id="zip-truncated"),
    C(lambda c: c.inspect(c.write("junk.zip", b"this is no zip file at all" * 10)), ["junk.zip", "archive"],
      id="zip-not-a-zip"),
    C(lambda c: c.inspect(c.write("junk.tar.gz", b"\x1f\x8b\x08\x00 broken gzip" * 10)), ["junk.tar.gz", "archive"],
      id="targz-corrupt"),
    C(lambda c: c.inspect(zip_of(c, {**good_members(), "red/bad.png": b"\x89PNG broken"})), ["red/bad.png"],
      id="zip-corrupt-member"),
    C(lambda c: c.inspect(zip_of(c, {"cat/1.png": png(), "cat/2.png": png(seed=1)})), ["need at least two classes"],
      id="zip-one-class"),
    C(lambda c: c.inspect(zip_of(c, {"README.txt": b"hi"})), ["found no images"], id="zip-no-images"),
    # ------------------------------------------------------------------ CSV files
    C(lambda c: c.inspect(csv_file(c, csv_rows(header="picture{sep}label"))), ["image path column", "--image-column"],
      id="csv-no-image-column"),
    C(lambda c: c.inspect(csv_file(c, csv_rows(header="image{sep}kind"))), ["label column", "--label-column"],
      id="csv-no-label-column"),
    C(lambda c: c.inspect(csv_file(c, csv_rows(";"))), ["semicolons", "comma-separated"], id="csv-semicolons"),
    C(lambda c: c.inspect(csv_file(c, csv_rows("\t"))), ["tabs", "comma-separated"], id="csv-tabs"),
    C(lambda c: c.inspect(csv_file(c, csv_rows() + "tree/red/404.png,red\n")), ["row 10", "404.png"],
      id="csv-missing-image"),
    C(lambda c: c.inspect(csv_file(c, csv_rows() + "tree/red/000.png,\n")), ["row 10", "empty 'label'"],
      id="csv-empty-label"),
    C(lambda c: c.inspect(csv_file(c, "image,label,split\ntree/red/000.png,red,holdout\n")),
      ["'holdout'", "train, val, test"], id="csv-bad-split"),
    C(lambda c: c.inspect(csv_file(c, "image,label\n")), ["has no rows"], id="csv-header-only"),
    C(lambda c: c.inspect(csv_file(c, "image,label\ntree/red/000.png,red\ntree/red/001.png,red\n")),
      ["need at least two classes"], id="csv-one-class"),
    C(lambda c: c.inspect(csv_file(c, csv_rows()), "--label-column", "species"), ["no column 'species'"],
      id="csv-named-column-missing"),
    # ------------------------------------------------------------------ config files
    C(lambda c: c.config("name: x\ntrain:\n  epochs: [3\n  lr: 2\n"), ["exp.yaml:4:5", "not valid YAML"],
      id="config-yaml-syntax"),
    C(lambda c: c.config("train:\n  epochz: 3\n"), ["train.epochz", "did you mean 'epochs'"], id="config-typo-key"),
    C(lambda c: c.config("- a\n- b\n"), ["mapping at the top level"], id="config-a-list"),
    C(lambda c: c.config("train:\n  optimizer:\n    lr: -0.01\n"), ["train.optimizer.lr", "> 0", "-0.01"],
      id="config-negative-lr"),
    C(lambda c: c.config("train:\n  optimizer:\n    lr: .nan\n"), ["train.optimizer.lr", "finite", "nan"],
      id="config-nan-lr"),
    C(lambda c: c.config("train:\n  batch_size: 0\n"), ["train.batch_size", ">= 1"], id="config-batch-size-0"),
    C(lambda c: c.config("model:\n  head:\n    dropout: 1.5\n"), ["model.head.dropout", "[0, 1)", "1.5"],
      id="config-dropout-1.5"),
    C(lambda c: c.config("train:\n  epochs: -1\n"), ["train.epochs", ">= 1", "-1"], id="config-epochs-negative"),
    C(lambda c: c.config("train:\n  epochs: many\n"), ["train.epochs", "expected an integer"], id="config-epochs-word"),
    C(lambda c: c.config("data:\n  validation_split: 1.0\n"), ["data.validation_split", "[0, 1)"],
      id="config-split-1"),
    C(lambda c: c.config("train:\n  optimizer:\n    name: lion\n"), ["'lion'"], id="config-unknown-optimizer"),
    C(lambda c: c.config("extends: base.yaml\n"), ["config file not found", "base.yaml"], id="config-extends-missing"),
    C(lambda c: c.write("base.yaml", "extends: exp.yaml\n") and c.config("extends: base.yaml\n"),
      ["loops back"], id="config-extends-loop"),
    C(lambda c: c.train("--config", str(c.write("bin.yaml", b"\xff\xfe\x00\x81binary"))), ["bin.yaml", "UTF-8"],
      id="config-binary-file"),
    C(lambda c: c.train("--config", str(c.tmp / "none.yaml")), ["config file not found"], id="config-missing"),
    C(lambda c: ["study", "run", str(c.write("study.yaml", "families: [\n  - a: b: c\n"))], ["study.yaml:2:", "not valid YAML"],
      id="study-yaml-syntax"),
    C(lambda c: c.inspect(c.tree, "--image-size", "4"), ["--image-size", ">= 8", "got 4"], id="data-image-size-4"),
    # ------------------------------------------------------------------ flags
    C(lambda c: c.train("--data", str(c.tree), "--epochs", "0"), ["train.epochs", "--epochs", "got 0"],
      id="flag-epochs-0"),
    C(lambda c: c.train("--data", str(c.tree), "--epochs", "-2"), ["--epochs", "got -2"], id="flag-epochs-negative"),
    C(lambda c: c.train("--data", str(c.tree), "--batch-size", "-4"), ["--batch-size", "got -4"],
      id="flag-batch-size-negative"),
    C(lambda c: c.train("--data", str(c.tree), "--max-train-samples", "0"), ["--max-train-samples"],
      id="flag-max-train-samples-0"),
    C(lambda c: c.train("--data", str(c.tree), "--image-size", "0"), ["--image-size", ">= 8"], id="flag-image-size-0"),
    C(lambda c: c.train("--data", str(c.tree), "--target-accuracy", "2"), ["--target-accuracy", "[0, 1]"],
      id="flag-target-accuracy-2"),
    C(lambda c: c.train("--data", str(c.tree), "--seed", "-1"), ["--seed", ">= 0"], id="flag-seed-negative"),
    C(lambda c: c.train("--data", str(c.tree), "--set", "train.optimizer.lr=-1"), ["train.optimizer.lr"],
      id="flag-set-negative-lr"),
    C(lambda c: c.train("--config", "a.yaml", "--preset", "fast"), ["--config or --preset"], id="flag-config-and-preset"),
    C(lambda c: c.train("--discard-state"), ["--discard-state goes with --resume"], id="flag-discard-without-resume"),
    C(lambda c: ["train", "--data", str(c.tree), "--run-dir", str(c.write("afile", "x"))],
      ["--run-dir", "exists and is not a folder"], id="flag-run-dir-is-a-file"),
    C(lambda c: ["train", "--data", str(c.tree), "--run-dir", str(c.write("afile", "x") / "run")],
      ["is a file, not a folder"], id="flag-run-dir-under-a-file"),
    C(lambda c: ["predict", str(c.done), str(c.tree / "red" / "000.png"), "--top-k", "0"], ["--top-k", ">= 1", "got 0"],
      id="flag-top-k-0"),
    C(lambda c: ["predict", str(c.done), str(c.tree / "red" / "000.png"), "--top-k", "-1"], ["--top-k", "got -1"],
      id="flag-top-k-negative"),
    C(lambda c: (c.tmp / "nothing").mkdir() or ["predict", str(c.done), str(c.tmp / "nothing")],
      ["nothing", "no images in this folder"], id="predict-empty-folder"),
    C(lambda c: ["predict", str(c.done), str(c.tmp / "cat.jpg")], ["cat.jpg", "no such file or folder"],
      id="predict-missing-image"),
    # ------------------------------------------------------------------ run folders
    C(lambda c: ["evaluate", str(c.tmp / "runs" / "gone")], ["gone", "no such folder"], id="run-missing-evaluate"),
    C(lambda c: ["train", "--resume", str(c.tmp / "gone")], ["gone", "no such folder"], id="run-missing-resume"),
    C(lambda c: ["predict", str(c.tmp / "gone"), str(c.tree / "red" / "000.png")], ["no such folder"],
      id="run-missing-predict"),
    C(lambda c: ["evaluate", str(c.write("afile", "x"))], ["afile", "not a folder"], id="run-is-a-file"),
    C(lambda c: ["evaluate", str(c.tree)], ["is this a cnnlab run directory?"], id="run-not-a-run"),
    C(lambda c: ["train", "--resume", str(damage(c, "partial", "config.yaml", "train: [1\n"))],
      ["config.yaml:", "not valid YAML"], id="run-resume-config-bad-yaml"),
    C(lambda c: ["train", "--resume", str(damage(c, "partial", "config.yaml", "train:\n  epochs: 0\n"))],
      ["config.yaml", "train.epochs", ">= 1"], id="run-resume-config-bad-value"),
    C(lambda c: ["evaluate", str(damage(c, "done", "config.yaml", "model: {arch: [\n"))],
      ["config.yaml:", "not valid YAML"], id="run-evaluate-config-bad-yaml"),
    C(lambda c: ["train", "--resume", str(damage(c, "done", "metrics.json", "{trunc"))],
      ["metrics.json", "not valid JSON"], id="run-resume-finished-metrics-corrupt"),
    C(_truncated_state, ["train_state.json", "corrupt training state", "--discard-state"],
      id="run-resume-state-truncated"),
    C(lambda c: state_json(c.partial).write_text("[]") and ["train", "--resume", str(c.partial)],
      ["train_state.json", "corrupt"], id="run-resume-state-not-a-mapping"),
    C(_missing_tensors, ["train_state.json", "which is missing", "--discard-state"], id="run-resume-tensors-missing"),
    C(_corrupt_tensors, ["train_state-e", "corrupt training state"], id="run-resume-tensors-corrupt"),
    C(lambda c: ["predict", str(damage(c, "done", "model.json", "{not json")), str(c.tree / "red" / "000.png")],
      ["model.json", "not a valid model card"], id="run-card-not-json"),
    C(lambda c: _card(c, {"format": "cnnlab-model/1"}), ["model.json", "missing 'spec'"], id="run-card-no-spec"),
    C(lambda c: _card(c, {"spec": {"arch": 5}}), ["model.json", "not a valid model card"], id="run-card-arch-number"),
    C(lambda c: _card(c, {"format": "cnnlab-model/1", "spec": {"arch": "cifar_fastnet", "bogus": 1}}),
      ["model.json", "not a valid model card"], id="run-card-unknown-field"),
    C(lambda c: _card(c, {"format": "cnnlab-model/9", "spec": {"arch": "cifar_fastnet"}}),
      ["model.json", "unknown model card format"], id="run-card-unknown-format"),
    C(lambda c: ["predict", str(damage(c, "done", "model.json", b"\xff\xfe\x81")), str(c.tree / "red" / "000.png")],
      ["model.json", "not a valid model card"], id="run-card-binary"),
    C(lambda c: truncate(c.done / "model.safetensors", 60) or ["evaluate", str(c.done)],
      ["model.safetensors", "not a readable safetensors file"], id="weights-truncated"),
    C(lambda c: torch_pickle(c), ["model.safetensors", "PyTorch pickle, refused"], id="weights-torch-zip-pickle"),
    C(lambda c: torch_pickle(c, zipped=False), ["PyTorch pickle, refused"], id="weights-torch-legacy-pickle"),
    C(lambda c: ["evaluate", str(damage(c, "done", "model.safetensors", None))], ["weights file not found"],
      id="weights-missing"),
    C(lambda c: ["evaluate", str(c.done), "--weights", "best"], ["best.safetensors", "not found"],
      id="weights-best-missing"),
    C(_other_model_weights, ["model.safetensors", "does not fit the model"], id="weights-other-model"),
    C(lambda c: ["evaluate", str(damage(c, "done", "model.safetensors", b""))], ["model.safetensors"],
      id="weights-empty-file"),
    # ------------------------------------------------------------------ training that diverges
    C(lambda c: c.train("--config", str(c.write("sgd.yaml", yaml.safe_dump(tiny_cfg(optimizer={"name": "sgd", "lr": 1e6})))),
                        "--data", str(c.tree), "--epochs", "2"), ["try a lower learning rate than 1e+06"],
      id="train-sgd-lr-1e6"),
]


@pytest.mark.parametrize(("setup", "needles"), CASES)
def test_bad_input(setup: Setup, needles: list[str], tmp_path: Path, runs, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    ctx = Ctx(tmp_path, runs)
    argv = setup(ctx, monkeypatch) if setup.__code__.co_argcount == 2 else setup(ctx)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.startswith("cnnlab: error: ")]
    assert len(lines) == 1, err
    assert len(err.strip().splitlines()) <= 3, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "newrun").exists() or "sgd.yaml" in " ".join(argv)  # refused before writing


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 60
