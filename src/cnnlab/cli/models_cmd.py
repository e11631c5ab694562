"""cnnlab models list / info: what can be built, and what a model is."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models or describe one")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    q = msub.add_parser("list", help="cnnlab's own models, offline-pretrained ones, then timm's")
    q.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    add_json_flag(q, "the names with what they are")
    q.set_defaults(func=run_list)
    q = msub.add_parser("info", help="parameters, trainable parameters and FLOPs of a model")
    q.add_argument("name")
    q.add_argument("--input-size", type=int, default=32, help="input size for FLOPs (default 32)")
    q.add_argument("--num-classes", type=int, default=10)
    q.add_argument("--units", type=int, default=0, help="hidden Dense units in the head (the study: 512)")
    q.add_argument("--pooling", choices=["avg", "max"], default="avg")
    add_json_flag(q, "the figures")
    q.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    from cnnlab.models.registry import list_models, own_models
    from cnnlab.models.weights import OFFLINE_WEIGHTS

    own = own_models()
    if args.json:
        from cnnlab.cli.common import print_json

        print_json([{"name": n, "kind": "cnnlab" if n in own else "offline" if n in OFFLINE_WEIGHTS else "timm",
                     "description": own.get(n, "")} for n in list_models(args.pattern)])
        return 0
    for name in list_models(args.pattern):
        if name in own:
            print(f"{name}  (cnnlab: {own[name]})")
        elif name in OFFLINE_WEIGHTS:
            print(f"{name}  (ImageNet weights offline: pretrained: offline)")
        else:
            print(name)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.cli.common import print_table

    info = api.model_info(args.name, input_size=args.input_size, num_classes=args.num_classes,
                          units=args.units, pooling=args.pooling)
    if args.json:
        from cnnlab.cli.common import print_json

        print_json({"name": args.name, **info})
        return 0
    rows = [{"what": k, "value": v} for k, v in info.items()]
    print_table(rows, title=args.name)
    return 0
