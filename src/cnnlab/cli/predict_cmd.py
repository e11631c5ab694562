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
    """Prints each chunk of predictions as soon as it is known (api.iter_predict): the first rows
    appear before the last image of a large folder is decoded."""
    from cnnlab import api
    from cnnlab.data.decode import list_image_files
    from cnnlab.validation import at_least, check_value

    check_value("--top-k", args.top_k, at_least(1))
    list_image_files(args.paths)  # a missing path or a folder without images: one line naming it
    results = api.iter_predict(args.run_dir, args.paths, top_k=args.top_k, weights=args.weights, tta=args.tta,
                               backend=args.backend)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        _stream_json(results)
    else:
        _stream_rows(map(_row, results), csv=fmt == "csv")
    return 0


def _row(r: dict) -> dict:
    row = {"image": r["image"]}
    for i, t in enumerate(r["top"], start=1):
        row[f"label_{i}"] = t["label"]
        row[f"p_{i}"] = round(t["probability"], 4)
    return row


def _stream_json(results) -> None:
    """The same text as ``print_json(list(results))`` (indent 2), written one element at a time."""
    import json
    import sys

    sys.stdout.write("[")
    first = True
    for r in results:
        body = json.dumps(r, indent=2).replace("\n", "\n  ")
        sys.stdout.write(("\n  " if first else ",\n  ") + body)
        sys.stdout.flush()
        first = False
    sys.stdout.write("\n]\n" if not first else "]\n")


def _stream_rows(rows, csv: bool) -> None:
    """A CSV, or an aligned table whose column widths are those of the first chunk of rows (later,
    longer cells push their line out): rows are printed as they come."""
    import itertools

    from cnnlab.cli.common import print_csv, print_table

    rows = iter(rows)
    head = list(itertools.islice(rows, 64))
    if csv:
        import csv as csv_mod
        import sys

        print_csv(head)
        writer = csv_mod.DictWriter(sys.stdout, fieldnames=list(head[0]) if head else [], extrasaction="ignore")
        for row in rows:
            writer.writerow(row)
            sys.stdout.flush()
        return
    print_table(head)
    if not head:
        return
    from cnnlab.cli.common import _fmt, _numeric

    columns = list(head[0])
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in head)) for c in columns]
    for row in rows:
        cells = [_fmt(row.get(c)) for c in columns]
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(cells, widths)), flush=True)

