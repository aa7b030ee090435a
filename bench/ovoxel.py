"""O-Voxel conversion benchmark: mesh -> O-Voxel (geometry, and with PBR attributes) and O-Voxel -> mesh.

Meshes: Blender's Suzanne subdivided to 251,904 triangles (the official benchmark mesh) and to
1,007,616 triangles, built with bpy. Each configuration runs in its own process so its peak memory
(ru_maxrss) is its own. Prints medians next to the official C++ converter (one thread) and the ratio.

    .venv/bin/python bench/ovoxel.py                      # 256 and 512, both meshes, 1 and all threads
    .venv/bin/python bench/ovoxel.py --res 1024 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OFFICIAL_GEOMETRY_S = {256: 0.22, 512: 0.70, 1024: 3.1}  # official C++ converter, 1 thread, 251,904 faces
MESHES = {"suzanne_252k": 4, "suzanne_1m": 5}


def build_mesh(level: int, cache: Path):
    """Suzanne subdivided `level` times, triangulated, scaled into the box; with per-corner UVs."""
    path = cache / f"suzanne_l{level}.npz"
    if not path.exists():
        import bpy

        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.mesh.primitive_monkey_add()
        obj = bpy.context.active_object
        mod = obj.modifiers.new("subdivision", "SUBSURF")
        mod.levels = mod.render_levels = level
        mesh = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
        mesh.calc_loop_triangles()
        v = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", v)
        f = np.empty(len(mesh.loop_triangles) * 3, np.int64)
        mesh.loop_triangles.foreach_get("vertices", f)
        loops = np.empty(len(mesh.loop_triangles) * 3, np.int64)
        mesh.loop_triangles.foreach_get("loops", loops)
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        mesh.uv_layers.active.data.foreach_get("uv", uv)
        v = v.reshape(-1, 3)
        v = (v - (v.max(0) + v.min(0)) / 2) / np.abs(v).max() * 0.45
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, v=v.astype(np.float32), f=f.reshape(-1, 3), uv=uv.reshape(-1, 2)[loops].reshape(-1, 3, 2))
    data = np.load(path)
    return data["v"], data["f"], data["uv"]


def checker_material():
    from engine.ovoxel import Material

    tex = np.zeros((1024, 1024, 3), np.uint8)
    yy, xx = np.mgrid[:1024, :1024]
    tex[..., 0] = ((xx // 64 + yy // 64) % 2) * 255
    tex[..., 1] = xx // 4
    tex[..., 2] = yy // 4
    mr = np.full((256, 256, 3), 128, np.uint8)
    return Material(base_color_texture=tex, metallic_roughness_texture=mr)


def child(mesh: str, res: int, threads: int, repeat: int, mode: str, cache: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    from engine import ovoxel

    v, f, uv = build_mesh(MESHES[mesh], cache)
    out = {"mesh": mesh, "faces": int(f.shape[0]), "res": res, "threads": threads, "mode": mode}
    material = ovoxel.TexturedMesh([checker_material()], uvs=uv) if mode == "pbr" else None
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        vox = ovoxel.from_mesh(v, f, res, material=material)
        times.append(time.perf_counter() - t)
    out["to_ovoxel_s"] = statistics.median(times)
    out["voxels"] = vox.num_voxels
    if mode == "geometry":
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            m = ovoxel.to_mesh(vox)
            times.append(time.perf_counter() - t)
        out["to_mesh_s"] = statistics.median(times)
        out["out_faces"] = int(m.faces.shape[0])
        if res <= 512 and threads == 1 and mesh == "suzanne_252k":
            from tests.ovoxel_shapes import reconstruction_metrics

            out["quality"] = reconstruction_metrics(v, f, m.vertices, m.faces, res)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--mesh", nargs="+", default=list(MESHES), choices=list(MESHES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--mode", nargs="+", default=["geometry", "pbr"], choices=["geometry", "pbr"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench_ovoxel"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mesh, res, threads, mode = args.child.split(",")
        print(json.dumps(child(mesh, int(res), int(threads), args.repeat, mode, args.cache)))
        return

    print(f"{'mesh':14} {'res':>5} {'thr':>3} {'mode':8} {'voxels':>9} {'to O-Voxel s':>12} {'official s':>10} "
          f"{'ratio':>6} {'to mesh s':>9} {'peak GB':>7}  quality")  # fmt: skip
    for mesh in args.mesh:
        for res in args.res:
            for threads in sorted(set(args.threads)):
                for mode in args.mode:
                    cmd = [sys.executable, __file__, "--child", f"{mesh},{res},{threads},{mode}"]
                    cmd += ["--repeat", str(args.repeat), "--cache", str(args.cache)]
                    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                    if run.returncode:
                        print(f"{mesh} {res} {threads} {mode}: failed\n{run.stderr[-2000:]}")
                        continue
                    r = json.loads(run.stdout.strip().splitlines()[-1])
                    official = OFFICIAL_GEOMETRY_S.get(res) if mesh == "suzanne_252k" else None
                    ratio = f"{r['to_ovoxel_s'] / official:6.1f}" if official else "     -"
                    quality = r.get("quality")
                    q = ", ".join(f"{k} {x:.4f}" for k, x in quality.items()) if quality else ""
                    to_mesh = f"{r['to_mesh_s']:9.3f}" if "to_mesh_s" in r else "        -"
                    off = f"{official:10.2f}" if official else "         -"
                    print(f"{mesh:14} {res:5d} {threads:3d} {mode:8} {r['voxels']:9d} {r['to_ovoxel_s']:12.3f} "
                          f"{off} {ratio} {to_mesh} {r['peak_rss_gb']:7.2f}  {q}", flush=True)  # fmt: skip
    print("official: the C++ converter (geometry only, one thread) on this kind of machine, from the fixtures README.")


if __name__ == "__main__":
    main()
