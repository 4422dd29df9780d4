"""One call that makes a training run repeatable: same seed, same numbers.

Every source of randomness a run touches is seeded from one integer: Python's
``random``, NumPy's global state, torch (CPU and CUDA), and the DataLoader
shuffling generator. Torch is also told to use deterministic kernels and a
fixed number of threads, because reductions split across a different number of
threads add floating-point numbers in a different order.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_THREADS = 2


def seed_everything(seed: int, threads: int | None = DEFAULT_THREADS) -> None:
    """Seed python, numpy and torch; switch torch to deterministic algorithms and fixed threads."""
    import torch

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU on the CI machines
        torch.cuda.manual_seed_all(seed)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    log.debug("seeded everything with %d (torch threads %s)", seed, torch.get_num_threads())


def torch_generator(seed: int):  # -> torch.Generator
    """A private torch generator (DataLoader shuffling, augmentation) so other code cannot shift its stream."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g


def numpy_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """A NumPy generator for one named purpose (``stream``) of a run seeded with ``seed``."""
    return np.random.default_rng([seed, stream])
