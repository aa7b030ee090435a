"""The O-Voxel value, mesh <-> O-Voxel conversion with input checks, and .npz (or .vxz) save/load.

An `OVoxel` holds one sparse set of voxels at resolution R inside a box (default [-0.5, 0.5]^3):
geometry as flexible-dual-grid offsets and edge flags (spec 5.1), optionally PBR attributes in the
same rows. Rows are sorted by (x, y, z).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import EngineInputError
from engine.ovoxel.extract import flexible_dual_grid_to_mesh
from engine.ovoxel.voxelize import mesh_to_flexible_dual_grid

log = logging.getLogger(__name__)

UNIT_BOX = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
MAX_RESOLUTION = 2048


@dataclass
class MeshData:
    """A triangle mesh as plain numpy, in the coordinates of the box it came from."""

    vertices: np.ndarray  # float32 [V, 3]
    faces: np.ndarray  # int64 [F, 3]


@dataclass
class OVoxel:
    """One O-Voxel asset. `offsets` are dual-vertex positions in voxel units from each voxel's min corner."""

    coords: np.ndarray  # int32 [N, 3], sorted by (x, y, z)
    offsets: np.ndarray  # float32 [N, 3]
    flags: np.ndarray  # bool [N, 3]: the surface crosses the voxel's upper-corner x / y / z edge
    resolution: int
    aabb: tuple = UNIT_BOX
    attrs: np.ndarray | None = None  # float32 [N, C] in [0, 1], columns named by `layout`
    layout: dict[str, slice] = field(default_factory=dict)
    dropped_faces: int = 0  # zero-area input faces left out of the conversion

    @property
    def voxel_size(self) -> np.ndarray:
        box = np.asarray(self.aabb, dtype=np.float32)
        return (box[1] - box[0]) / np.float32(self.resolution)

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def dual_vertices(self) -> np.ndarray:
        """float32 [N, 3] dual vertices in the box's coordinates."""
        box = np.asarray(self.aabb, dtype=np.float32)
        return (self.coords.astype(np.float32) + self.offsets) * self.voxel_size + box[0]

    def attribute(self, name: str) -> np.ndarray:
        if self.attrs is None or name not in self.layout:
            raise EngineInputError(f"this O-Voxel has no attribute {name!r} (it has {sorted(self.layout)})")
        return self.attrs[:, self.layout[name]]


# --- input checks -----------------------------------------------------------------------------------


def check_resolution(resolution) -> int:
    r = int(resolution) if isinstance(resolution, (int, np.integer)) else -1
    if r < 2 or r > MAX_RESOLUTION or r & (r - 1):
        raise EngineInputError(
            f"O-Voxel resolution must be a power of two between 2 and {MAX_RESOLUTION}, got {resolution!r}"
        )
    return r


