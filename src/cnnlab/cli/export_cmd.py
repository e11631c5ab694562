"""cnnlab export: a trained run as an ONNX file, checked against PyTorch."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX (with a parity check)",
                       description="Write the run's model as ONNX: uint8 NHWC RGB images in (preprocessing and "
                                   "resize inside the graph), logits out, dynamic batch. Then compare it with "
                                   "PyTorch on up to 1,000 images: max |logit difference| and top-1 agreement.")
    p.add_argument("run_dir", help="a run directory written by `cnnlab train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    p.add_argument("--out", help="output file (default RUN_DIR/model.onnx, model.int8.onnx with --quantize)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; below 18 uses the TorchScript exporter)")
    p.add_argument("--quantize", choices=["int8"], help="static int8 quantization calibrated on the check images")
    p.add_argument("--data", help="data source for the parity check and calibration (default: synthetic images)")
    p.add_argument("--parity-images", type=int, default=1000, help="images in the parity check (default 1000; 0: none)")
    p.add_argument("--weights", default="final", choices=["final", "best"])
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="torch.onnx exporter (auto: dynamo, falling back to TorchScript)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import print_json
    from cnnlab.predictor import ImagePredictor

    result = ImagePredictor.load(args.run_dir, weights=args.weights).export_onnx(
        args.out, opset=args.opset, quantize=args.quantize, data=args.data, parity_count=args.parity_images,
        exporter=args.exporter, log=None if args.json else print)
    if args.json:
        print_json(result)
    return 0
