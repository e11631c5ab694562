"""The Python API refuses what the CLI refuses: a run_dir that is a file, top_k below 1."""

from __future__ import annotations

import pytest

from cnnlab import api
from cnnlab.errors import ConfigError


def test_train_refuses_a_run_dir_that_is_a_file(tiny_tree, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        api.train({"model": {"arch": "resnet18"}, "train": {"epochs": 1}}, data=str(tiny_tree), run_dir=f,
                  progress=False)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        api.train({"model": {"arch": "resnet18"}, "train": {"epochs": 1}}, data=str(tiny_tree),
                  run_dir=f / "run", progress=False)
    assert f.read_text() == "x"


@pytest.mark.parametrize("k", [0, -1])
def test_predict_refuses_top_k_below_one(tmp_path, k):
    with pytest.raises(ConfigError, match="top_k"):
        api.predict(tmp_path, [tmp_path / "x.png"], top_k=k)