def check_mesh(vertices, faces, aabb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float32 vertices [V, 3], int64 faces [F, 3] without zero-area faces, and the mask of
    faces kept. Raises EngineInputError with what to fix."""
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise EngineInputError(f"expected vertices [V, 3] and triangle faces [F, 3], got {v.shape} and {f.shape}")
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise EngineInputError("the mesh is empty (no vertices or no faces); nothing to convert")
    if not np.issubdtype(f.dtype, np.integer):
        raise EngineInputError(f"faces must hold integer vertex indices, got {f.dtype}")
    v = v.astype(np.float32)
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v).all(axis=1)).sum())
        raise EngineInputError(f"{bad} vertices are NaN or infinite; fix or remove them before converting")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise EngineInputError(
            f"faces index vertices {f.min()}..{f.max()} but the mesh has {v.shape[0]} vertices (0-based indices)"
        )
    box = np.asarray(aabb, dtype=np.float32).reshape(2, 3)
    if not (box[1] > box[0]).all():
        raise EngineInputError(f"aabb must be [[min x, y, z], [max x, y, z]] with max > min, got {aabb!r}")
    # a face misses the box when its 3 corners are beyond the same side: AND of per-vertex side bits
    side = np.zeros(v.shape[0], dtype=np.uint8)
    for axis in range(3):
        side |= (v[:, axis] < box[0, axis]).view(np.uint8) << axis
        side |= (v[:, axis] > box[1, axis]).view(np.uint8) << (axis + 3)
    if side.any() and (side[f[:, 0]] & side[f[:, 1]] & side[f[:, 2]]).all():
        raise EngineInputError(
            f"the mesh lies entirely outside the conversion box {box.tolist()}; normalise it into the box first"
        )
    p0, p1, p2 = (np.take(v, f[:, i], axis=0) for i in range(3))
    e0, e1 = p1 - p0, p2 - p1
    # float32 zero normal (the converter's own cross product): no plane, dropped
    keep = (e0[:, 1] * e1[:, 2] != e0[:, 2] * e1[:, 1]) | (e0[:, 2] * e1[:, 0] != e0[:, 0] * e1[:, 2])
    keep |= e0[:, 0] * e1[:, 1] != e0[:, 1] * e1[:, 0]
    if not keep.any():
        raise EngineInputError("every face of the mesh has zero area; nothing to convert")
    return v, f[keep], keep


# --- conversion -------------------------------------------------------------------------------------


def from_mesh(
    vertices,
    faces,
    resolution: int,
    *,
    aabb=UNIT_BOX,
    face_weight: float = 1.0,
    boundary_weight: float = 0.2,
    regularization_weight: float = 0.01,
    material=None,
) -> OVoxel:
    """Convert a triangle soup (any topology: open, non-manifold, nested) to an O-Voxel.

    The defaults are the weights every official caller uses. Zero-area faces are dropped (counted in
    `dropped_faces`). Pass `material` (an `engine.ovoxel.TexturedMesh` description of the same faces)
    to also sample PBR attributes into the voxels.
    """
    r = check_resolution(resolution)
    v, f, keep = check_mesh(vertices, faces, aabb)
    dropped = int((~keep).sum())
    if dropped:
        log.info("dropped %d zero-area faces of %d", dropped, keep.size)
    coords, dual, flags, *pairs = mesh_to_flexible_dual_grid(
        v, f, r, aabb, face_weight=face_weight, boundary_weight=boundary_weight,
        regularization_weight=regularization_weight, return_pairs=material is not None,
    )  # fmt: skip
    if coords.shape[0] == 0:
        raise EngineInputError(
            f"the mesh crosses no grid edge at resolution {r}: it is too small for this resolution or lies "
            "outside the box; scale it to fill the box or raise the resolution"
        )
    box = np.asarray(aabb, dtype=np.float32).reshape(2, 3)
    offsets = (dual / ((box[1] - box[0]) / np.float32(r)) - coords).astype(np.float32)
    ovoxel = OVoxel(coords, offsets, flags, r, tuple(map(tuple, box.tolist())), dropped_faces=dropped)
    if material is not None:
        from engine.ovoxel.attributes import voxel_attributes

        material = material.subset(keep) if dropped else material
        ovoxel.attrs, ovoxel.layout = voxel_attributes(v, f, material, coords, r, box, pairs=pairs[0])
    return ovoxel


def to_mesh(ovoxel: OVoxel, split_weight: np.ndarray | None = None) -> MeshData:
    """The O-Voxel's surface: one vertex per voxel, two triangles per flagged edge (spec 5.2).

    Without `split_weight` the quads are split the way the official no-weight path does."""
    vertices, faces = flexible_dual_grid_to_mesh(
        torch.from_numpy(np.ascontiguousarray(ovoxel.coords)),
        torch.from_numpy(np.ascontiguousarray(ovoxel.offsets)),
        torch.from_numpy(np.ascontiguousarray(ovoxel.flags)),
        None if split_weight is None else torch.as_tensor(split_weight, dtype=torch.float32),
        aabb=ovoxel.aabb,
        grid_size=ovoxel.resolution,
    )
    return MeshData(vertices.numpy(), faces.numpy())


# --- files ------------------------------------------------------------------------------------------


def save(ovoxel: OVoxel, path, **options) -> None:
    """Write an .npz file (numpy arrays and a JSON header; no pickles), or the official .vxz container
    when `path` ends in .vxz (`options` go to `engine.ovoxel.vxz.write_vxz`; values become uint8)."""
    if Path(path).suffix.lower() == ".vxz":
        from engine.ovoxel.vxz import write_vxz

        return write_vxz(ovoxel, path, **options)
    if options:
        raise EngineInputError(f"options {sorted(options)} apply to .vxz files only, not {path}")
    header = {
        "format": "engine.ovoxel/1",
        "resolution": ovoxel.resolution,
        "aabb": [list(map(float, row)) for row in ovoxel.aabb],
        "layout": {k: [s.start, s.stop] for k, s in ovoxel.layout.items()},
        "dropped_faces": ovoxel.dropped_faces,
    }
    arrays = {"coords": ovoxel.coords, "offsets": ovoxel.offsets, "flags": ovoxel.flags}
    if ovoxel.attrs is not None:
        arrays["attrs"] = ovoxel.attrs
    np.savez_compressed(Path(path), header=np.array(json.dumps(header)), **arrays)


def load(path, **options) -> OVoxel:
    """Read a file written by `save` (.npz), or any .vxz (`options`, e.g. resolution=, go to `read_vxz`)."""
    if Path(path).suffix.lower() == ".vxz":
        from engine.ovoxel.vxz import read_vxz

        return read_vxz(path, **options)
    if options:
        raise EngineInputError(f"options {sorted(options)} apply to .vxz files only, not {path}")
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            arrays = {k: data[k] for k in data.files if k != "header"}
    except (OSError, ValueError, KeyError) as exc:
        raise EngineInputError(f"{path} is not an O-Voxel .npz written by engine.ovoxel.save ({exc})") from exc
    if header.get("format") != "engine.ovoxel/1":
        raise EngineInputError(f"{path}: unknown O-Voxel format {header.get('format')!r}")
    return OVoxel(
        coords=arrays["coords"].astype(np.int32),
        offsets=arrays["offsets"].astype(np.float32),
        flags=arrays["flags"].astype(bool),
        resolution=check_resolution(header["resolution"]),
        aabb=tuple(tuple(row) for row in header["aabb"]),
        attrs=arrays.get("attrs"),
        layout={k: slice(a, b) for k, (a, b) in header["layout"].items()},
        dropped_faces=int(header.get("dropped_faces", 0)),
    )
