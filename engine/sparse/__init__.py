"""Sparse voxel tensors and the operations the TRELLIS.2 networks run on them."""

from engine.sparse.tensor import CoordCache, SparseTensor, sort_key, sorted_order

__all__ = ["CoordCache", "SparseTensor", "sort_key", "sorted_order"]
