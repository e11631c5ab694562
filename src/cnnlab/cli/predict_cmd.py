"""cnnlab predict: top-k labels for image files or folders."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="label images with a trained run",
                       description="Top-k labels with probabilities for images and folders of images.")
    p.add_argument("run_dir", help="a run directory written by `cnnlab train`")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="how many labels per image (default 3)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--weights", default="final", choices=["final", "best"])
    p.add_argument("--tta", choices=["none", "flip", "flip_translate"],
                   help="test-time augmentation (default: the run's train.tta, as evaluate uses)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="inference backend (onnxruntime: RUN_DIR/model.onnx, exported when missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.cli.common import print_csv, print_json, print_table
    from cnnlab.data.decode import list_image_files
    from cnnlab.validation import at_least, check_value

    check_value("--top-k", args.top_k, at_least(1))
    list_image_files(args.paths)  # a missing path or a folder without images: one line naming it
    results = api.predict(args.run_dir, args.paths, top_k=args.top_k, weights=args.weights, tta=args.tta,
                          backend=args.backend)
    if args.format == "json" or args.json:
        print_json(results)
        return 0
    rows = []
    for r in results:
        row = {"image": r["image"]}
        for i, t in enumerate(r["top"], start=1):
            row[f"label_{i}"] = t["label"]
            row[f"p_{i}"] = round(t["probability"], 4)
        rows.append(row)
    (print_csv if args.format == "csv" else print_table)(rows)
    return 0
