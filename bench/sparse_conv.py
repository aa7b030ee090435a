"""Submanifold sparse conv on the CPU, one thread: ours vs dense conv3d vs spconv (CPU build, native algorithm).

    .venv/bin/python bench/sparse_conv.py [--repeats 5]

Voxel sets: sphere shells (the surface-like sets TRELLIS.2 decodes) and uniform random sets, ~20K voxels
in 64^3 and ~100K in 256^3, 64 -> 64 channels, fp32. Steady-state times: neighbour tables / spconv indice
pairs are built on the first call and reused, as in a network (the first-call cost is printed apart).
Agreement: max |diff| against a float64 dense conv3d where the dense grid fits, else against spconv.
spconv's CPU build is only correct with one thread, which is what runs here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.sparse import SparseTensor  # noqa: E402
from engine.sparse import conv as sc  # noqa: E402

CHANNELS = 64


def shell(res: int, radius: float, thickness: float) -> torch.Tensor:
    """int32 (0, x, y, z) coords of a spherical shell centred in a res^3 grid, sorted."""
    axis = torch.arange(res, dtype=torch.float32) - (res - 1) / 2
    d = (axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2).sqrt()
    xyz = torch.nonzero((d >= radius - thickness / 2) & (d < radius + thickness / 2))
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], dim=1).int()


def uniform(res: int, count: int, seed: int = 0) -> torch.Tensor:
    flat = torch.randperm(res**3, generator=torch.Generator().manual_seed(seed))[:count].sort().values
    xyz = torch.stack([flat // (res * res), flat // res % res, flat % res], dim=1)
    return torch.cat([torch.zeros(count, 1, dtype=torch.long), xyz], dim=1).int()


def median_ms(fns: list, repeats: int) -> list[float]:
    """Median wall time of each function, run in turns so that load changes hit all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def dense_conv(coords: torch.Tensor, feats: torch.Tensor, weight, bias, res: int, dtype=torch.float32):
    c = coords.long()
    grid = torch.zeros(1, feats.shape[1], res, res, res, dtype=dtype)
    grid[0, :, c[:, 1], c[:, 2], c[:, 3]] = feats.t().to(dtype)
    out = F.conv3d(grid, weight.permute(0, 4, 1, 2, 3).to(dtype), bias.to(dtype), padding=1)
    return out[0, :, c[:, 1], c[:, 2], c[:, 3]].t()


def run_case(name: str, coords: torch.Tensor, res: int, repeats: int) -> None:
    torch.manual_seed(0)
    n = coords.shape[0]
    feats = torch.randn(n, CHANNELS)
    weight = torch.randn(CHANNELS, 3, 3, 3, CHANNELS) / (27 * CHANNELS) ** 0.5
    bias = torch.randn(CHANNELS) * 0.1
    x = SparseTensor(feats, coords)

    start = time.perf_counter()
    sc._pairs(x)
    table_ms = (time.perf_counter() - start) * 1e3
    ours = sc._conv_pairs(x, weight, bias)
    start = time.perf_counter()
    spconv_out = sc.spconv_features(x, weight, bias)
    spconv_first = (time.perf_counter() - start) * 1e3
    t_ours, t_spconv = median_ms(
        [lambda: sc._conv_pairs(x, weight, bias), lambda: sc.spconv_features(x, weight, bias)], repeats
    )
    (t_im2col,) = median_ms([lambda: sc._conv_im2col(x, weight, bias)], max(1, repeats // 2))

    dense_fits = res**3 * CHANNELS * 4 * 3 < (2 << 30)
    if dense_fits:
        (t_dense,) = median_ms([lambda: dense_conv(coords, feats, weight, bias, res)], max(1, repeats // 2))
        ref = dense_conv(coords, feats, weight, bias, res, torch.float64)
        err, referee = float((ours.double() - ref).abs().max()), "dense fp64"
        spconv_err = float((spconv_out.double() - ref).abs().max())
    else:
        t_dense, referee = float("nan"), "spconv"
        err = spconv_err = float((ours - spconv_out).abs().max())

    fill = sum(len(r) for r, _ in sc._pairs(x)) / (27 * n)
    print(f"\n{name}: {n} voxels in {res}^3, {CHANNELS}->{CHANNELS} ch, taps filled {fill:.2f}")
    print(f"  {'method':<22}{'median ms':>10}{'Mvox/s':>9}{'vs spconv':>11}")
    for label, ms in [
        ("ours (pairs, CPU path)", t_ours),
        ("ours (im2col)", t_im2col),
        ("spconv 1 thread", t_spconv),
        ("dense conv3d", t_dense),
    ]:
        print(f"  {label:<22}{ms:>10.1f}{n / ms / 1e3:>9.3f}{t_spconv / ms:>10.2f}x")
    print(f"  first call: neighbour table {table_ms:.1f} ms (ours), spconv with indice pairs {spconv_first:.1f} ms")
    print(f"  max |diff| vs {referee}: ours {err:.2e}, spconv {spconv_err:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    run_case("shell 64^3", shell(64, 28.0, 2.0), 64, args.repeats)
    run_case("uniform 64^3", uniform(64, 20_000), 64, args.repeats)
    run_case("shell 256^3", shell(256, 90.0, 1.0), 256, args.repeats)
    run_case("uniform 256^3", uniform(256, 100_000), 256, args.repeats)


if __name__ == "__main__":
    main()
