"""cnnlab data inspect: the study's sanity check and example-images figure for any source."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="look at a data source")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    q = dsub.add_parser("inspect", help="shapes, class counts, pixel range and example images",
                        description="The study's sanity check: array shapes, per-class counts for each split, "
                                    "pixel min/max, a label-order scatter and the example-images grid (PNG); "
                                    "exact and near-duplicate images within and across splits (leaks), with "
                                    "example pairs in duplicates.html.")
    q.add_argument("source", help="cifar10, a folder, an archive or a CSV file")
    q.add_argument("--out", default="data-inspect", help="folder for the figures (default: data-inspect)")
    q.add_argument("--image-size", type=int, help="resize images to N x N when loading")
    q.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted)")
    q.add_argument("--image-column", help="CSV source: the image-path column (default: auto-detected)")
    q.add_argument("--label-column", help="CSV source: the label column (default: auto-detected)")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.cli.common import print_json, print_table

    from cnnlab.validation import at_least, check_value

    if args.image_size is not None:
        check_value("--image-size", args.image_size, at_least(8))
    summary = api.inspect_data(args.source, args.out, image_size=args.image_size, skip_bad=args.skip_bad,
                               image_column=args.image_column, label_column=args.label_column)
    if args.json:
        print_json(summary)
        return 0
    print(f"{summary['name']}: {len(summary['classes'])} classes")
    rows = []
    for name, s in summary["splits"].items():
        print(f"  {name:5s} images {tuple(s['shape'])}, labels ({s['images']},), "
              f"pixels {s['pixel_min']}..{s['pixel_max']}")
    for cls in summary["classes"]:
        rows.append({"class": cls, **{split: s["class_counts"][cls] for split, s in summary["splits"].items()}})
    print_table(rows)
    if summary.get("imbalance"):
        from cnnlab.data.dataset import describe_imbalance

        print(f"train: {describe_imbalance(summary['imbalance'])}")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unreadable files")
    exact, near, cross = (summary[k] for k in ("exact_duplicates", "near_duplicates", "cross_split_duplicates"))
    print(f"duplicates: {len(exact)} exact pairs, {len(near)} near-duplicate pairs (pHash distance <= "
          f"{summary['near_max_distance']}), {len(cross)} across splits ({summary['leaked_train_images']} "
          "training images duplicate a validation or test image)")
    for p in (cross or exact + near)[:5]:
        print(f"  {p['a']} ~ {p['b']} (distance {p['distance']})")
    for name, path in summary.get("figures", {}).items():
        print(f"{name}: {path}")
    return 0
