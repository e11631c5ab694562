"""Load test of `cnnlab serve` on loopback: requests/s and latency, with and without micro-batching.

    python benchmarks/serve_bench.py [--requests 10000] [--clients 32] [--backend onnxruntime]
                                     [--run-dir RUN] [--workers 1]

Starts `cnnlab serve` in a subprocess on 127.0.0.1 (never another address), once with
micro-batching (--max-batch 32, --batch-window-ms 2) and once without (--max-batch 1), and
sends --requests POST /predict requests, each one 32x32 PNG as multipart field `files`, from
--clients concurrent keep-alive connections (a small asyncio HTTP/1.1 client in this process,
so the load generator shares the machine's cores with the server). Prints errors (any status
other than 200 or a dropped connection), p50/p99 latency, requests/s and the batching
statistics the server reports at /health. Without --run-dir, an untrained fast-preset
cifar_fastnet (32 px, 10 classes) is saved and served: speed does not depend on weight values.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # loopback only, by design


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request_bytes(port: int, image: bytes) -> bytes:
    boundary = "cnnlabbenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict?top_k=5 HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def client(port: int, payload: bytes, count: int, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for _ in range(count):
            t = time.perf_counter()
            writer.write(payload)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if b" 200 " not in status or b'"predictions"' not in body:
                errors.append(status.decode(errors="replace").strip())
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"connection: {exc}")
    finally:
        writer.close()


async def load(port: int, payload: bytes, total: int, clients: int) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    t0 = time.perf_counter()
    await asyncio.gather(*(client(port, payload, n, latencies, errors) for n in per if n))
    return latencies, errors, time.perf_counter() - t0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def serve(run: Path, port: int, args: argparse.Namespace, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cnnlab", "serve", str(run), "--host", HOST, "--port", str(port),
           "--backend", args.backend, "--max-batch", str(max_batch), "--batch-window-ms", str(args.window_ms),
           "--workers", str(args.workers)] + (["--threads", str(args.threads)] if args.threads else []) + (["--onnx", args.onnx] if args.onnx else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"cnnlab serve exited: {proc.stderr.read().decode()[-1500:]}")
        try:
            get_json(f"http://{HOST}:{port}/health")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("cnnlab serve did not start within 60 s")


def default_run(folder: Path, widths: list[int]) -> Path:
    import torch

    from cnnlab.config import HeadConfig, ModelConfig
    from cnnlab.export.onnx import synthetic_images
    from cnnlab.models.io import save_model
    from cnnlab.models.registry import create_model

    cfg = ModelConfig(arch="cifar_fastnet", kwargs={"widths": widths, "depth": 2}, head=HeadConfig(pooling="max"))
    model = create_model(cfg, [f"class_{i}" for i in range(10)])
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(synthetic_images(16, 32)).permute(0, 3, 1, 2))
    return save_model(model.eval(), folder, {"data_image_size": 32})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="onnxruntime")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, help="compute threads per server worker (default: cores / workers)")
    p.add_argument("--int8", action="store_true", help="serve the run exported with --quantize int8")
    p.add_argument("--window-ms", type=float, default=2.0)
    p.add_argument("--run-dir", help="a trained run to serve (default: an untrained fast-preset net)")
    p.add_argument("--net", choices=["fast", "tiny"], default="fast",
                   help="without --run-dir: the fast preset's net (64/256/256, ~0.3 GFLOP per image) or a tiny "
                        "one (8/16/16), which shows what the HTTP stack alone can do")
    p.add_argument("--modes", default="batched,unbatched", help="batched (max-batch 32), unbatched (max-batch 1)")
    args = p.parse_args()
    from cnnlab.utils.hardware import machine_summary

    print(f"machine: {machine_summary()}; load average {os.getloadavg()[0]:.2f} at start")
    run = Path(args.run_dir) if args.run_dir else default_run(
        Path(tempfile.mkdtemp(prefix="cnnlab-serve-")) / "run", [64, 256, 256] if args.net == "fast" else [8, 16, 16])
    args.onnx = None
    if args.int8:
        from cnnlab.export.onnx import export_onnx

        args.onnx = export_onnx(run, quantize="int8", parity_count=0)["path"]
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    rows = []
    for mode in args.modes.split(","):
        max_batch = 32 if mode == "batched" else 1
        port = free_port()
        proc = serve(run, port, args, max_batch)
        try:
            payload = request_bytes(port, buf.getvalue())
            asyncio.run(load(port, payload, min(500, args.requests), args.clients))  # warm-up
            before = get_json(f"http://{HOST}:{port}/health")["batching"]
            load_before = os.getloadavg()[0]
            lat, errors, seconds = asyncio.run(load(port, payload, args.requests, args.clients))
            after = get_json(f"http://{HOST}:{port}/health")["batching"]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        batches = after["batches"] - before["batches"]
        mean_batch = (after["images"] - before["images"]) / batches if batches else 0.0
        lat_ms = sorted(x * 1e3 for x in lat)
        row = {"mode": f"{mode} (max-batch {max_batch})", "requests": len(lat), "errors": len(errors),
               "p50_ms": statistics.median(lat_ms), "p99_ms": lat_ms[int(0.99 * (len(lat_ms) - 1))],
               "rps": len(lat) / seconds, "mean_batch": mean_batch, "load": f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"}
        rows.append(row)
        print(f"{row['mode']}: {row['requests']:,} requests, {row['errors']} errors, p50 {row['p50_ms']:.1f} ms, "
              f"p99 {row['p99_ms']:.1f} ms, {row['rps']:.0f} requests/s, mean batch {mean_batch:.1f}, "
              f"load average {row['load']}" + (f"; first errors: {errors[:3]}" if errors else ""), flush=True)
    print(f"\n{args.run_dir or args.net + ' net'}, {'int8 ONNX' if args.int8 else args.backend} backend, {args.workers} worker(s), {args.clients} clients, one 32x32 PNG per request")
    print("| mode | requests | errors | p50 ms | p99 ms | requests/s | mean batch | load average |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['requests']:,} | {r['errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['rps']:.0f} | {r['mean_batch']:.1f} | {r['load']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
