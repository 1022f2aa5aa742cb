"""Console output: a progress bar of the budget being spent, and run summaries (rich)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunebudget.policy import BudgetPolicy
from tunebudget.sweep.records import Outcome

err_console = Console(stderr=True)
out_console = Console()


def train_with_progress(policy: BudgetPolicy, device: str = "auto", quiet: bool = False):
    """Run a BudgetTrainer with a live bar of budget spent and the latest validation metric."""
    from tunebudget.trainer import BudgetTrainer

    if quiet or not err_console.is_terminal and not err_console.is_jupyter:
        # not a terminal: log one line per validation instead of redrawing a bar
        def on_eval(m: dict[str, Any]) -> None:
            if not quiet:
                err_console.print(_eval_line(m), highlight=False)

        return BudgetTrainer(policy, device=device, on_eval=on_eval).run()

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TimeElapsedColumn(), TextColumn("{task.fields[metric]}"))
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(f"{policy.name}: budget", total=1.0, metric="")

        def on_eval(m: dict[str, Any]) -> None:
            bar.update(task, completed=m["progress"], metric=_eval_line(m))

        trainer = BudgetTrainer(policy, device=device, on_eval=on_eval,
                                on_progress=lambda p: bar.update(task, completed=p))
        result = trainer.run()
        bar.update(task, completed=1.0)
    return result


def _eval_line(m: dict[str, Any]) -> str:
    metric = "val_accuracy" if "val_accuracy" in m else "val_mse"
    return (f"{m['progress'] * 100:5.1f}% of budget  {metric} {m[metric]:.4f}  "
            f"train_loss {m['train_loss']:.4f}  samples {m['samples_seen']}  kept {m['kept_share']:.2f}")


def print_summary(summary: dict[str, Any]) -> None:
    """The end-of-run table: status, test metrics, budget use, scoring share, samples."""
    table = Table(title=f"tunebudget train: {summary['policy']['name']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("status", summary["status"])
    for key, value in summary["test"].items():
        table.add_row(f"test {key}", f"{value:.4f}")
    budget = (f"{summary['budget_seconds']:g} s" if summary["limit"] == "seconds"
              else f"{summary['budget_samples']:g} sample passes")
    if summary.get("budget_use", 1.0) < 1:
        budget += f", {summary['budget_use']:g} of it used ({summary['unspent_share'] * 100:.0f}% left unspent)"
    table.add_row("budget", budget)
    if summary.get("kept_progress") is not None:
        table.add_row("kept weights", f"the best validation, at {summary['kept_progress'] * 100:.0f}% of the budget "
                      f"({summary['keep_best_bytes'] / 2**20:.1f} MiB, {summary['keep_best_copies']} copies in "
                      f"{summary['keep_best_seconds']:.3f} s)")
    table.add_row("training time", f"{summary['train_seconds']:.2f} s (validation {summary['eval_seconds']:.2f} s "
                  f"not charged; compile {summary['compile_seconds']:.2f} s before the clock)")
    table.add_row("scoring", f"{summary['scoring_seconds']:.2f} s ({summary['scoring_share'] * 100:.1f}% of training)")
    if summary.get("il_seconds"):
        table.add_row("irreducible-loss models", f"{summary['il_seconds']:.2f} s (charged; "
                      f"{summary['holdout_size']} samples held out for them)")
    table.add_row("selection bookkeeping", f"{summary['selection_seconds']:.3f} s")
    table.add_row("samples seen", f"{summary['samples_seen']} ({summary['throughput']:.0f}/s)")
    if summary.get("candidates_scored"):
        table.add_row("online candidates scored", str(summary["candidates_scored"]))
    table.add_row("distinct samples trained", f"{summary['distinct_samples']} of {summary['train_size']}")
    if summary.get("mislabelled_share") is not None:
        table.add_row("trained samples with a wrong label", f"{summary['mislabelled_share'] * 100:.1f}%")
    if summary.get("noise_estimate") is not None:
        table.add_row("estimated label noise", f"{summary['noise_estimate'] * 100:.1f}% (ratio auto keeps the rest)")
    if summary.get("val_source") == "given":
        table.add_row("validation", f"{summary['val_size']} samples of the data's own validation split")
    table.add_row("device", f"{summary['device']} ({summary['threads']} threads)")
    out_console.print(table)


@contextmanager
def starting(text: str, quiet: bool = False) -> Iterator[None]:
    """A transient spinner with ``text`` on a terminal (nothing elsewhere, or when quiet)."""
    if quiet or not err_console.is_terminal:
        yield
        return
    with err_console.status(text):
        yield


class SweepProgress:
    """Live sweep status on stderr: trials done / running / failed and the best value so far.

    On a terminal it redraws one status line; elsewhere (CI, logs, ``ray job submit``) it prints
    a line whenever a trial finishes.
    """

    def __init__(self, stage: str, total: int, metric: str, mode: str, quiet: bool = False) -> None:
        self.stage, self.total, self.metric, self.mode, self.quiet = stage, total, metric, mode, quiet
        self.best: float | None = None
        self._last = ""
        self._printed = (0, 0, 0)
        self._status = None
        if not quiet and err_console.is_terminal:
            self._status = err_console.status(f"{stage}: starting Ray trials…")
            self._status.start()

    def update(self, trials: list[Any], result: dict[str, Any] | None = None) -> None:
        counts = {"done": 0, "stopped": 0, "RUNNING": 0, "ERROR": 0}
        for t in trials:
            finished = t.status == "TERMINATED" and Outcome.of(t.last_result).finished
            # TERMINATED without the final report: early-stopped, or killed by an interrupt
            key = ("done" if finished else "stopped") if t.status == "TERMINATED" else t.status
            counts[key] = counts.get(key, 0) + 1
            value = (t.last_result or {}).get(self.metric) if finished else None
            if isinstance(value, (int, float)) and (self.best is None or (
                    value > self.best if self.mode == "max" else value < self.best)):
                self.best = float(value)
        best = f"{self.best:.4f}" if self.best is not None else "—"
        stopped = f", {counts['stopped']} stopped" if counts["stopped"] else ""
        line = (f"{self.stage}: {counts['done']}/{self.total} done, {counts['RUNNING']} running, "
                f"{counts['ERROR']} failed{stopped}; best {self.metric} {best}")
        if self.quiet or line == self._last:
            return
        ended = (counts["done"], counts["stopped"], counts["ERROR"])
        if self._status is not None:
            self._status.update(line)
        elif ended != self._printed:  # a trial ended; one line each, never wrapped (logs are grepped)
            err_console.print(line, highlight=False, soft_wrap=True)
            self._printed = ended
        self._last = line

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            err_console.print(self._last, highlight=False, soft_wrap=True)
            self._status = None
