"""What a benchmark ran on, written beside its numbers.

Ratios between implementations move with the CPU: oneDNN and XLA use AVX-512 where it
exists, our NumPy step mostly through BLAS, whose kernels are recorded too. Two runs are
comparable only on the same CPU with the same BLAS kernels.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """('AMD EPYC ...', {'avx2', 'avx512f', ...}) from /proc/cpuinfo ('', set() elsewhere)."""
    model, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, flags


def describe() -> dict:
    """The CPU, its widest vector instructions, and the versions of what was measured."""
    import numpy as np

    model, flags = cpu_model_and_flags()
    vector = [name for name in ("avx512f", "avx2", "avx") if name in flags][:1]
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("jax", "flax", "torch"):
        with contextlib.suppress(ImportError):
            versions[package] = __import__(package).__version__
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "widest_vector_instructions": vector[0] if vector else None,
        "numpy_blas": numpy_blas(),
        "versions": versions,
    }


def numpy_blas() -> dict:
    """NumPy's BLAS and the kernels it runs, e.g. OpenBLAS's 'Haswell' (AVX2) or 'SkylakeX'
    (AVX-512). OpenBLAS picks them for the CPU unless ``OPENBLAS_CORETYPE`` names a core:
    on an AVX-512 CPU, forcing 'Haswell' halves its single-precision matrix-multiply rate."""
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)
    from threadpoolctl import threadpool_info

    blas = next((lib for lib in threadpool_info() if lib["user_api"] == "blas"), {})
    return {
        "library": blas.get("internal_api"),
        "version": blas.get("version"),
        "kernels": blas.get("architecture"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
