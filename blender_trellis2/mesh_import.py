"""numpy -> Blender mesh: whole arrays through `foreach_set`, never a per-vertex Python loop.

The finished asset splits vertices along UV seams (one UV per vertex, glTF style). Blender keeps UVs per
face corner, so the copies are welded back into one vertex (they sit at bit-identical positions): the
result is a connected mesh an artist can edit, and smooth shading needs no custom normals.
"""

from __future__ import annotations

import bpy
import numpy as np

UV_LAYER = "UVMap"
CORNER_VERT = ".corner_vert"  # the corner -> vertex attribute (Blender 4.0+)


def weld(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique positions `[U, 3]` and, per input vertex, its index in them (exact bit equality)."""
    bits = np.ascontiguousarray(vertices, dtype=np.float32).view(np.int32)  # [V, 3] exact keys
    order = np.lexsort((bits[:, 2], bits[:, 1], bits[:, 0]))
    s = bits[order]
    new = np.ones(len(s), dtype=bool)
    new[1:] = (s[1:] != s[:-1]).any(axis=1)
    remap = np.empty(len(s), dtype=np.int64)
    remap[order] = np.cumsum(new) - 1
    return np.ascontiguousarray(vertices[order[new]], dtype=np.float32), remap


def build_mesh(
    name: str, vertices: np.ndarray, faces: np.ndarray, corner_uvs: np.ndarray | None = None
) -> bpy.types.Mesh:
    """A triangle mesh from `vertices` [V, 3] and `faces` [F, 3], with optional per-corner UVs [3F, 2]."""
    faces = np.asarray(faces, dtype=np.int32)
    n_faces = len(faces)
    mesh = bpy.data.meshes.new(name)
    # Whole arrays into the generic attributes: the same data as `vertices.co` / `loops.vertex_index`,
    # several times faster to write than through the legacy MeshVertex / MeshLoop wrappers.
    mesh.vertices.add(len(vertices))
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(vertices, np.float32).reshape(-1))
    mesh.loops.add(3 * n_faces)
    corner_vert = mesh.attributes.get(CORNER_VERT)
    if corner_vert is not None:
        corner_vert.data.foreach_set("value", faces.reshape(-1))
    else:  # a Blender that stores corners differently: the documented (slower) path
        mesh.loops.foreach_set("vertex_index", faces.reshape(-1))
    mesh.polygons.add(n_faces)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))
    if corner_uvs is not None:
        mesh.uv_layers.new(name=UV_LAYER)
        mesh.attributes[UV_LAYER].data.foreach_set("vector", np.ascontiguousarray(corner_uvs, np.float32).reshape(-1))
    mesh.update()  # builds the edges
    return mesh


def mesh_from_asset(name: str, asset, size: float | None = None, on_ground: bool = True) -> bpy.types.Mesh:
    """The `FinishedAsset` (Z-up, inside the unit cube) as a welded, smooth-shaded mesh in metres.

    `size` scales the mesh so its longest side measures that many metres (None: the engine's unit cube);
    `on_ground` moves it so its bounding box sits on z = 0, centred on the object origin: placed at the
    3D cursor, the object stands on it. The scale lives in the vertices: the object transform stays clean.
    """
    positions, remap = weld(asset.vertices)
    if len(positions):
        lo, hi = positions.min(axis=0), positions.max(axis=0)
        if size is not None:
            scale = np.float32(size / max(float((hi - lo).max()), 1e-12))
            positions, lo, hi = positions * scale, lo * scale, hi * scale
        if on_ground:
            positions -= np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=np.float32)
    mesh = build_mesh(name, positions, remap[asset.faces], asset.blender_uvs())
    mesh.shade_smooth()
    return mesh


def mesh_arrays(mesh: bpy.types.Mesh) -> dict[str, np.ndarray]:
    """Positions, triangle corners and UVs back out of a mesh (tests and comparisons)."""
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    corners = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corners)
    out = {"vertices": co.reshape(-1, 3), "corners": corners}
    if mesh.uv_layers:
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        mesh.uv_layers[0].data.foreach_get("uv", uv)
        out["uvs"] = uv.reshape(-1, 2)
    return out
