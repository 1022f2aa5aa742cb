"""Console output: a progress bar of the budget being spent, and run summaries (rich)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunebudget.policy import BudgetPolicy

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
