"""Seconds per pipeline stage and peak memory.

Two modes:
  python bench/pipeline.py                       # tiny checkpoint, every pipeline type, end to end (CPU)
  python bench/pipeline.py --full --device cuda   # released sizes, random weights, synthetic occupancy

`--full` builds the released architectures (tests/data/official_configs.json) with random weights
(the same compute as the real ones) on the device, at the official precision on CUDA, and runs each
stage on a fixed synthetic occupancy: a spherical shell on the 64^3 structure grid with about 9,600
tokens for type 1024 (`--tokens`). Official H100 figures for comparison: 3 s / 17 s / 60 s for
512 / 1024 / 1536 (shape + material stages). On a CPU a full-size step takes minutes: use `--steps 1`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import config as cfg  # noqa: E402
from engine.config import PipelineConfig  # noqa: E402
from engine.model_store import ModelStore  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.pipeline import GenerationSettings, Trellis2Pipeline, _Hooks  # noqa: E402
from engine.results import Conditioning, SparseStructure  # noqa: E402
from engine.runtime import Runtime  # noqa: E402

OFFICIAL_KEYS = {
    cfg.SS_FLOW: "ss_flow_img_dit_1_3B_64_bf16",
    cfg.SS_DECODER: "ss_dec_conv3d_16l8_fp16",
    cfg.SHAPE_FLOW_512: "slat_flow_img2shape_dit_1_3B_512_bf16",
    cfg.SHAPE_FLOW_1024: "slat_flow_img2shape_dit_1_3B_1024_bf16",
    cfg.SHAPE_DECODER: "shape_dec_next_dc_f16c32_fp16",
    cfg.TEX_FLOW_512: "slat_flow_imgshape2tex_dit_1_3B_512_bf16",
    cfg.TEX_FLOW_1024: "slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
    cfg.TEX_DECODER: "tex_dec_next_dc_f16c32_fp16",
}
OFFICIAL_SECONDS = {"512": 3.0, "1024_cascade": 17.0, "1536_cascade": 60.0}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """on_progress -> wall seconds per stage: the time up to each report is charged to that report's stage
    (so the sparse-structure decoder, which reports nothing, is charged to the first shape step)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times, self.last = device, {}, time.perf_counter()

    def __call__(self, stage: str, step: int, total: int) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self.last
        self.last = now

    def close(self) -> None:
        sync(self.device)


# -- tiny ----------------------------------------------------------------------------------------


def bench_tiny(repeats: int) -> None:
    from PIL import Image, ImageDraw

    folder = Path(tempfile.mkdtemp(prefix="trellis2_tiny_"))
    from engine.tiny_checkpoint import write_tiny_checkpoint

    write_tiny_checkpoint(folder)
    image = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((60, 40, 200, 220), fill=(200, 80, 40, 255))
    runtime = Runtime()
    pipe = Trellis2Pipeline.from_pretrained(folder, runtime=runtime, pipeline_type="512")
    print(f"tiny checkpoint, CPU, {torch.get_num_threads()} threads, median of {repeats} (after one warm-up)")
    print(f"{'type':<14} {'total s':>8}  stages (s)")
    for ptype in cfg.PIPELINE_TYPES:
        totals, stage_runs = [], []
        for i in range(repeats + 1):
            clock = StageClock(runtime.device)
            t = time.perf_counter()
            pipe.run([image], GenerationSettings(pipeline_type=ptype, seed=1), on_progress=clock)
            clock.close()
            if i:
                totals.append(time.perf_counter() - t)
                stage_runs.append(clock.times)
        stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
        detail = "  ".join(f"{k} {v:.2f}" for k, v in stages.items())
        print(f"{ptype:<14} {statistics.median(totals):8.2f}  {detail}")
    print(f"peak RSS {peak_memory_mb(runtime.device):.0f} MiB")


# -- full size -----------------------------------------------------------------------------------


