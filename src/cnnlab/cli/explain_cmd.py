"""cnnlab explain: class-activation heatmaps (Grad-CAM, occlusion) for image files or folders."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cnnlab.evaluation.explain import METHODS

    p = sub.add_parser("explain", help="show where a trained run looks (heatmap overlays)",
                       description="One overlay PNG per image (the image, its heatmap, the label and its "
                                   "probability) for the predicted class or --target.")
    p.add_argument("run_dir", help="a run directory written by `cnnlab train` or `cnnlab fit`")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--method", choices=METHODS, default="gradcam",
                   help="gradcam (default) or occlusion (gradient-free, slower)")
    p.add_argument("--target", help="explain this class (a name) instead of the predicted one")
    p.add_argument("--layer", help="Grad-CAM's layer by name (default: the last feature map larger than 1x1)")
    p.add_argument("--out", default="explanations", help="folder for the overlay PNGs (default ./explanations)")
    p.add_argument("--weights", default="final", choices=["final", "best"])
    p.add_argument("--json", action="store_true",
                   help='print per image {"image", "label", "probability", "heatmap_png", "peak": [x, y]}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.cli.common import print_json, print_table
    from cnnlab.data.decode import list_image_files

    list_image_files(args.paths)  # a missing path or a folder without images: one line naming it
    rows = api.explain(args.run_dir, args.paths, args.out, method=args.method, target=args.target,
                       layer=args.layer, weights=args.weights)
    if args.json:
        print_json(rows)
        return 0
    print_table([{"image": r["image"], "label": r["label"], "probability": round(r["probability"], 4),
                  "peak": f"{r['peak'][0]},{r['peak'][1]}", "overlay": r["heatmap_png"]} for r in rows])
    return 0
