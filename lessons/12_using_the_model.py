"""Lesson 12: using the model. Predict your own handwritten digits; write a Kaggle submission.

We make image files the way a user would (real MNIST test digits scanned dark on white
and off-centre on a large page, photographed on gray paper as a JPEG, cut out as a
transparent PNG, written small in a corner, drawn with a thick marker, tilted), show how
scratchcnn.data.images turns each into an MNIST-style 28x28 image, and what the default
network (the shipped one, scratchcnn.pretrained) predicts, with its probabilities, through the real
`scratchcnn predict` command. Then a Kaggle "Digit Recognizer" test.csv built from the
MNIST test images, the submission.csv that `scratchcnn predict --kaggle` writes, and the
submission's accuracy against the true labels.

    python lessons/12_using_the_model.py           # under a minute
    python lessons/12_using_the_model.py --quick   # seconds: a network trained on 512 images
"""

import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _lesson import ROOT, Lesson, trained_checkpoint
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from scratchcnn import pretrained
from scratchcnn.cli import app
from scratchcnn.data import images as digits
from scratchcnn.data.kaggle import PIXEL_COLUMNS
from scratchcnn.data.mnist import load_mnist
from scratchcnn.train import TrainConfig, train
from scratchcnn.viz import save_figure

# (file name, test image index, how it was made): one digit of each class 0..9 is too
# many for a figure; six digits and six ways of writing them.
USER_IMAGES = (
    ("scan.png", 0, "dark ink on white paper, off-centre on a large page"),
    ("photo.jpg", 1, "gray ink on gray paper, a little blurred, JPEG quality 50"),
    ("sticker.png", 2, "blue ink on a transparent background (RGBA)"),
    ("corner.png", 3, "small, white on black, in the corner of a large image"),
    ("marker.png", 4, "a thick marker, dark on white"),
    ("tilted.png", 7, "tilted by 35 degrees, dark on white"),
)


def checkpoint(seed: int, quick: bool, scratch: Path) -> str:
    """What `scratchcnn predict` is given: the shipped network's name ("default"), the
    path of runs/default-s{seed}'s checkpoint (trained when missing), or, quick, of a
    network trained on 512 images for an epoch."""
    if quick:
        config = TrainConfig(model="default", epochs=1, train_limit=512, batch_size=64,
                             val_fraction=0.0, test_limit=100, seed=seed)
        train(config, output_dir=scratch / "net", progress=False, log=lambda s: None)
        return str(scratch / "net" / "best.npz")
    path = trained_checkpoint("default", seed)
    return path.stem if path.parent == pretrained.FOLDER else str(path)  # absolute: we chdir


def shown(checkpoint: str) -> str:
    """A checkpoint as the page shows it: a pretrained name, or a path from the repository."""
    path = Path(checkpoint)
    return str(path.relative_to(ROOT)) if path.is_absolute() else checkpoint


# --8<-- [start:user_images]
def big(digit: np.ndarray, size: int) -> Image.Image:
    """A 28x28 MNIST digit (white on black, uint8) enlarged smoothly to size x size."""
    return Image.fromarray(digit).resize((size, size), Image.Resampling.LANCZOS)


def make_user_image(name: str, digit: np.ndarray, folder: Path) -> Path:
    """Write one test digit as a user's file would look: see USER_IMAGES."""
    path = folder / name
    ink = np.asarray(big(digit, 160), dtype=np.float64) / 255  # 1 where the pen went
    if name == "scan.png":  # black on white, placed off-centre on a 400 x 300 page
        page = np.ones((300, 400))
        page[20:180, 200:360] = 1 - ink
        Image.fromarray((255 * page).astype(np.uint8)).convert("RGB").save(path)
    elif name == "photo.jpg":  # gray paper (0.75), gray ink (0.3), soft focus
        photo = Image.fromarray((255 * (0.75 - 0.45 * ink)).astype(np.uint8))
        photo.filter(ImageFilter.GaussianBlur(2)).convert("RGB").save(path, quality=50)
    elif name == "sticker.png":  # blue ink, alpha = ink, nothing but the digit is opaque
        rgba = np.zeros((160, 160, 4), np.uint8)
        rgba[..., 2] = 200
        rgba[..., 3] = (255 * ink).astype(np.uint8)
        Image.fromarray(rgba, "RGBA").save(path)
    elif name == "corner.png":  # a 40-pixel digit in the corner of a 300 x 300 image
        canvas = np.zeros((300, 300), np.uint8)
        canvas[250:290, 10:50] = np.asarray(big(digit, 40))
        Image.fromarray(canvas).save(path)
    elif name == "marker.png":  # strokes thickened by a 9 x 9 maximum filter
        thick = Image.fromarray((255 * ink).astype(np.uint8)).filter(ImageFilter.MaxFilter(9))
        Image.fromarray(255 - np.asarray(thick)).save(path)
    elif name == "tilted.png":  # rotated 35 degrees counter-clockwise
        turned = big(digit, 160).rotate(35, resample=Image.Resampling.BICUBIC, expand=True)
        Image.fromarray(255 - np.asarray(turned)).save(path)
    return path


# --8<-- [end:user_images]


