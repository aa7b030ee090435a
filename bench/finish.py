"""Benchmark asset finishing on a 1M-face decoded-like mesh: per-step median seconds and peak memory.

The mesh is a bumpy closed sphere (a subdivided cube, 1,002,252 faces) wound like a decoded TRELLIS.2
mesh (every face turned so its normal points to the negative side of its dominant axis, spec 5.2), with
its attribute volume: a 3-voxel shell at 512^3 coloured by position. Steps as `finish()` runs them:
clean-up, decimation to 200K, orientation, normals, unwrap, bake at 2048^2 and 4096^2, GLB write; then
the whole `finish()` + `write_glb` end to end. Peak memory: numpy's traced peak per step (tracemalloc),
and the process's maximum resident size at the end.

    .venv/bin/python bench/finish.py [--repeat 3] [--faces-side 289] [--budget 200000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.finish import MaterialVolume, finish, write_glb  # noqa: E402
from engine.finish.asset import FinishedAsset  # noqa: E402
from engine.finish.bake import bake  # noqa: E402
from engine.finish.cleanup import clean_mesh, compact  # noqa: E402
from engine.finish.decimate import decimate  # noqa: E402
from engine.finish.orient import orient_faces  # noqa: E402
from engine.finish.topology import face_cross, vertex_normals  # noqa: E402
from engine.finish.unwrap import default_padding, unwrap  # noqa: E402
from tests.test_finish import cube_sphere  # noqa: E402


def decoded_like_mesh(side: int) -> tuple[np.ndarray, np.ndarray]:
    v, f = cube_sphere(side, radius=0.4, bumps=0.08)
    n = face_cross(v.astype(np.float64), f)
    axis = np.argmax(np.abs(n), axis=1)
    flip = n[np.arange(len(f)), axis] > 0
    f[flip] = f[flip][:, ::-1]
    return v, f


def shell_volume(v: np.ndarray, f: np.ndarray, resolution: int = 512) -> MaterialVolume:
    surface = np.concatenate([v, v[f].mean(1)])  # vertices and face centres: denser than a voxel
    base = np.unique(np.floor((surface + 0.5) * resolution).astype(np.int64), axis=0)
    offs = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = np.unique((base[:, None] + offs[None]).reshape(-1, 3), axis=0)
    p = (coords + 0.5) / resolution - 0.5
    attrs = np.stack(
        [
            0.5 + 0.5 * np.sin(9 * p[:, 0]),
            0.5 + 0.5 * np.sin(7 * p[:, 1] + 1),
            (p[:, 2] > 0).astype(np.float64),
            (p[:, 0] > 0.1).astype(np.float64),
            0.3 + 0.4 * (p[:, 1] > 0),
            np.ones(len(p)),
        ],
        1,
    )
    return MaterialVolume(coords.astype(np.int32), attrs.astype(np.float32), resolution)


def timed(results: dict, label: str, fn, *args, **kwargs):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results.setdefault(label, []).append((dt, peak))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--faces-side", type=int, default=289)
    ap.add_argument("--budget", type=int, default=200_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    args = ap.parse_args()

    t = time.perf_counter()
    v, f = decoded_like_mesh(args.faces_side)
    volume = shell_volume(v, f)
    print(f"input: {len(f):,} faces, {len(v):,} vertices, {len(volume.coords):,} voxels at 512^3 "
          f"(built in {time.perf_counter() - t:.1f} s)")  # fmt: skip

    res: dict = {}
    out = Path(tempfile.mkdtemp())
    for _ in range(args.repeat):
        cv, cf, _ = timed(res, "clean-up", clean_mesh, v, f)
        dv, df = timed(res, f"decimate -> {args.budget // 1000}K", decimate, cv, cf, args.budget)
        dv, df, _ = compact(dv, df)
        df, _ = timed(res, "orient", orient_faces, dv, df)
        normals = timed(res, "normals", vertex_normals, dv, df)
        for size in args.sizes:
            pad = default_padding(size)
            mesh = timed(res, f"unwrap {size}", unwrap, dv, df, size, padding=pad)
            maps = timed(res, f"bake {size}^2", bake, mesh, volume, size, padding=pad)
            asset = FinishedAsset(
                mesh.vertices, mesh.faces, normals[mesh.vmap], mesh.uvs, maps.base_color, maps.metallic_roughness,
                "OPAQUE", False,
            )  # fmt: skip
            timed(res, f"GLB write {size}", write_glb, asset, out / f"step_{size}.glb")
        for size in args.sizes:
            asset = timed(res, f"WHOLE finish {size}", finish, v, f, volume, face_budget=args.budget, texture_size=size)
            timed(res, f"WHOLE finish {size}", write_glb, asset, out / f"whole_{size}.glb")

    print(f"{'step':<24}{'median s':>10}{'numpy peak MiB':>16}")
    for label, runs in res.items():
        if label.startswith("WHOLE"):
            per_rep = [sum(dt for dt, _ in runs[i : i + 2]) for i in range(0, len(runs), 2)]
            peak = max(p for _, p in runs)
        else:
            per_rep, peak = [dt for dt, _ in runs], max(p for _, p in runs)
        print(f"{label:<24}{statistics.median(per_rep):>10.2f}{peak / 2**20:>16.0f}")
    for size in args.sizes:
        print(f"GLB {size}: {(out / f'whole_{size}.glb').stat().st_size / 2**20:.1f} MiB")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
