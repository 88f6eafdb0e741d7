"""The shuffled item order of an epoch: numpy only, so the Ray Data processes that plan a stream's rows
(its read tasks, split coordinator and dataset manager) never import torch."""

from __future__ import annotations

import numpy as np


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled item order of one epoch (the same on every node and rerun): the Ray Data stream and the
    in-process loop (``kdtrack.engine.train_in_process``) both walk it."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)
