"""Face budget: quadric edge-collapse decimation with `fast-simplification` (a numpy-only wheel).

Open boundaries are kept in place (no collapse touches a boundary vertex), so holes and open rims do
not shrink. A budget at or above the face count leaves the mesh as it is. If the package is not
installed the mesh is also left as it is, with a warning that says how to install it: every later step
still works, only on more faces. `fast_simplification` keeps its state in module globals, so calls
must not run concurrently (the engine finishes one asset at a time).
"""

from __future__ import annotations

import logging

import numpy as np

from engine.errors import EngineInputError

log = logging.getLogger(__name__)

MIN_FACES = 4


def check_face_budget(face_budget: int) -> int:
    if isinstance(face_budget, bool) or not isinstance(face_budget, int | np.integer) or face_budget < MIN_FACES:
        raise EngineInputError(f"The face budget must be a whole number of at least {MIN_FACES}; got {face_budget!r}.")
    return int(face_budget)


def decimate(
    vertices: np.ndarray,
    faces: np.ndarray,
    face_budget: int,
    *,
    preserve_border: bool = True,
    aggressiveness: float = 7.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce to at most about `face_budget` faces; returns (float32 [V,3], int64 [F,3])."""
    face_budget = check_face_budget(face_budget)
    if face_budget >= len(faces):
        log.info("decimation skipped: %d faces already within the budget of %d", len(faces), face_budget)
        return vertices, faces
    try:
        import fast_simplification
    except ImportError:
        log.warning(
            "fast-simplification is not installed, so the mesh keeps all %d faces (budget %d). "
            "Install it with `pip install fast-simplification` to enable the face budget.",
            len(faces),
            face_budget,
        )
        return vertices, faces
    v, f = fast_simplification.simplify(
        np.ascontiguousarray(vertices, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int32),
        target_count=face_budget,
        agg=aggressiveness,
        preserve_border=preserve_border,
    )
    v, f = np.asarray(v, dtype=np.float32), np.asarray(f, dtype=np.int64)
    if len(f) == 0:
        raise EngineInputError(f"Decimating to {face_budget} faces removed the whole mesh; use a larger face budget.")
    log.info("decimated %d -> %d faces", len(faces), len(f))
    return v, f
