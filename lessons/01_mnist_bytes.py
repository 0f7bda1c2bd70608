"""Lesson 01: the MNIST bytes. What the four files hold, byte by byte, and what the digits
look like: their headers decoded, a grid of examples, one digit as numbers, the pixel
values, the class balance of both splits and the mean digit of each class.

    python lessons/01_mnist_bytes.py           # ~15 s
    python lessons/01_mnist_bytes.py --quick   # the first 500 images of each split
"""

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson

from scratchcnn.data.idx import parse_idx_header, read_idx_bytes
from scratchcnn.data.mnist import NUM_CLASSES, ORIGINAL_FILES, find_mnist, read_split
from scratchcnn.data.preprocess import MNIST_MEAN, MNIST_STD
from scratchcnn.viz import save_figure


# --8<-- [start:header_fields]
def header_fields(path) -> dict:
    """Everything the header of one IDX file says, next to the bytes that say it."""
    data = read_idx_bytes(path)  # gunzipped when it starts with 1f 8b
    header = parse_idx_header(data, path)
    return {
        "name": path.name,
        "file_bytes": path.stat().st_size,  # compressed, on disk
        "bytes": len(data),  # after gunzip
        "header_hex": data[: header.nbytes].hex(" "),
        "dtype_code": f"0x{data[2]:02X}",
        "dtype": header.dtype.name,
        "ndim": data[3],
        "shape": list(header.shape),
        "header_bytes": header.nbytes,
        "payload_bytes": header.payload_nbytes,
        "adds_up": len(data) == header.nbytes + header.payload_nbytes,
    }


# --8<-- [end:header_fields]


# --8<-- [start:byte_of_pixel]
def byte_of_pixel(data: bytes, n: int, i: int, j: int) -> tuple[int, int]:
    """The offset and value of pixel (i, j) of image n in the raw bytes of an images file:
    16 header bytes, then 28 * 28 bytes per image, row after row."""
    offset = 16 + 28 * 28 * n + 28 * i + j
    return offset, data[offset]


# --8<-- [end:byte_of_pixel]


