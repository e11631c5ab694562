"""Greedy model soup (Wortsman et al. 2022) on a tiny model whose checkpoints the test writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cnnlab.errors import ModelError
from cnnlab.training.soup import greedy_soup, soup_from_run


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _checkpoint(path, fill: float, batches: int):
    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = torch.full_like(v, fill) + torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape) / 7
        else:
            state[k] = torch.full_like(v, batches)
    save_file(state, str(path))
    return state


def _weight_score(model) -> float:
    """A score the test controls: higher when the first weight is closer to 1.5."""
    return -abs(float(model[0].weight.detach().flatten()[0]) - 1.5)


def test_two_checkpoints_average_exactly_and_integer_buffers_are_the_best_ones(tmp_path):
    a = _checkpoint(tmp_path / "a.safetensors", 1.0, batches=10)
    b = _checkpoint(tmp_path / "b.safetensors", 2.0, batches=99)
    model = _net()
    result = greedy_soup(model, [(tmp_path / "a.safetensors", 0.9), (tmp_path / "b.safetensors", 0.8)],
                         _weight_score, log=lambda s: None)
    assert result.used == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for k, v in result.state_dict.items():
        if v.is_floating_point():
            expected = ((a[k].double() + b[k].double()) / 2).float()
            assert torch.equal(v, expected), k
            assert torch.equal(model.state_dict()[k], expected), k  # the model holds the soup
        else:
            assert int(v) == 10, k  # num_batches_tracked: the best checkpoint's, not averaged
    assert result.individual == [0.9, 0.8]
    assert result.score == pytest.approx(_weight_score(model))
    # weight[0] of a is 1.0, of the soup 1.5: the soup scores 0 (the best possible)
    assert result.score == pytest.approx(0.0)


def test_a_checkpoint_that_lowers_the_score_is_left_out_and_used_keeps_the_order(tmp_path):
    a = _checkpoint(tmp_path / "a.safetensors", 1.0, 1)
    _checkpoint(tmp_path / "b.safetensors", 9.0, 2)  # average weight[0] 5.0: further from 1.5 -> left out
    c = _checkpoint(tmp_path / "c.safetensors", 2.0, 3)  # average with a: 1.5 -> kept
    calls = []

    def score(model):
        calls.append(float(model[0].weight.detach().flatten()[0]))
        return _weight_score(model)

    model = _net()
    cands = [(tmp_path / n, s) for n, s in (("a.safetensors", 0.9), ("b.safetensors", 0.85), ("c.safetensors", 0.8))]
    result = greedy_soup(model, cands, score, log=lambda s: None)
    assert result.used == [tmp_path / "a.safetensors", tmp_path / "c.safetensors"]
    assert calls == pytest.approx([1.0, 5.0, 1.5])  # a alone, a+b (rejected), a+c
    key = "0.weight"
    assert torch.equal(result.state_dict[key], ((a[key].double() + c[key].double()) / 2).float())
    assert result.score == pytest.approx(0.0)


def test_restore_leaves_the_models_own_weights_and_device_dtype(tmp_path):
    _checkpoint(tmp_path / "a.safetensors", 1.0, 1)
    _checkpoint(tmp_path / "b.safetensors", 2.0, 2)
    model = _net().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = greedy_soup(model, [(tmp_path / "a.safetensors", 1.0), (tmp_path / "b.safetensors", 0.5)],
                         _weight_score, restore=True, log=lambda s: None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model[0].weight.dtype == torch.float64
    assert result.state_dict["0.weight"].dtype == torch.float64
    assert float(result.state_dict["0.weight"].flatten()[0]) == pytest.approx(1.5)


def test_mismatched_keys_name_the_file(tmp_path):
    _checkpoint(tmp_path / "a.safetensors", 1.0, 1)
    save_file({"0.weight": torch.zeros(2, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match=r"other\.safetensors.*missing"):
        greedy_soup(_net(), [(tmp_path / "a.safetensors", 1.0), (tmp_path / "other.safetensors", 0.5)],
                    _weight_score, log=lambda s: None)
    save_file({k: torch.zeros(5) if v.dim() else v for k, v in _net().state_dict().items()},
              str(tmp_path / "shape.safetensors"))
    with pytest.raises(ModelError, match=r"shape\.safetensors.*shape"):
        greedy_soup(_net(), [(tmp_path / "shape.safetensors", 1.0)], _weight_score, log=lambda s: None)


@pytest.mark.parametrize("zipped", [True, False])
def test_a_pickle_is_refused(tmp_path, zipped):
    torch.save(_net().state_dict(), tmp_path / "p.safetensors", _use_new_zipfile_serialization=zipped)
    with pytest.raises(ModelError, match=r"p\.safetensors: this is a PyTorch pickle, refused"):
        greedy_soup(_net(), [(tmp_path / "p.safetensors", 1.0)], _weight_score, log=lambda s: None)


def test_soup_from_run_reads_the_checkpoint_index(tmp_path):
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    _checkpoint(ck / "epoch-003.safetensors", 1.0, 1)
    _checkpoint(ck / "epoch-002.safetensors", 9.0, 1)
    _checkpoint(ck / "epoch-004.safetensors", 2.0, 1)
    index = [{"epoch": 3, "path": "checkpoints/epoch-003.safetensors", "monitor": "val_accuracy", "value": 0.9},
             {"epoch": 2, "path": "checkpoints/epoch-002.safetensors", "monitor": "val_accuracy", "value": 0.8},
             {"epoch": 4, "path": "checkpoints/epoch-004.safetensors", "monitor": "val_accuracy", "value": 0.7}]
    (ck / "index.json").write_text(json.dumps(index))
    result = soup_from_run(tmp_path / "run", _net(), _weight_score, log=lambda s: None)
    assert [p.name for p in result.used] == ["epoch-003.safetensors", "epoch-004.safetensors"]
    assert result.individual == [0.9, 0.8, 0.7]

    (ck / "index.json").write_text("[]")
    with pytest.raises(ModelError, match=r"index\.json"):
        soup_from_run(tmp_path / "run", _net(), _weight_score, log=lambda s: None)
    with pytest.raises(ModelError, match=r"nowhere.*index\.json"):
        soup_from_run(tmp_path / "nowhere", _net(), _weight_score, log=lambda s: None)



def _module_with(names: list[str]) -> torch.nn.Module:
    m = torch.nn.Module()
    for i, name in enumerate(names):
        m.register_buffer(name, torch.full((2,), float(i)))
    return m


def test_a_safetensors_header_whose_length_starts_with_0x80_is_no_pickle(tmp_path):
    """A header of 8,576 bytes (a 3-class test_efficientnet with 8 head units has one) starts the
    file with byte 0x80, like a pickle's PROTO opcode: it loads, in the soup and in load_weights."""
    from cnnlab.models.io import load_weights

    path = tmp_path / "w.safetensors"
    for pad in range(1, 300):  # lengthen one name until the header's length is 0x80 modulo 256
        names = ["a" * pad, "b"]
        save_file(_module_with(names).state_dict(), str(path))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80 and path.read_bytes()[8:9] == b"{"
    model = _module_with(names)
    load_weights(model, path)  # not refused as a pickle
    result = greedy_soup(model, [(path, 1.0)], lambda m: 0.0, log=lambda s: None)
    assert result.used == [path] and torch.equal(result.state_dict["b"], torch.full((2,), 1.0))
