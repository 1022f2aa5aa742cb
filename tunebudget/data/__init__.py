"""Data sets as tensors resident on the training device; a batch is an index lookup.

Every data set is loaded once, split with a fixed seed into train / validation / test, normalised
with statistics of the training split, and moved to the device; the trainer draws batches as
``x[idx]``, so selective sampling is just choosing that index tensor. The built-in data sets are
the entries of :data:`tunebudget.registry.DATASETS` (sources in ``idx``, ``flat``, ``vision``);
``package.module:factory`` is your own data (``own``); ``load`` assembles, ``regimes`` and
``augment`` change the training data.
"""

from tunebudget.data.augment import augment_batch
from tunebudget.data.bundle import DataBundle, RawData, Split, digest
from tunebudget.data.idx import find_fashion_mnist
from tunebudget.data.load import _load_raw, load_data, standardise
from tunebudget.data.own import parse_own_data, user_data
from tunebudget.data.regimes import apply_regime

__all__ = ["DataBundle", "RawData", "Split", "_load_raw", "apply_regime", "augment_batch", "digest",
           "find_fashion_mnist", "load_data", "parse_own_data", "standardise", "user_data"]
