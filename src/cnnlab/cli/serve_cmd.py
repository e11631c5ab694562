"""cnnlab serve: a trained run behind HTTP (FastAPI + uvicorn), with a page at /."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a trained run over HTTP",
                       description="POST /predict (multipart 'files' or JSON base64 'images'), GET /health, "
                                   "GET /metadata, GET / (a page to try images), the OpenAPI schema at /openapi.json. "
                                   "See the README's 'Exposing the server' before binding to anything but loopback.")
    p.add_argument("run_dir", help="a run directory written by `cnnlab train`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model (default 1)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--weights", default="final", choices=["final", "best"])
    p.add_argument("--onnx", help="serve this ONNX file from `cnnlab export` (e.g. an int8 one); implies "
                                  "--backend onnxruntime (default: RUN_DIR/model.onnx, exported when missing)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a batch waits for more requests (default 2 ms)")
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call (1: no batching)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10 MB)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image, in pixels, read from its header before decoding (default: 64x the "
                        "model's input pixels, within 4M..16M)")
    p.add_argument("--max-request-pixels", type=int, default=None,
                   help="all the images of one request together, in pixels (default 4x --max-pixels)")
    p.add_argument("--max-images", type=int, default=64, help="most images per request (default 64)")
    p.add_argument("--max-in-flight", type=int, default=16,
                   help="image requests worked on at once; one more gets 503 at once (default 16)")
    p.add_argument("--decode-threads", type=int, default=2, help="threads decoding uploads (default 2)")
    p.add_argument("--limit-concurrency", type=int, default=64,
                   help="open connections + tasks before uvicorn answers 503 (default 64)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="close a connection that has not sent its request head within this time (default 10 s)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on every route but /health "
                        "(or set CNNLAB_API_KEY, which keeps the key off the command line)")
    p.add_argument("--allowed-hosts", default=None,
                   help="comma-separated Host names to answer ('*' for any; default: the loopback names "
                        "when bound to loopback, else any)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="request timeout (default 30 s)")
    p.add_argument("--threads", type=int, help="compute threads per worker (default: physical cores / workers)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from cnnlab.errors import ConfigError

    try:
        import uvicorn

        from cnnlab.serving.app import CONFIG_ENV, create_app
    except ImportError as exc:
        raise ConfigError(f"cnnlab serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'cnnlab[serve]'") from None
    from cnnlab.utils.hardware import physical_cores

    if args.workers < 1 or args.max_batch < 1 or args.batch_window_ms < 0 or args.timeout_s <= 0:
        raise ConfigError("--workers and --max-batch must be >= 1, --batch-window-ms >= 0, --timeout-s > 0")
    for flag in ("max_pixels", "max_request_pixels", "max_images", "max_in_flight", "decode_threads",
                 "limit_concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.header_timeout_s <= 0:
        raise ConfigError(f"--header-timeout-s must be > 0, got {args.header_timeout_s}")
    from cnnlab.serving.guard import default_allowed_hosts, uvicorn_options

    api_key = args.api_key or os.environ.get("CNNLAB_API_KEY") or None
    if args.allowed_hosts is None:
        allowed_hosts = default_allowed_hosts(args.host)
    else:
        allowed_hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
        if not allowed_hosts:
            raise ConfigError("--allowed-hosts: give host names separated by commas, or '*'")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    threads = args.threads if args.threads is not None else max(1, physical_cores() // args.workers)
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    backend = "onnxruntime" if args.onnx else args.backend
    cfg = {"run_dir": os.path.abspath(args.run_dir), "backend": backend, "weights": args.weights,
           "onnx_path": os.path.abspath(args.onnx) if args.onnx else None,
           "max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms,
           "max_upload_bytes": int(args.max_upload_mb * 1024 * 1024), "max_pixels": args.max_pixels,
           # torch without --threads: the core share (utils/cores.py) decides per call
           "timeout_s": args.timeout_s, "threads": None if backend == "torch" and args.threads is None else threads,
           "max_request_pixels": args.max_request_pixels, "max_images": args.max_images,
           "max_in_flight": args.max_in_flight, "decode_threads": args.decode_threads,
           "api_key": api_key, "allowed_hosts": allowed_hosts}
    server = {"host": args.host, "port": args.port, "log_level": args.log_level,
              **uvicorn_options(args.limit_concurrency, args.header_timeout_s)}
    print(f"serving {args.run_dir} ({args.onnx or backend}) on http://{args.host}:{args.port}/ "
          f"({args.workers} worker{'s' if args.workers > 1 else ''}, {threads} threads each); schema at /openapi.json"
          + ("; API key required" if api_key else ""))
    if args.workers == 1:
        import torch

        torch.set_num_threads(threads)
        app = create_app(**cfg)  # loaded (and checked) before the port opens
        uvicorn.run(app, **server)
    else:
        create_app(**cfg)  # fail here, with one line, rather than in every worker
        os.environ[CONFIG_ENV] = json.dumps(cfg)  # the worker processes' environment (not argv)
        uvicorn.run("cnnlab.serving.app:app_from_env", factory=True, workers=args.workers, **server)
    return 0
