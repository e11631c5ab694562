"""The README's "A tour of the Python API" runs as written, on a tiny folder of PNGs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("timm")

README = Path(__file__).resolve().parents[2] / "README.md"
COLOURS = {"cat": (200, 120, 40), "dog": (40, 90, 200)}


def tour_code() -> str:
    text = README.read_text()
    section = text[text.index("## A tour of the Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python tour has no ```python block"
    return match.group(1)


def _write_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for name, colour in COLOURS.items():
            (root / "my_images" / split / name).mkdir(parents=True)
            for i in range(n):
                px = np.clip(np.array(colour) + rng.integers(-30, 31, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / "my_images" / split / name / f"{i}.png")
    Image.fromarray(np.full((20, 24, 3), COLOURS["cat"], np.uint8)).save(root / "cat.jpg")


@pytest.mark.usefixtures("one_thread")
def test_the_readme_python_tour_runs(tmp_path, monkeypatch, capsys):
    _write_images(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(tour_code(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    run, predictor = namespace["run"], namespace["predictor"]
    assert run.metrics["test"]["count"] == 8 and (tmp_path / run.run_dir / "model.json").is_file()
    assert predictor.class_names == ["cat", "dog"]
    out = capsys.readouterr().out
    assert "'label': 'cat'" in out or "'label': 'dog'" in out  # cnnlab.predict printed its top-k
