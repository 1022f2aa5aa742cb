"""tunebudget: find the best way to train a network inside a fixed wall-clock budget."""

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy, load_policy, policy_from_dict, save_policy

__version__ = "0.1.0"

__all__ = ["BudgetPolicy", "TuneBudgetError", "load_policy", "policy_from_dict", "save_policy", "__version__"]