def first_of_each_class(labels, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of every class, class by class."""
    return np.stack([np.flatnonzero(labels == k)[:per_class] for k in range(NUM_CLASSES)])


def digit_grid(images, labels, path, per_class: int = 12):
    """Row k: the first examples of digit k in the training file."""
    index = first_of_each_class(labels, per_class)
    figure, axes = plt.subplots(NUM_CLASSES, per_class, figsize=(per_class * 0.6, 6.4))
    for k in range(NUM_CLASSES):
        for col in range(per_class):
            axes[k, col].imshow(images[index[k, col]], cmap="gray", vmin=0, vmax=255)
            axes[k, col].set_xticks([])
            axes[k, col].set_yticks([])
        axes[k, 0].set_ylabel(str(k), rotation=0, labelpad=10, va="center", fontsize=11)
    figure.suptitle("The first examples of each digit in the training file", y=0.92)
    save_figure(figure, path)


def digit_as_numbers(image, label, path):
    """One image with the value of every pixel written on it: white ink on black, as
    every digit in these lessons is drawn (0 is black)."""
    figure, axes = plt.subplots(figsize=(8.5, 8.5))
    axes.imshow(image, cmap="gray", vmin=0, vmax=255)
    for i in range(28):
        for j in range(28):
            value = int(image[i, j])
            if value:
                axes.text(j, i, str(value), ha="center", va="center", fontsize=5.2,
                          color="black" if value > 128 else "white")
    axes.set_xticks(range(0, 28, 4))
    axes.set_yticks(range(0, 28, 4))
    axes.set_xlabel("column j")
    axes.set_ylabel("row i")
    axes.set_title(f"Training image 0 (label {label}): 784 bytes, blank cells are 0")
    save_figure(figure, path)


def pixel_histogram(images, path):
    counts = np.bincount(images.reshape(-1), minlength=256)
    figure, axes = plt.subplots(figsize=(7, 3))
    axes.bar(np.arange(256), counts, width=1.0, color="tab:blue")
    axes.set_yscale("log")
    axes.set_xlim(-2, 257)
    axes.set_xlabel("pixel value (byte)")
    axes.set_ylabel("number of pixels (log)")
    axes.set_title("Every pixel of the training images")
    save_figure(figure, path)


def class_balance(train_counts, test_counts, path):
    train_share = 100 * np.asarray(train_counts) / np.sum(train_counts)
    test_share = 100 * np.asarray(test_counts) / np.sum(test_counts)
    x = np.arange(NUM_CLASSES)
    figure, axes = plt.subplots(figsize=(8, 3.2))
    axes.bar(x - 0.2, train_share, 0.4, label=f"train ({sum(train_counts):,} images)")
    axes.bar(x + 0.2, test_share, 0.4, label=f"test ({sum(test_counts):,} images)")
    axes.axhline(10, color="gray", lw=0.8, ls="--")
    axes.set_xticks(x)
    axes.set_xlabel("digit")
    axes.set_ylabel("share of the split (%)")
    axes.set_ylim(0, 13)
    axes.set_title("Class balance: each digit's share of its split (dashed: 10%)")
    axes.legend(loc="upper right", ncols=2, fontsize=8)
    save_figure(figure, path)


def mean_digits(images, labels, path):
    """The mean image of each class, and of all classes together (same colour scale)."""
    means = [images[labels == k].mean(axis=0) for k in range(NUM_CLASSES)]
    means.append(images.mean(axis=0))
    figure, axes = plt.subplots(1, 11, figsize=(13, 1.8))
    for k, (ax, mean) in enumerate(zip(axes, means)):
        ax.imshow(mean, cmap="gray", vmin=0, vmax=255)
        ax.set_title(str(k) if k < NUM_CLASSES else "all", fontsize=10)
        ax.axis("off")
    figure.suptitle("The mean digit of each class (training images)", y=1.0)
    save_figure(figure, path)
    return means


# --8<-- [start:nearest_mean]
def nearest_mean_accuracy(means, images, labels) -> float:
    """Classify each image as the class whose mean digit is nearest (Euclidean distance)."""
    centers = np.stack(means).reshape(NUM_CLASSES, -1)  # (10, 784)
    flat = images.reshape(len(images), -1).astype(np.float64)  # (N, 784)
    # |x - m|^2 = |x|^2 - 2 x.m + |m|^2; |x|^2 is the same for every class, so drop it.
    scores = -2 * flat @ centers.T + np.sum(centers**2, axis=1)
    return float(np.mean(np.argmin(scores, axis=1) == labels))


# --8<-- [end:nearest_mean]


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    location = find_mnist()
    files = {f"{split}_{kind}": header_fields(location.path(split, kind))
             for split, kind in ORIGINAL_FILES}

    train_images, train_labels = read_split(location, "train")
    test_images, test_labels = read_split(location, "test")
    raw = read_idx_bytes(location.path("train", "images"))
    n, i, j = 0, 14, 14
    offset, value = byte_of_pixel(raw, n, i, j)
    assert value == train_images[n, i, j]  # the decoded array is the bytes, in order
    dims = bytes.fromhex(files["train_images"]["header_hex"].replace(" ", ""))[4:8]

    if lesson.quick:
        train_images, train_labels = train_images[:500], train_labels[:500]
        test_images, test_labels = test_images[:500], test_labels[:500]

    digit_grid(train_images, train_labels, lesson.path("digit_grid.png"))
    digit_as_numbers(train_images[0], int(train_labels[0]), lesson.path("digit_numbers.png"))
    pixel_histogram(train_images, lesson.path("pixel_histogram.png"))
    train_counts = np.bincount(train_labels, minlength=NUM_CLASSES).tolist()
    test_counts = np.bincount(test_labels, minlength=NUM_CLASSES).tolist()
    class_balance(train_counts, test_counts, lesson.path("class_balance.png"))
    means = mean_digits(train_images, train_labels, lesson.path("mean_digits.png"))

    accuracy = nearest_mean_accuracy(means[:NUM_CLASSES], test_images, test_labels)
    unit = train_images / 255.0  # float64: the mean of 47 million values, exactly enough
    never_inked = np.argwhere(train_images.max(axis=0) == 0)  # (row, col) of each
    border_distance = np.minimum(never_inked, 27 - never_inked).min(axis=1)
    lesson.finish({
        "location_layout": location.layout,
        "files": files,
        "dims_hex": dims.hex(" "),
        "dims_big_endian": int.from_bytes(dims, "big"),
        "dims_little_endian": int.from_bytes(dims, "little"),
        "pixel_demo": {"image": n, "row": i, "col": j, "offset": offset, "byte": value},
        "first_labels": train_labels[:8].tolist(),
        "train_images": len(train_images),
        "test_images": len(test_images),
        "train_counts": train_counts,
        "test_counts": test_counts,
        "train_most": int(np.argmax(train_counts)),
        "train_least": int(np.argmin(train_counts)),
        "train_most_to_least": round(max(train_counts) / min(train_counts), 3),
        "pixel_mean": round(float(unit.mean()), 4),
        "pixel_std": round(float(unit.std()), 4),
        "library_mean": MNIST_MEAN,
        "library_std": MNIST_STD,
        "zero_fraction": round(float(np.mean(train_images == 0)), 4),
        "full_ink_fraction": round(float(np.mean(train_images == 255)), 4),
        "most_common_ink": int(np.argmax(np.bincount(train_images.reshape(-1))[1:]) + 1),
        "never_inked_pixels": len(never_inked),
        "never_inked_within_border": int(border_distance.max(initial=-1)) + 1,
        "nearest_mean_accuracy": round(accuracy, 4),
        "ink_per_class": [round(float(m.mean() / 255), 4) for m in means[:NUM_CLASSES]],
    })


if __name__ == "__main__":
    main()
