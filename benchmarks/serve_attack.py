"""Load test of `cnnlab serve` under attack, on loopback: good-request throughput and latency with
and without a flood of pixel bombs and garbage.

    python benchmarks/serve_attack.py [--seconds 8] [--good-clients 4] [--attackers 4]
                                      [--pythonpath OTHER_CHECKOUT/src]

Starts `cnnlab serve` (torch backend, an untrained tiny cifar_fastnet at 32 px, like
serve_bench.py --net tiny) in a subprocess on 127.0.0.1 only, then runs two phases of --seconds
each: (1) --good-clients threads sending one 32x32 PNG per request; (2) the same, while
--attackers threads send, in turn: 16 one-bit PNG bombs of 6300x6300 (5 kB each, 40 M pixels), 4
one-bit PNGs of 1990x1990 (just under the default 4 M-pixel limit: a real decode), garbage bytes
as a PNG, JSON nested 100,000 deep, and 65 base64 images. A probe asks /health every 50 ms.
Prints good requests/s, p50/p99 latency, /health p99 and max, and the attackers' status counts.
--pythonpath serves another checkout (e.g. main's src) for a before/after comparison; options it
does not know are left out. Everything is bounded: two phases of --seconds, a 30 s client timeout.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # loopback only, by design


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    if mode == "RGB":
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    else:
        Image.new(mode, size, 1).save(buf, "PNG")
    return buf.getvalue()


def tiny_run(folder: Path) -> Path:
    from cnnlab.config import HeadConfig, ModelConfig
    from cnnlab.models.io import save_model
    from cnnlab.models.registry import create_model

    cfg = ModelConfig(arch="cifar_fastnet", kwargs={"widths": [8, 16, 16], "depth": 1}, head=HeadConfig(pooling="max"))
    model = create_model(cfg, [f"class_{i}" for i in range(10)])
    return save_model(model.eval(), folder, {"data_image_size": 32})


def serve(run: Path, port: int, pythonpath: str | None, threads: int) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "cnnlab", "serve", str(run), "--host", HOST, "--port", str(port),
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"cnnlab serve exited: {proc.stderr.read().decode()[-1500:]}")
        try:
            httpx.get(f"http://{HOST}:{port}/health", timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("cnnlab serve did not start within 60 s")


def attacks() -> list[tuple[str, dict]]:
    bomb, near = png((6300, 6300), "1"), png((1990, 1990), "1")
    files = lambda blobs: {"files": [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]}  # noqa: E731
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("16 pixel bombs", files([bomb] * 16)),
        ("4 near-limit images", files([near] * 4)),
        ("garbage", files([os.urandom(4096)])),
        ("deep JSON", {"content": deep, "headers": {"content-type": "application/json"}}),
        ("65 base64 images", {"json": {"images": [base64.b64encode(b"x" * 100).decode()] * 65}}),
    ]


def phase(base: str, seconds: float, good_clients: int, attackers: int) -> dict:
    good = png((32, 32))
    stop = threading.Event()
    lat: list[float] = []
    errors: list[str] = []
    health: list[float] = []
    statuses: collections.Counter = collections.Counter()
    kinds = attacks() if attackers else []

    def good_client() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.post("/predict", files=[("files", ("x.png", good, "image/png"))])
                    ok = r.status_code == 200
                except httpx.HTTPError as exc:
                    ok, r = False, exc
                (lat.append(time.perf_counter() - t) if ok else errors.append(str(getattr(r, "status_code", r))))

    def attacker(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            j = i
            while not stop.is_set():
                name, kw = kinds[j % len(kinds)]
                j += 1
                try:
                    statuses[(name, c.post("/predict", **kw).status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[(name, type(exc).__name__)] += 1

    def prober() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    c.get("/health")
                    health.append(time.perf_counter() - t)
                except httpx.HTTPError:
                    health.append(float("inf"))
                time.sleep(0.05)

    threads = [threading.Thread(target=good_client) for _ in range(good_clients)]
    threads += [threading.Thread(target=attacker, args=(i,)) for i in range(attackers)]
    threads.append(threading.Thread(target=prober))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(40)
    wall = time.perf_counter() - t0
    ms = sorted(x * 1e3 for x in lat) or [float("nan")]
    hs = sorted(x * 1e3 for x in health) or [float("nan")]
    return {"good": len(lat), "errors": len(errors), "rps": len(lat) / wall, "p50": statistics.median(ms),
            "p99": ms[int(0.99 * (len(ms) - 1))], "health_p99": hs[int(0.99 * (len(hs) - 1))], "health_max": hs[-1],
            "probes": len(hs), "statuses": dict(statuses), "first_errors": errors[:3]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase (default 8)")
    p.add_argument("--good-clients", type=int, default=4)
    p.add_argument("--attackers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="server compute threads (default 1)")
    p.add_argument("--pythonpath", help="serve this checkout's src instead (before/after comparisons)")
    args = p.parse_args()
    from cnnlab.utils.hardware import machine_summary

    print(f"machine: {machine_summary()}; load average {os.getloadavg()[0]:.2f} at start")
    run = tiny_run(Path(tempfile.mkdtemp(prefix="cnnlab-attack-")) / "run")
    port = free_port()
    proc = serve(run, port, args.pythonpath, args.threads)
    rows = []
    try:
        base = f"http://{HOST}:{port}"
        phase(base, 1.0, args.good_clients, 0)  # warm-up
        for name, attackers in (("no attack", 0), (f"{args.attackers} attackers", args.attackers)):
            r = phase(base, args.seconds, args.good_clients, attackers)
            rows.append((name, r))
            print(f"{name}: {r['good']:,} good requests ({r['errors']} failed), {r['rps']:.0f}/s, p50 {r['p50']:.1f} ms, "
                  f"p99 {r['p99']:.1f} ms; /health p99 {r['health_p99']:.1f} ms, max {r['health_max']:.1f} ms "
                  f"({r['probes']} probes)" + (f"; first failures: {r['first_errors']}" if r["errors"] else ""), flush=True)
            for (kind, status), n in sorted(r["statuses"].items(), key=str):
                print(f"    attack {kind}: {n} x {status}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"\nserver: {args.pythonpath or 'this checkout'}; tiny cifar_fastnet at 32 px, torch backend, "
          f"{args.threads} thread(s); {args.good_clients} good clients; {args.seconds:g} s per phase; load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("| phase | good requests/s | good p50 ms | good p99 ms | failed good | /health p99 ms | /health max ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['health_p99']:.1f} | "
              f"{r['health_max']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
