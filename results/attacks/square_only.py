"""The images only Square fooled: are the gradient attacks blind there, or under-powered?

The ensemble run behind the headline (defended-autoattack-record.json) names, for each
test image, the attack that fooled it first. Square, which never looks at a gradient,
fooled some images that APGD-CE and APGD-T (one run each, 100 steps) had left standing:
a warning sign of gradient masking. This script attacks exactly those images again with
more gradient runs (other random starts, APGD-CE x5, APGD-T x3, PGD-200 on the margin
loss x3) and, as a control, a random sample of the images every attack left standing.

    python results/attacks/square_only.py   # ~7 minutes on 2 cores; writes square-only.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from scratchcnn import apgd, attacks
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import to_unit_nhwc
from scratchcnn.files import write_json
from scratchcnn.pretrained import load

HERE = Path(__file__).parent
EPS = 0.3
CONTROL_IMAGES = 300


def first_fooled_by(record_path: Path) -> np.ndarray:
    """(10000,) the attack that fooled each image first ("" robust, "clean" wrong)."""
    record = json.loads(record_path.read_text())
    batches = record["done"][str(EPS)]
    return np.array([o for b in sorted(batches, key=int) for o in batches[b]])


def stronger_gradient_attacks(net, x, y) -> dict:
    """{run name: images it fools}, and "any": images at least one run fools."""
    runs = {}
    for r in range(5):
        runs[f"APGD-CE, start {r + 1}"] = apgd.apgd(*net, x, y, EPS, steps=100, rng=100 + r)
    for r in range(3):
        runs[f"APGD-T, start {r + 1}"] = apgd.apgd_targeted(*net, x, y, EPS, steps=100,
                                                            rng=200 + r)  # fmt: skip
    for r in range(3):
        runs[f"PGD-200 margin loss, start {r + 1}"] = attacks.pgd(
            *net, x, y, EPS, steps=200, step_size=0.01, loss="cw", rng=300 + r
        )
    fooled = {name: attacks.predict(*net, adv) != y for name, adv in runs.items()}
    counts = {name: int(f.sum()) for name, f in fooled.items()}
    counts["any"] = int(np.logical_or.reduce(list(fooled.values())).sum())
    return counts


def main() -> None:
    outcome = first_fooled_by(HERE / "defended-autoattack-record.json")
    images, labels = load_mnist("test")
    x_all, y_all = to_unit_nhwc(images), labels.astype(np.int64)
    robust = np.flatnonzero(outcome == "")
    groups = {
        "square only": np.flatnonzero(outcome == "square"),
        "robust (random sample)": np.random.default_rng(0).choice(robust, CONTROL_IMAGES,
                                                                  replace=False),
    }  # fmt: skip
    net = load("defended")
    first = {str(k): int((outcome == k).sum()) for k in np.unique(outcome)}
    result = {"eps": EPS, "first_fooled_by": first, "groups": {}}
    for name, index in groups.items():
        started = time.perf_counter()
        counts = stronger_gradient_attacks(net, x_all[index], y_all[index])
        result["groups"][name] = {"images": len(index), "fooled": counts,
                                  "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        print(name, result["groups"][name], flush=True)
    write_json(HERE / "square-only.json", result)


if __name__ == "__main__":
    main()
