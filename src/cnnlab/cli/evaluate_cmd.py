"""cnnlab evaluate / predict: score a saved run, or label new images with it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run on a data source",
                       description="Loss, accuracy, top-5, per-class precision/recall/F1 and the confusion "
                                   "matrix (PNG heat map and CSV) of a run on a source's test split.")
    p.add_argument("run_dir", help="a run directory written by `cnnlab train`")
    p.add_argument("--data", help="data source (default: the one the run trained on)")
    p.add_argument("--weights", default="final", choices=["final", "best"], help="final or best checkpoint")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate"], help="test-time augmentation")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="inference backend (onnxruntime: RUN_DIR/model.onnx, exported when missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.cli.common import print_json, print_table

    report = api.evaluate(args.run_dir, args.data, weights=args.weights, tta=args.tta,
                          backend=args.backend)
    if args.json:
        print_json(report)
        return 0
    print(f"{report['source']} ({report['split']}, {report['count']:,} images, weights: {report['weights']})")
    print(f"loss {report['loss']:.4f}  accuracy {report['accuracy']:.4f}  top-5 {report['top5_accuracy']:.4f}  "
          f"macro F1 {report['macro_f1']:.4f}  ECE {report['ece']:.4f}")
    worst = report.get("worst_class")
    print(f"balanced accuracy {report['balanced_accuracy']:.4f}"
          + (f"  worst class {worst['class']} (recall {worst['recall']:.4f}, {worst['support']} images)" if worst else ""))
    print_table(report["per_class"], ["class", "precision", "recall", "f1", "support"])
    print(f"confusion matrix: {args.run_dir}/figures/confusion_matrix.png, {args.run_dir}/confusion_matrix.csv")
    return 0
