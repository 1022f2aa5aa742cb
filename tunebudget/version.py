"""tunebudget's version (pyproject.toml's ``version``): what saved models and rendered cluster files record."""

__version__ = "0.1.0"
