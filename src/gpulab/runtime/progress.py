"""One progress bar for every long loop: rich on a terminal, silent otherwise."""

import sys


class ProgressBar:
    """`with ProgressBar("train", total) as bar: bar.update(step, metrics, label)`."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total = label, total
        self.enabled = enabled and sys.stdout.isatty()
        self.bar = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, metrics="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, completed: int, metrics: dict | None = None, label: str | None = None) -> None:
        """Move to `completed`; show `metrics` (name -> number) and a new `label` if given."""
        if self.bar is None:
            return
        fields = {} if label is None else {"description": label}
        if metrics is not None:
            fields["metrics"] = "  ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
        self.bar.update(self.task, completed=completed, **fields)
