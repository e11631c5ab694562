"""`cnnlab cache list / clean`, the CNNLAB_CACHE_MAX_GB cap with LRU eviction over both caches,
and the sweep of temporary folders left by killed processes (issue 23)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from cnnlab.cli.main import main
from cnnlab.data import cache
from cnnlab.data.sources import load_source


def _entries(home):
    return sorted(p.name for p in (home / "decoded").iterdir() if not p.name.startswith("."))


def _age(entry_dir, days):
    t = time.time() - days * 86400
    os.utime(entry_dir / "meta.json", (t, t))


def test_list_shows_each_entry_with_size_last_use_and_source(make_tree, tmp_path, capsys):
    a = make_tree(tmp_path / "a", per_class=4)
    b = make_tree(tmp_path / "b", per_class=6)
    load_source(a)
    load_source(b)
    assert main(["cache", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["source"] for r in rows) == sorted([str(a), str(b)])
    by_source = {r["source"]: r for r in rows}
    assert by_source[str(a)]["images"] == 12 and by_source[str(b)]["images"] == 18
    # the pixel file alone is images x 16 x 16 x 3 bytes
    assert by_source[str(b)]["bytes"] >= 18 * 16 * 16 * 3
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert str(a) in out and "2 entries" in out and "CNNLAB_CACHE_MAX_GB" in out


def test_clean_older_than_and_all(make_tree, tmp_path, isolated_home, capsys):
    a = make_tree(tmp_path / "a", per_class=4)
    b = make_tree(tmp_path / "b", per_class=6)
    load_source(a)
    load_source(b)
    old = next(e.path for e in cache.list_entries() if e.source == str(a))
    _age(old, 40)
    assert main(["cache", "clean", "--older-than", "30d"]) == 0
    assert "deleted 1 entries" in capsys.readouterr().out
    assert [e.source for e in cache.list_entries()] == [str(b)]
    assert load_source(b).info["cache"] == "hit"
    assert main(["cache", "clean", "--all"]) == 0
    assert _entries(isolated_home) == []
    assert load_source(b).info["cache"] == "miss"


def test_a_bad_age_is_one_line_and_exit_2(capsys):
    assert main(["cache", "clean", "--older-than", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--older-than" in err and "soon" in err


def test_the_cap_evicts_the_least_recently_used_entry(make_tree, tmp_path, monkeypatch, isolated_home):
    trees = [make_tree(tmp_path / n, per_class=8) for n in "abc"]
    load_source(trees[0])
    size = cache.list_entries()[0].bytes
    monkeypatch.setenv("CNNLAB_CACHE_MAX_GB", str(2.5 * size / 1e9))  # room for two entries
    load_source(trees[1])
    _age(next(e.path for e in cache.list_entries() if e.source == str(trees[0])), 2)
    _age(next(e.path for e in cache.list_entries() if e.source == str(trees[1])), 1)
    assert load_source(trees[0]).info["cache"] == "hit"  # a is used again: b is now the oldest
    load_source(trees[2])
    assert sorted(e.source for e in cache.list_entries()) == sorted([str(trees[0]), str(trees[2])])


def test_the_cap_counts_the_feature_cache_too(make_tree, tmp_path, monkeypatch):
    load_source(make_tree(tmp_path / "a", per_class=8))
    feats = cache.features_root()
    feats.mkdir(parents=True)
    np.save(feats / ("f" * 32 + ".npy"), np.zeros((100, 200), np.float32))  # 80 kB of features
    t = time.time() - 86400
    os.utime(feats / ("f" * 32 + ".npy"), (t, t))  # used yesterday: the oldest entry
    kinds = {e.kind: e for e in cache.list_entries()}
    assert kinds["features"].images == 100 and kinds["features"].bytes > 80_000
    monkeypatch.setenv("CNNLAB_CACHE_MAX_GB", str(kinds["decoded"].bytes * 1.5 / 1e9))
    removed = cache.enforce_cap()
    assert [e.kind for e in removed] == ["features"] and [e.kind for e in cache.list_entries()] == ["decoded"]


def test_a_bad_cap_is_refused(monkeypatch, tiny_tree, capsys):
    monkeypatch.setenv("CNNLAB_CACHE_MAX_GB", "lots")
    assert main(["cache", "list"]) == 2
    assert "CNNLAB_CACHE_MAX_GB" in capsys.readouterr().err


def test_stale_temporary_folders_are_swept(tiny_tree, isolated_home):
    root = isolated_home / "decoded"
    root.mkdir(parents=True)
    dead = root / ".tmp-999999999-abc"  # no such process
    dead.mkdir()
    (dead / "train_x.npy").write_bytes(b"\0" * 100)
    alive = root / f".tmp-{os.getpid()}-xyz"  # this process is still decoding into it
    alive.mkdir()
    load_source(tiny_tree)
    assert not dead.exists() and alive.exists()
    old = time.time() - 2 * 86400
    os.utime(alive, (old, old))  # ... but nothing has written there for two days
    assert main(["cache", "clean"]) == 0
    assert not alive.exists() and len(_entries(isolated_home)) == 1


def test_the_priors_history_is_listed_and_never_cleaned(make_tree, tmp_path, isolated_home, capsys):
    from cnnlab.autofit import history

    load_source(make_tree(tmp_path / "a", per_class=4))
    record = {"kind": "frozen", "width": None, "per_class": 4, "epochs": 3, "num_classes": 3, "image_side": 16,
              "actual_val_accuracy": 0.9, "balanced": False}
    assert history.append([record, record])
    assert main(["cache", "list"]) == 0
    assert f"priors history: 2 records in {isolated_home / 'priors' / 'history.jsonl'}" in capsys.readouterr().out
    assert main(["cache", "clean", "--all"]) == 0
    assert _entries(isolated_home) == [] and len(history.load()) == 2
