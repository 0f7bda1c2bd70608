"""What a run shows while it trains: a progress bar per epoch, one line per finished epoch."""

from __future__ import annotations


class ProgressBar:
    """A rich progress bar for one epoch showing loss, accuracy and images/s (on stderr)."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}"),
            TextColumn("{task.fields[speed]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("train", total=total, loss=0.0, acc=0.0, speed=0.0)

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def advance(self, n: int, loss: float, accuracy: float, speed: float) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=n, loss=loss, acc=accuracy, speed=speed)


def format_epoch(record: dict, epochs: int) -> str:
    """One history record as the line ``scratchcnn train`` prints after each epoch."""
    text = (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.2%}"
    )
    if "val_loss" in record:
        text += f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.2%}"
    if "val_robust_loss" in record:
        text += f" (attacked: {record['val_robust_loss']:.4f}, {record['val_robust_accuracy']:.2%})"
    return text + f"  {record['images_per_second']:,.0f} img/s  {record['seconds']:.1f} s"
