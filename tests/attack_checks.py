"""What the attack tests share: the size of a perturbation, example by example."""

import numpy as np


def sizes(adv, x, norm):
    """Each example's perturbation size (N,): its largest pixel change, or its L2 length."""
    delta = (adv - x).reshape(len(x), -1).astype(np.float64)
    return np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
