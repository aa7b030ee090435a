"""SparseTensor: active voxels as int32 coords `[N, 4]` = (batch, x, y, z) and feats `[N, C]`.

Rows of one batch item are contiguous and items appear in increasing batch order (the official
contract). Everything derived from the coordinates alone (batch layout, neighbour tables, resampling
maps, RoPE phases) lives in a cache object that tensors with the same coords share, so a chain of
convolutions over one voxel set builds its neighbour table once.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import EngineInputError

# Coordinates are packed into one int64 key per voxel: 16 bits per axis, 15 bits of batch index.
COORD_BITS = 16
MAX_COORD = 1 << COORD_BITS
MAX_BATCH = 1 << 15


class CoordCache:
    """Per-coordinate-set memo: `get(key, build)` computes once and keeps the value."""

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}

    def get(self, key: Any, build):
        if key not in self._values:
            self._values[key] = build()
        return self._values[key]

    def put(self, key: Any, value: Any) -> None:
        self._values[key] = value

    def peek(self, key: Any, default: Any = None) -> Any:
        return self._values.get(key, default)


def _validate(feats: torch.Tensor, coords: torch.Tensor) -> None:
    if not isinstance(coords, torch.Tensor) or coords.dtype != torch.int32:
        got = coords.dtype if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise EngineInputError(f"sparse coords must be an int32 tensor, got {got}; use coords.int()")
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise EngineInputError(f"sparse coords must have shape [N, 4] (batch, x, y, z), got {list(coords.shape)}")
    if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
        raise EngineInputError(
            f"sparse feats must have shape [N, C] with N = {coords.shape[0]} rows, got {list(feats.shape)}"
        )
    if coords.shape[0] == 0:
        return
    lo = int(coords.min())
    hi = int(coords[:, 1:].max())
    if lo < 0 or hi >= MAX_COORD:
        raise EngineInputError(f"sparse coords must lie in [0, {MAX_COORD}), got values from {lo} to {hi}")
    batch = coords[:, 0]
    if int(batch.max()) >= MAX_BATCH:
        raise EngineInputError(f"at most {MAX_BATCH} batch items are supported")
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise EngineInputError("sparse coords must keep each batch item's rows together, in increasing batch order")


class SparseTensor:
    """Feats on active voxels. Immutable by convention: operations return new tensors via `replace`."""

    __slots__ = ("feats", "coords", "cache")

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        cache: CoordCache | None = None,
        *,
        validate: bool = True,
    ) -> None:
        if validate:
            _validate(feats, coords)
        self.feats = feats
        self.coords = coords
        self.cache = cache if cache is not None else CoordCache()

    # -- construction -------------------------------------------------------------------------
    def replace(self, feats: torch.Tensor, coords: torch.Tensor | None = None) -> SparseTensor:
        """New feats on the same voxels (sharing the cache), or on new coords (fresh cache)."""
        if coords is None:
            if feats.shape[0] != self.coords.shape[0]:
                raise EngineInputError(f"replace: expected {self.coords.shape[0]} rows, got {feats.shape[0]}")
            return SparseTensor(feats, self.coords, self.cache, validate=False)
        return SparseTensor(feats, coords)

    # -- properties ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.feats.shape[0], self.feats.shape[1])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens)

    @property
    def seq_lens(self) -> list[int]:
        """Rows per batch item (items with no rows below the largest index count as 0)."""

        def build() -> list[int]:
            if self.coords.shape[0] == 0:
                return []
            return torch.bincount(self.coords[:, 0].long()).tolist()

        return self.cache.get("seq_lens", build)

    @property
    def layout(self) -> list[slice]:
        """Row slice of each batch item."""

        def build() -> list[slice]:
            out, start = [], 0
            for n in self.seq_lens:
                out.append(slice(start, start + n))
                start += n
            return out

        return self.cache.get("layout", build)

    @property
    def batch_index(self) -> torch.Tensor:
        """int64 `[N]` batch item of each row."""
        return self.cache.get("batch_index", lambda: self.coords[:, 0].long())

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Per-axis max coordinate + 1 (the official default when nothing else is known)."""

        def build() -> tuple[int, int, int]:
            if self.coords.shape[0] == 0:
                return (0, 0, 0)
            return tuple(int(v) + 1 for v in self.coords[:, 1:].max(dim=0).values)

        return self.cache.get("spatial_shape", build)

    # -- conversions --------------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SparseTensor:
        feats = self.feats.to(device=device, dtype=dtype)
        coords = self.coords.to(device=device) if device is not None else self.coords
        if coords is self.coords:
            return SparseTensor(feats, coords, self.cache, validate=False)
        return SparseTensor(feats, coords, validate=False)

    def type(self, dtype: torch.dtype) -> SparseTensor:
        if self.feats.dtype == dtype:
            return self
        return self.replace(self.feats.to(dtype))

    def __repr__(self) -> str:
        n, c = self.feats.shape
        return f"SparseTensor(N={n}, C={c}, batch={self.batch_size}, dtype={self.dtype})"


def sort_key(coords: torch.Tensor) -> torch.Tensor:
    """int64 key that orders rows lexicographically by (batch, x, y, z)."""
    c = coords.long()
    b = COORD_BITS
    return (((c[:, 0] << b | c[:, 1]) << b | c[:, 2]) << b) | c[:, 3]


def sorted_order(coords: torch.Tensor) -> torch.Tensor:
    """Permutation that sorts rows by (batch, x, y, z)."""
    return torch.argsort(sort_key(coords))
