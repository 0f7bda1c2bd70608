"""Shared pytest fixtures.

Data fixtures: where the real MNIST files are, the real arrays (loaded once per test
session, so the 10 MB of training images are hashed and decompressed once), and an
isolated search path so a test never stumbles on a copy of MNIST it did not create.

Lesson marks (``python -m pytest -m lessonNN``, each page's "Check yourself") are set in
the test files themselves: ``pytestmark = pytest.mark.lessonNN`` or on a test.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import subprocess
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import settings

from scratchcnn.data.mnist import CACHE_DIR_ENV, DATA_DIR_ENV, load_mnist

# float64 on the JAX/Flax side too: the finite-difference and float64 parity checks need
# it. float32 inputs stay float32, so the float32 checks are unaffected.
jax.config.update("jax_enable_x64", True)

# Flax/JAX compile each new shape, so single examples can be slow: no deadline. CI runs
# the "ci" profile: a fixed seed, so a run is reproducible.
settings.register_profile("default", deadline=None, max_examples=12)
settings.register_profile("ci", deadline=None, max_examples=12, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data folder sits next to the repository: <root>/../shared/data/mnist.
SHARED_MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


def _real_mnist_dir() -> Path | None:
    """$SCRATCHCNN_DATA_DIR when it holds MNIST (CI sets it), else the shared folder."""
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        configured = Path(os.environ[DATA_DIR_ENV])
        # A relative value (CI uses ../shared/data/mnist) is meant from the repo root;
        # try it from the current directory first, as the library itself does.
        candidates += [configured, REPO_ROOT / configured]
    candidates.append(SHARED_MNIST_DIR)
    for candidate in candidates:
        if (candidate / "train-images-idx3-ubyte.gz").is_file():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def load_lesson():
    """Import a lesson script as a module: ``load_lesson("16_residual_networks")``."""
    return _import_lesson


def _import_lesson(stem: str):
    """The script lessons/<stem>.py as a module; its folder is on sys.path while it loads,
    for its ``from _lesson import ...``."""
    lessons = REPO_ROOT / "lessons"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(lessons))
        spec = importlib.util.spec_from_file_location(f"lesson_{stem}", lessons / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the four original MNIST files; the test is skipped without it."""
    found = _real_mnist_dir()
    if found is None:
        pytest.skip(
            f"real MNIST not found: set {DATA_DIR_ENV} to a folder with the four .gz files "
            f"(looked at ${DATA_DIR_ENV} and {SHARED_MNIST_DIR})"
        )
    return found


@pytest.fixture(scope="session")
def mnist_train(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real training split (images, labels), loaded once per session."""
    return load_mnist("train", mnist_dir)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real test split (images, labels), loaded once per session."""
    return load_mnist("test", mnist_dir)


@pytest.fixture
def isolated_mnist_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Unset $SCRATCHCNN_DATA_DIR and point the cache at an empty temporary folder.

    Returns the MNIST cache folder (``<tmp>/cache/mnist``, not yet created).
    """
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return (tmp_path / "cache" / "mnist").resolve()


# --------------------------------------------------------------------------- browser
CHROMIUM = Path("/usr/bin/chromium")
# CI installs Chromium and sets this, so that a browser test can never pass by skipping.
REQUIRE_BROWSER_ENV = "SCRATCHCNN_REQUIRE_BROWSER"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, which Playwright drives (its own browser download fails here).

    Missing, the test is skipped with how to install it, unless $SCRATCHCNN_REQUIRE_BROWSER
    is set (CI sets it): then a missing browser is a failure.
    """
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"needs Debian's Chromium at {CHROMIUM}: sudo apt-get install chromium"
    if os.environ.get(REQUIRE_BROWSER_ENV, "0") not in ("", "0"):
        pytest.fail(f"{REQUIRE_BROWSER_ENV} is set but {reason}")
    pytest.skip(reason)


# --------------------------------------------------------------------------- the site
@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` into a temporary folder, once per session (test_site.py
    and test_demo.py share it); the build's own hook exports the demo's ONNX models."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        ["mkdocs", "build", "--strict", "--site-dir", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # no line per request in the test output


@pytest.fixture(scope="session")
def served_site(built_site: Path):
    """The built site over HTTP on a free local port: its base URL, no trailing slash."""
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def default_network():
    """(model, params, state) of the shipped, undefended ``default`` network."""
    from scratchcnn.pretrained import load

    return load("default")


@pytest.fixture(scope="session")
def first_digits(mnist_test):
    """The first 100 real test digits (N, 28, 28, 1) in [0, 1], and their labels (N,)."""
    images, labels = mnist_test
    return (images[:100] / np.float32(255))[..., None], labels[:100].astype(np.int64)
