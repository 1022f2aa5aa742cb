"""tunebudget: find the best way to train a network inside a fixed wall-clock budget.

The public API: a :class:`BudgetPolicy` (load, validate, save), :func:`train` to train with one (on the
policy's data or your own, with its model or your own), :func:`load_trained` to load a model saved
by ``tunebudget train --save DIR`` or ``result.save(DIR)``, and :class:`Recipe`, the policy's LR and
selection for a training loop of your own. Everything else is private.
"""

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy, load_policy, policy_from_dict, save_policy
from tunebudget.version import __version__


def __getattr__(name: str):
    """``train``, ``load_trained`` and the result types import torch: loaded on first use, so that
    ``import tunebudget`` (and policy validation) stays light."""
    if name == "train":
        from tunebudget.api import train

        return train
    if name in ("load_trained", "Trained"):
        from tunebudget import saved

        return getattr(saved, name)
    if name == "load_data":
        from tunebudget.data import load_data

        return load_data
    if name == "Recipe":
        from tunebudget.recipe import Recipe

        return Recipe
    if name == "TrainResult":
        from tunebudget.trainer import TrainResult

        return TrainResult
    raise AttributeError(f"module 'tunebudget' has no attribute {name!r}")


__all__ = ["BudgetPolicy", "Recipe", "TrainResult", "Trained", "TuneBudgetError", "load_data", "load_policy", "load_trained",
           "policy_from_dict", "save_policy", "train", "__version__"]