def shell_occupancy(tokens_1024: int, grid: int = 64) -> torch.Tensor:
    """A spherical shell on the 64^3 grid with about `tokens_1024` voxels (int32 (b, x, y, z))."""
    axis = torch.arange(grid, dtype=torch.float32) + 0.5 - grid / 2
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = (x * x + y * y + z * z).sqrt()
    for radius in torch.linspace(4, grid / 2 - 1, 200):
        shell = (r - radius).abs() < 0.9
        if int(shell.sum()) >= tokens_1024:
            break
    coords = torch.argwhere(shell).int()
    return torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], dim=1)


def full_size_models(runtime: Runtime, keys: list[str], blocks: int | None) -> dict[str, torch.nn.Module]:
    configs = json.loads((ROOT / "tests" / "data" / "official_configs.json").read_text())
    models = {}
    for key in keys:
        config = json.loads(json.dumps(configs[OFFICIAL_KEYS[key]]))
        if blocks is not None and "num_blocks" in config["args"] and isinstance(config["args"]["num_blocks"], int):
            config["args"]["num_blocks"] = blocks
        if not runtime.official_precision:
            config["args"].pop("dtype", None)
            config["args"]["use_fp16"] = False if "use_fp16" in config["args"] else None
            config["args"] = {k: v for k, v in config["args"].items() if v is not None}
        with torch.no_grad():
            model = build_model(config, device=runtime.device).eval().requires_grad_(False)
        models[key] = model
    return models


def bench_full(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    runtime = Runtime(device=device, official_precision=device.type == "cuda")
    keys = sorted(set(cfg.REQUIRED_MODELS[args.type]))
    t = time.perf_counter()
    models = full_size_models(runtime, keys, args.blocks)
    print(f"built {len(models)} full-size models in {time.perf_counter() - t:.1f} s on {device}")
    pipeline_json = json.loads((ROOT / "bench" / "release_pipeline.json").read_text())
    config = PipelineConfig.from_dict(pipeline_json)
    pipe = Trellis2Pipeline(config, ModelStore.from_models(models, runtime))
    steps = {"steps": args.steps} if args.steps else {}
    settings = GenerationSettings(
        pipeline_type=args.type, seed=0, sparse_structure_sampler=steps, shape_sampler=steps, texture_sampler=steps
    )
    cond = Conditioning(cond_512=torch.randn(1, 1029, 1024), cond_1024=torch.randn(1, 4101, 1024))
    occupancy = shell_occupancy(args.tokens)
    structure = SparseStructure(latent=torch.zeros(1), occupancy=occupancy, grid=64, seed=0)
    clock = StageClock(device)
    hooks = _Hooks(clock, None, "stochastic", None)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    with torch.no_grad():
        if not args.skip_structure:
            pipe.sample_structure(cond, generator, settings, hooks)
        shape = pipe.sample_shape(structure, cond, args.type, generator, settings, hooks)
        texture = pipe.sample_texture(shape, cond, generator, settings, hooks)
        asset = pipe.decode(shape, texture, settings, hooks)
    clock.close()
    total = time.perf_counter() - t
    print(f"type {args.type}: {len(shape.coords)} shape tokens at {shape.resolution}, {len(asset.coords):,} voxels")
    for stage, seconds in clock.times.items():
        print(f"  {stage:<17} {seconds:8.2f} s")
    line = f"  total             {total:8.2f} s   peak memory {peak_memory_mb(device):,.0f} MiB"
    if args.type in OFFICIAL_SECONDS and not args.steps and args.blocks is None:
        line += f"   official H100 {OFFICIAL_SECONDS[args.type]:.0f} s, ratio {total / OFFICIAL_SECONDS[args.type]:.2f}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="released model sizes with random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--type", choices=cfg.PIPELINE_TYPES, default="1024_cascade")
    parser.add_argument("--tokens", type=int, default=9600, help="synthetic occupancy size at 64^3")
    parser.add_argument("--steps", type=int, help="override every sampler's steps (e.g. 1 on a CPU)")
    parser.add_argument("--blocks", type=int, help="override the flow depth (CPU smoke runs)")
    parser.add_argument("--skip-structure", action="store_true", help="skip the sparse-structure stage")
    parser.add_argument("--repeats", type=int, default=3, help="tiny mode: timed runs per type")
    args = parser.parse_args()
    if args.full:
        bench_full(args)
    else:
        bench_tiny(args.repeats)


if __name__ == "__main__":
    main()
