"""Benchmark importing a 1M-face finished asset with 4096^2 maps into Blender (bpy 5.0 module).

The asset is synthetic (a wavy sheet of 1,000,000+ triangles cut into 32x32-quad UV charts, so ~6% of the
vertices are seam copies, like a finished TRELLIS.2 asset) with smooth-plus-noise 4096^2 maps. Timed:
- worker thread: `work.encode_maps` (PNG encoding; off the main thread in the add-on);
- main thread: `mesh_import.mesh_from_asset` (weld + foreach_set), `materials.build_material` (packing
  the PNG bytes), and their sum: what freezes Blender when a generation lands (goal: under 3 s);
- for reference: Blender decoding the packed base-colour map the first time pixels are needed.

    .venv/bin/python bench/blender_import.py [--repeat 3] [--side 708] [--texture 4096]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bpy  # noqa: E402

from blender_trellis2 import materials, mesh_import, work  # noqa: E402
from engine.finish.asset import FinishedAsset  # noqa: E402

CHART = 32  # quads per chart side


def synthetic_asset(side: int, texture: int, seed: int = 0) -> FinishedAsset:
    """`side` x `side` quads (2 side^2 triangles) with per-chart vertex copies and uint8 maps."""
    rng = np.random.default_rng(seed)
    q = np.arange(side)
    qi, qj = np.meshgrid(q, q, indexing="ij")  # quad (i, j)
    chart = (qi // CHART) * ((side + CHART - 1) // CHART) + qj // CHART
    # every chart owns its own (CHART+1)^2 corner vertices: seam vertices are duplicated between charts
    ci, cj = qi % CHART, qj % CHART
    per = (CHART + 1) ** 2
    base = chart * per
    v00 = base + ci * (CHART + 1) + cj
    v10, v01, v11 = v00 + CHART + 1, v00 + 1, v00 + CHART + 2
    faces = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)]).reshape(-1, 3)
    n_charts = int(chart.max()) + 1
    k = np.arange(n_charts * per)
    c, local = k // per, k % per
    charts_per_row = (side + CHART - 1) // CHART
    gi = (c // charts_per_row) * CHART + local // (CHART + 1)
    gj = (c % charts_per_row) * CHART + local % (CHART + 1)
    x, y = gi / side - 0.5, gj / side - 0.5
    z = 0.05 * np.sin(12 * x) * np.cos(9 * y)
    vertices = np.stack([x, y, z], -1).astype(np.float32)
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    vertices, faces = vertices[used], remap[faces]
    uvs = np.stack([gi[used], gj[used]], -1).astype(np.float32) / side
    normals = np.tile(np.array([0, 0, 1], np.float32), (len(vertices), 1))
    ramp = np.linspace(0, 255, texture, dtype=np.float32)
    smooth = (ramp[:, None] * 0.6 + ramp[None, :] * 0.4)[..., None]
    noise = rng.integers(-3, 4, size=(texture, texture, 3))
    base_color = np.concatenate(
        [np.clip(smooth + noise, 0, 255).astype(np.uint8), np.full((texture, texture, 1), 255, np.uint8)], -1
    )
    mr = np.stack([np.full_like(ramp, 255)[:, None].repeat(texture, 1), smooth[..., 0], smooth[..., 0].T], -1)
    return FinishedAsset(
        vertices=vertices,
        faces=faces,
        normals=normals,
        uvs=uvs,
        base_color=base_color,
        metallic_roughness=mr.astype(np.uint8),
        alpha_mode="OPAQUE",
        double_sided=True,
    )


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--side", type=int, default=708, help="quads per side (708 -> 1,002,528 triangles)")
    parser.add_argument("--texture", type=int, default=4096)
    args = parser.parse_args()

    asset = synthetic_asset(args.side, args.texture)
    print(f"asset: {len(asset.faces):,} faces, {len(asset.vertices):,} vertices, maps {args.texture}^2")
    rows: dict[str, list[float]] = {"encode maps (worker)": [], "mesh": [], "material": [], "main thread total": []}
    decode: list[float] = []
    for _ in range(args.repeat):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        maps, t_enc = timed(work.encode_maps, asset)
        mesh, t_mesh = timed(mesh_import.mesh_from_asset, "bench", asset)
        material, t_mat = timed(materials.build_material, "bench", maps)
        for key, value in zip(rows, (t_enc, t_mesh, t_mat, t_mesh + t_mat), strict=True):
            rows[key].append(value)
        image = materials.material_images(material)[0]
        px = np.empty(args.texture * args.texture * 4, np.float32)
        t = time.perf_counter()
        image.pixels.foreach_get(px)
        decode.append(time.perf_counter() - t)
        assert len(mesh.polygons) == len(asset.faces)
    print(f"{'step':<24}{'median s':>10}{'min s':>10}")
    for key, values in rows.items():
        print(f"{key:<24}{statistics.median(values):>10.3f}{min(values):>10.3f}")
    print(f"{'(first decode, lazy)':<24}{statistics.median(decode):>10.3f}{min(decode):>10.3f}")
    total = statistics.median(rows["main thread total"])
    print(f"main thread total / 3 s goal: {total / 3.0:.2f}")
    print(
        f"maps: base colour {len(maps.base_color_png) / 1e6:.1f} MB, metallic-roughness "
        f"{len(maps.metallic_roughness_png) / 1e6:.1f} MB PNG"
    )


if __name__ == "__main__":
    main()
