"""cnnlab embed: feature vectors of a source's images, from a trained run or a backbone."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write feature vectors (npy or parquet) for a data source",
                       description="Pooled backbone features for every image of a source, from a run "
                                   "directory or a backbone name (e.g. efficientnet_lite0 with offline "
                                   "ImageNet weights), for use elsewhere.")
    p.add_argument("model", help="a run directory or a backbone name")
    p.add_argument("--data", required=True, help="data source")
    p.add_argument("--out", required=True, help="output file: .npy (+ .labels.csv) or .parquet")
    p.add_argument("--pretrained", default="offline",
                   help="with a backbone name: offline | hub | none | a weights file (default offline)")
    p.add_argument("--input-size", type=int, help="with a backbone name: resize images to this size")
    p.add_argument("--pooling", choices=["avg", "max"], default="avg")
    p.add_argument("--split", default="all", help="train, val, test or all (default)")
    add_json_flag(p, "what was written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import api

    pretrained = None if args.pretrained == "none" else args.pretrained
    info = api.embed(args.model, args.data, args.out, pretrained=pretrained, input_size=args.input_size,
                     pooling=args.pooling, split=args.split)
    if args.json:
        from cnnlab.cli.common import print_json

        print_json(info)
        return 0
    print(f"wrote {info['shape'][0]:,} x {info['shape'][1]} features to {info['path']}")
    return 0
