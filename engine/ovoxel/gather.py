"""1-D gathers for the converters' hot loops.

`take(values, index)` equals `values[index]` for a 1-D array. It goes through torch's index_select,
which on one CPU thread is about 3x faster than numpy's fancy indexing or `np.take` (measured on this
project's 2-core machine: 30 gathers of 1.6M floats, 208 ms with np.take, 69 ms with index_select).
"""

from __future__ import annotations

import numpy as np
import torch


def take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index] for a 1-D `values` and an integer `index` array (a new contiguous array)."""
    return torch.from_numpy(np.ascontiguousarray(values)).index_select(0, torch.from_numpy(index)).numpy()
