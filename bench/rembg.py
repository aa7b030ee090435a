"""Background removal at full size: one 1024x1024 image through BiRefNet (Swin-L) with random weights.

Random weights cost the same as the published ones, so this needs no download. Prints the median of
a few runs of `BiRefNetRemover.remove` (preprocess, network, matte) and where the network spends it,
plus the peak memory (resident on the CPU; allocated on CUDA).

    .venv/bin/python bench/rembg.py                     # CPU, fp32, 3 runs
    .venv/bin/python bench/rembg.py --device cuda       # fp16 on CUDA
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.background.birefnet import BiRefNet, resize  # noqa: E402
from engine.background.remover import BiRefNetRemover, default_dtype  # noqa: E402
from engine.background.swin import WindowAttention, relative_position_index  # noqa: E402


def random_birefnet(device: torch.device, dtype: torch.dtype) -> BiRefNet:
    """The full-size network with small random weights (std 0.02), built on meta and filled on `device`."""
    with torch.device("meta"):
        model = BiRefNet()
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                module.weight.normal_(0.0, 0.02, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm | torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.reset_running_stats()
            elif isinstance(module, WindowAttention):
                module.relative_position_bias_table.normal_(0.0, 0.02, generator=generator)
                module.relative_position_index.copy_(relative_position_index(model.params.window))
    return model.to(dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def breakdown(model: BiRefNet, batch: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Seconds of one more network pass, split where the work is: two backbone runs, then the decoder."""
    parts = {}
    parts["backbone at 1024"], _ = timed(lambda: model.bb(batch), device)
    parts["backbone at 512"], _ = timed(lambda: model.bb(resize(batch, (512, 512))), device)
    x1, x2, x3, x4 = model.encode(batch)

    def squeeze_and_decode() -> torch.Tensor:
        size = x4.shape[-2:]
        context = torch.cat((resize(x1, size), resize(x2, size), resize(x3, size), x4), dim=1)
        return model.decoder(batch, x1, x2, x3, model.squeeze_module(context))

    parts["squeeze + decoder"], _ = timed(squeeze_and_decode, device)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="fp32 on CUDA too (default there: fp16)")
    parser.add_argument("--breakdown", action="store_true", help="one more pass, timed per part of the network")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if args.fp32 else default_dtype(device)

    model = random_birefnet(device, dtype)
    remover = BiRefNetRemover(model, device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    batch = torch.randn(1, 3, 1024, 1024, device=device, dtype=dtype)

    with torch.inference_mode():
        totals, cpu = [], []
        for _ in range(args.runs):
            cpu_start = time.process_time()
            seconds, matte = timed(lambda: remover.remove(image), device)
            totals.append(seconds)
            cpu.append(time.process_time() - cpu_start)
        parts = breakdown(model, batch, device) if args.breakdown else {}

    total = statistics.median(totals)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        peak_what = "peak CUDA memory allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        peak_what = "peak resident memory"
    print(f"BiRefNet (Swin-L, 220.2 M params) on {device} {str(dtype).removeprefix('torch.')}, 1024x1024 image")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, matte {matte.mode} {matte.size}")
    print(f"{'remove(image)':<22}{total:8.2f} s  median of {len(totals)}: {', '.join(f'{t:.2f}' for t in totals)}")
    print(f"{'  process CPU time':<22}{statistics.median(cpu):8.2f} s  (all threads; wall far above this: busy CPU)")
    for key, seconds in parts.items():
        print(f"  {key:<20}{seconds:8.2f} s  ({seconds / total:5.1%} of the median, one pass)")
    print(f"{peak_what:<22}{peak:8.2f} GiB")


if __name__ == "__main__":
    main()