def run_cli(*args: str) -> str:
    """Run the real `scratchcnn` command line, return what it printed."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"scratchcnn {' '.join(args)} failed: {result.output}")
    return result.stdout


def write_kaggle_test_csv(images: np.ndarray, path: Path) -> Path:
    """Kaggle's test.csv format: header pixel0..pixel783, one image per line, 0..255."""
    rows = images.reshape(len(images), -1)
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=",".join(PIXEL_COLUMNS),
               comments="")
    return path


# --------------------------------------------------------------------------- figures


def digits_figure(files, loaded, prepared, rows, path):
    """Columns: one user file each. Rows: the file, the 28x28 input, the probabilities."""
    count = len(files)
    figure, axes = plt.subplots(3, count, figsize=(1.9 * count, 6.2), squeeze=False,
                                gridspec_kw={"height_ratios": [1.2, 1, 0.8]})
    for i, (name, gray, digit, row) in enumerate(zip(files, loaded, prepared, rows)):
        axes[0, i].imshow(gray, cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(f"{name}\n{gray.shape[1]}x{gray.shape[0]}", fontsize=8)
        axes[1, i].imshow(digit, cmap="gray", vmin=0, vmax=1)
        ok = row["prediction"] == row["label"]
        axes[1, i].set_title(f"drawn {row['label']}, read {row['prediction']}", fontsize=8,
                             color="black" if ok else "tab:red")
        for r in (0, 1):
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
        colors = ["tab:gray"] * 10
        colors[row["prediction"]] = "tab:blue" if ok else "tab:red"
        axes[2, i].bar(range(10), row["probabilities"], color=colors)
        axes[2, i].set(ylim=(0, 1), xticks=range(10))
        axes[2, i].tick_params(labelsize=6)
        if i:
            axes[2, i].set_yticklabels([])
    axes[0, 0].set_ylabel("the file", fontsize=8)
    axes[1, 0].set_ylabel("what the network reads", fontsize=8)
    axes[2, 0].set_ylabel("probability", fontsize=8)
    save_figure(figure, path)


def steps_figure(gray, path):
    """mnistify one picture step by step, with the library's own functions."""
    ink = digits.ink_on_black(gray)
    cropped = digits.crop_to_ink(ink / ink.max())
    square = digits.pad_to_square(cropped)
    small = digits.resize(square, digits.DIGIT_BOX)
    final = digits.center_by_mass(small, digits.MNIST_SIZE)
    stages = [("file (grayscale)", gray), ("ink on black", ink), ("crop to the ink", cropped),
              ("pad to a square", square), ("resize to 20x20", small),
              ("centre of mass at (14, 14)", final)]
    figure, axes = plt.subplots(1, len(stages), figsize=(2.0 * len(stages), 2.4))
    for ax, (title, image) in zip(axes, stages):
        ax.imshow(image, cmap="gray", vmin=0, vmax=max(float(image.max()), 1e-6))
        ax.set_title(f"{title}\n{image.shape[1]}x{image.shape[0]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(figure, path)


# --------------------------------------------------------------------------- the run


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    n_kaggle = 200 if lesson.quick else 10_000
    images, labels = load_mnist("test")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        ckpt = checkpoint(lesson.seed, lesson.quick, scratch)

        # 1. Your own digits, through `scratchcnn predict`.
        files = [make_user_image(name, images[i], scratch).name for name, i, _ in USER_IMAGES]
        here = Path.cwd()
        os.chdir(scratch)  # so the command and its output name the files as a user would
        try:
            printed = run_cli("predict", ckpt, *files)
            predictions = json.loads(run_cli("predict", ckpt, *files, "--json"))
        finally:
            os.chdir(here)
        loaded = [digits.load_image(scratch / f) for f in files]
        prepared = [digits.mnistify(gray) for gray in loaded]
        rows = [{"file": name, "made": made, "label": int(labels[i]), "prediction": p["digit"],
                 "correct": p["digit"] == int(labels[i]),
                 "probability": max(p["probabilities"]), "probabilities": p["probabilities"]}
                for (name, i, made), p in zip(USER_IMAGES, predictions)]
        digits_figure(files, loaded, prepared, rows, lesson.path("your_digits.png"))
        steps_figure(loaded[0], lesson.path("mnistify_steps.png"))

        # 2. A Kaggle submission for the MNIST test images.
        csv = write_kaggle_test_csv(images[:n_kaggle], scratch / "test.csv")
        started = time.perf_counter()
        printed_kaggle = run_cli("predict", ckpt, "--kaggle", str(csv),
                                 "--output", str(scratch / "submission.csv"))
        seconds = time.perf_counter() - started
        submission = (scratch / "submission.csv").read_text().splitlines()
        submitted = np.array([int(line.split(",")[1]) for line in submission[1:]])
        test_head = csv.read_text().splitlines()[:3]

    lesson.finish({
        "checkpoint": "(quick network)" if lesson.quick else shown(ckpt),
        "user_images": rows,
        "user_correct": sum(r["correct"] for r in rows),
        "predict_output": printed.rstrip("\n").splitlines(),
        "kaggle": {
            "images": n_kaggle,
            "test_csv_head": [line[:60] + " ..." for line in test_head],
            "test_csv_columns": len(test_head[0].split(",")),
            "printed": printed_kaggle.strip().replace(str(scratch) + "/", ""),
            "submission_head": submission[:6],
            "submission_lines": len(submission),
            "accuracy": float(np.mean(submitted == labels[:n_kaggle])),
            "seconds": round(seconds, 1),
        },
    })


if __name__ == "__main__":
    main()
