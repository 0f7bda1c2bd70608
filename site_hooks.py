"""MkDocs hooks (``hooks:`` in mkdocs.yml): work done before each site build.

``on_pre_build`` exports every pretrained network this copy of scratchcnn ships to ONNX
for the "Draw a digit" page (``site/demo.md``), which runs them in the browser with
onnxruntime-web: ``site/assets/demo/models/<name>.onnx``, ``<name>.grad.onnx`` (the same
network with our backward pass: logits, loss and d loss / d image, for the page's FGSM
attack), plus ``index.json``, the list of networks the page offers. These files are
generated, not committed (.gitignore).

A network is exported again only when its stamp changed: the SHA-256 of the shipped
checkpoint and of the exporter's source (every ``scratchcnn/**/*.py`` and this file),
recorded in ``index.json`` along with the two ONNX files' own SHA-256s; both files of a
network are exported again together. An unchanged build rewrites
nothing, so ``mkdocs serve`` does not see its own output as an edit and loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "site" / "assets" / "demo" / "models"
# The networks the demo offers, when shipped (lesson 19's ensemble members are not: they
# would only add near-copies of `best` to the choice, and megabytes to the site).
DEMO_NETWORKS = ("default", "best", "defended")


# The source files whose change can change an exported file: the whole library (the
# exporter reads layer geometry, constants and the version from all over it), and this
# hook (which chooses the export's options).
def exporter_sources() -> list[Path]:
    return [*sorted((ROOT / "scratchcnn").rglob("*.py")), Path(__file__).resolve()]


log = logging.getLogger("mkdocs.hooks.site_hooks")


def on_pre_build(config, **kwargs) -> None:
    """Before MkDocs collects the files of docs_dir: bring the demo's models up to date."""
    export_demo_models(MODELS)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exporter_sha256() -> str:
    """One digest of the exporter's source files, in a fixed order."""
    digest = hashlib.sha256()
    for path in exporter_sources():
        digest.update(path.read_bytes())
    return digest.hexdigest()


def demo_networks() -> list[str]:
    """The shipped networks the demo offers, in the order scratchcnn lists them."""
    from scratchcnn import pretrained

    return [name for name in pretrained.available() if name in DEMO_NETWORKS]


def export_demo_models(folder: Path) -> dict:
    """Export each shipped network to ``folder/<name>.onnx`` unless it is up to date, write
    ``folder/index.json``, delete the ONNX files of networks no longer shipped.

    Returns the index: ``{"networks": [{"name", "file", "description", "architecture",
    "test_accuracy", "checkpoint_sha256", "exporter_sha256", "onnx_sha256", "bytes",
    "gradient_file", "gradient_onnx_sha256", "gradient_bytes"}]}``.
    """
    from scratchcnn import pretrained
    from scratchcnn.files import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    previous = _read_index(index_path)
    manifest = pretrained.manifest()
    exporter = exporter_sha256()

    networks = []
    for name in demo_networks():
        record = manifest[name]
        target = folder / f"{name}.onnx"
        gradient = folder / f"{name}.grad.onnx"
        stamp = {"checkpoint_sha256": record["sha256"], "exporter_sha256": exporter}
        old = previous.get(name, {})
        current = all(old.get(key) == value for key, value in stamp.items()) and all(
            path.is_file() and old.get(key) == sha256(path)
            for path, key in ((target, "onnx_sha256"), (gradient, "gradient_onnx_sha256"))
        )
        if not current:
            log.info("exporting the pretrained network %r to %s and %s", name, target, gradient)
            _export(name, record, target, gradient)
        networks.append({
            "name": name,
            "file": target.name,
            "description": record.get("description") or pretrained.DESCRIPTIONS[name],
            "architecture": record["architecture"],
            "test_accuracy": record["test_accuracy"],
            **stamp,
            "onnx_sha256": sha256(target),
            "bytes": target.stat().st_size,
            "gradient_file": gradient.name,
            "gradient_onnx_sha256": sha256(gradient),
            "gradient_bytes": gradient.stat().st_size,
        })  # fmt: skip

    shipped = {n[key] for n in networks for key in ("file", "gradient_file")}
    for stale in folder.glob("*.onnx"):
        if stale.name not in shipped:
            log.info("removing %s: no longer a shipped network", stale)
            stale.unlink()

    index = {"networks": networks}
    text = json.dumps(index, indent=2) + "\n"
    if not index_path.is_file() or index_path.read_text() != text:
        write_atomically(index_path, lambda file: file.write(text.encode()))
    return index


def _read_index(path: Path) -> dict:
    """{name: entry} from the index a previous build wrote; {} when there is none."""
    try:
        return {entry["name"]: entry for entry in json.loads(path.read_text())["networks"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _export(name: str, record: dict, target: Path, gradient: Path) -> None:
    """The pretrained network as ONNX: probabilities, and the first conv layer's maps
    (the same graph and metadata as ``scratchcnn export <name> --features`` writes); and
    its gradient graph (``build_gradient_onnx``: logits, loss, d loss / d image).
    """
    from scratchcnn import pretrained
    from scratchcnn.export import build_gradient_onnx, build_onnx, save_onnx

    model, params, state = pretrained.load(name)
    source = {"source_checkpoint": record["file"], "source_sha256": record["sha256"]}
    onnx_model = build_onnx(
        model, params, state,
        model_name=record["architecture"], softmax=True, features=True, layout="nhwc",
        metadata=source,
    )  # fmt: skip
    gradient_model = build_gradient_onnx(
        model, params, state, model_name=record["architecture"], layout="nhwc", metadata=source
    )
    # Atomic writes: a parallel build never reads half a file.
    save_onnx(onnx_model, target, force=True)
    save_onnx(gradient_model, gradient, force=True)
