"""Peak memory against data-set size (issue 23): decode to disk and train one epoch from memory maps.

Builds synthetic image-folder archives (``.tar``, 10 classes, 64 x 64 JPEGs: a class colour plus
noise; a pool of encodings is reused, so writing 200,000 members takes seconds) of each --sizes,
then for each runs, in a fresh process with a fresh CNNLAB_HOME:

    load_source(archive)   -> decode images/s (a cache miss: decoding into the cache)
    api.train(...)         -> one epoch of a small net (cifar_fastnet at widths 8/8/8 on the images resized to 16 px
                              inside the model, no augmentation: the cores are shared; standard recipe,
                              batch 256, 5% held out), training images/s

and prints the process's peak resident memory (VmHWM: what ``getrusage`` reports) and its peak
anonymous memory (RssAnon, sampled every 20 ms: memory that is not file pages the kernel can
drop). With --old-src (e.g. /work/main/src) the same runs use that checkout's code (the
in-memory loaders) for comparison. With --cgroup-gb the last size also runs inside a cgroup-v1
memory group limited to that many GB (decoding and training), where the machine allows one
(root, /sys/fs/cgroup/memory).

    PYTHONPATH=src python benchmarks/memory_scale.py --sizes 20000 200000 --old-src /work/main/src \\
        --cgroup-gb 1.0 --out /tmp/memscale
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

SIZE = 64
CLASSES = 10
POOL = 200  # distinct encodings per class


def make_archive(path: Path, n: int) -> Path:
    """A .tar of ``n`` 64-px JPEGs in ``<class>/<i>.jpg`` folders (written once, then reused)."""
    if path.is_file():
        return path
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for c in range(CLASSES):
        base = rng.integers(40, 215, size=3)
        enc = []
        for _ in range(POOL):
            px = np.clip(base + rng.integers(-40, 41, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, "JPEG", quality=90)
            enc.append(buf.getvalue())
        pool.append(enc)
    tmp = path.with_suffix(".part")
    t0 = time.perf_counter()
    with tarfile.open(tmp, "w") as tf:
        for i in range(n):
            c = i % CLASSES
            data = pool[c][(i // CLASSES) % POOL]
            info = tarfile.TarInfo(f"class{c}/{i:07d}.jpg")
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    print(f"wrote {path} ({n:,} images, {path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return path


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def child(archive: str, run_dir: str) -> None:
    """One measured run (in its own process); prints one JSON line."""
    peak = {"anon": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _status().get("RssAnon", 0))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    import torch

    from cnnlab import api
    from cnnlab.data.sources import load_source

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    bundle = load_source(archive)
    decode_s = time.perf_counter() - t0
    n = len(bundle.train)
    del bundle
    cfg = {"name": "memscale", "seed": 0, "data": {"validation_split": 0.05},
           "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                     "input_size": 16, "resize_mode": "nearest", "kwargs": {"widths": [8, 8, 8]}},
           "train": {"epochs": 1, "batch_size": 256, "precision": "fp32", "augment": {"crop_padding": 0, "flip": False},
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}}
    t1 = time.perf_counter()
    run = api.train(cfg, data=archive, run_dir=run_dir, progress=False, log=lambda s: None, evaluate_test=False)
    train_wall = time.perf_counter() - t1
    stop.set()
    h = run.fit.history[0]
    st = _status()
    print(json.dumps({"images": n, "decode_s": decode_s, "decode_ips": n / decode_s,
                      "train_ips": h["images_per_second"], "epoch_s": h["seconds"], "train_wall_s": train_wall,
                      "val_accuracy": h.get("val_accuracy"), "peak_rss": st["VmHWM"],
                      "peak_anon": max(peak["anon"], st.get("RssAnon", 0))}), flush=True)


def run_child(archive: Path, src: str, home: Path, run_dir: Path, cgroup: Path | None = None,
              workers: str | None = None) -> dict:
    # one compute thread: on shared cores two OpenMP threads stall whenever another job takes a core
    env = dict(os.environ, PYTHONPATH=src, CNNLAB_HOME=str(home), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if workers is not None:
        env["CNNLAB_DECODE_WORKERS"] = workers
    cmd = [sys.executable, __file__, "--child", str(archive), "--run-dir", str(run_dir)]
    if cgroup is not None:  # join the group first, then become the benchmark
        cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1],
                "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--out", default="/tmp/cnnlab_memscale")
    ap.add_argument("--old-src", help="a checkout's src/ with the in-memory loaders, for comparison")
    ap.add_argument("--old-max", type=int, default=20000, help="largest size to run the old code on")
    ap.add_argument("--cgroup-gb", type=float, help="also run the largest size under this memory limit")
    ap.add_argument("--serial", action="store_true", help="also decode the first size in one process")
    ap.add_argument("--child")
    ap.add_argument("--run-dir")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.run_dir)
        return
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores "
          f"(shared with other jobs), python {platform.python_version()}", flush=True)
    results = []
    homes: dict[int, Path] = {}

    def show(label: str, n: int, r: dict) -> None:
        results.append({"code": label, "n": n, **r})
        if "error" in r:
            print(f"{label:>10} {n:>8,}  FAILED: {r['error']}", flush=True)
            return
        print(f"{label:>10} {n:>8,}  decode {r['decode_ips']:7,.0f} img/s ({r['decode_s']:6.1f} s)  "
              f"train {r['train_ips']:6,.0f} img/s  peak RSS {r['peak_rss'] / 1e6:7,.0f} MB  "
              f"peak anon {r['peak_anon'] / 1e6:7,.0f} MB", flush=True)

    for n in args.sizes:
        archive = make_archive(out / f"synthetic_{n}.tar", n)
        tag = f"{n}"
        homes[n] = out / f"home_new_{tag}_{time.time_ns()}"
        show("new", n, run_child(archive, src, homes[n], out / f"run_new_{tag}"))
        if args.serial and n == args.sizes[0]:
            show("new 1 proc", n, run_child(archive, src, out / f"home_serial_{time.time_ns()}", out / "run_serial",
                                            workers="0"))
        if args.old_src and n <= args.old_max:
            show("old", n, run_child(archive, args.old_src, out / f"home_old_{tag}_{time.time_ns()}",
                                     out / f"run_old_{tag}"))
    new = [r for r in results if r["code"] == "new" and "error" not in r]
    if len(new) >= 2:
        a, b = new[0], new[-1]
        decoded = (b["n"] - a["n"]) * SIZE * SIZE * 3
        grew = b["peak_rss"] - a["peak_rss"]
        print(f"peak RSS grew {grew / 1e6:,.0f} MB from {a['n']:,} to {b['n']:,} images; the decoded data grew "
              f"{decoded / 1e6:,.0f} MB; bound (10%): {decoded * 0.1 / 1e6:,.0f} MB -> "
              f"{'PASS' if grew <= decoded * 0.1 else 'FAIL'}", flush=True)
    if args.cgroup_gb:
        group = Path("/sys/fs/cgroup/memory") / f"cnnlab_memscale_{os.getpid()}"
        try:
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(int(args.cgroup_gb * 1e9)))
        except OSError as exc:
            print(f"no memory cgroup on this machine ({exc})", flush=True)
        else:
            n = args.sizes[-1]
            try:
                # a fresh cache: decoding and the epoch both run under the limit
                r = run_child(out / f"synthetic_{n}.tar", src, out / f"home_cg_{time.time_ns()}", out / "run_cg",
                              cgroup=group)
                r["cgroup_max_usage"] = int((group / "memory.max_usage_in_bytes").read_text())
                r["cgroup_failcnt"] = int((group / "memory.failcnt").read_text())
                show(f"cg {args.cgroup_gb:g}GB", n, r)
                if "error" not in r:
                    print(f"  inside a {args.cgroup_gb:g} GB memory cgroup (decoded data "
                          f"{n * SIZE * SIZE * 3 / 1e9:.2f} GB): cgroup peak {r['cgroup_max_usage'] / 1e9:.2f} GB "
                          f"(page cache included), limit hit {r['cgroup_failcnt']} times", flush=True)
            finally:
                with open(group / "cgroup.procs") as fh:
                    assert not fh.read().strip()
                group.rmdir()
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
