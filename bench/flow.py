"""One SLatFlowModel forward at the released size (C 1536, 30 blocks, 12 heads) on random weights.

Reports the median time of a forward (= one sampler step without CFG), tokens/s, peak memory and
achieved TFLOP/s from an analytic FLOP count; on CUDA also the fraction of the GPU's bf16 peak.
Weights are built directly on the target device. A full forward at 9,600 tokens takes minutes on a
CPU: use e.g. `--blocks 2 --tokens 2400` there.

    python bench/flow.py --device cuda --peak-tflops 989      # H100 SXM dense bf16
    python bench/flow.py --device cpu --blocks 2 --tokens 2400 --cond-tokens 1029
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models import build_model  # noqa: E402
from engine.sparse import SparseTensor  # noqa: E402


def flow_config(blocks: int, dtype: str) -> dict:
    return {
        "name": "SLatFlowModel",
        "args": {
            "resolution": 64,
            "in_channels": 32,
            "out_channels": 32,
            "model_channels": 1536,
            "cond_channels": 1024,
            "num_blocks": blocks,
            "num_heads": 12,
            "mlp_ratio": 5.3334,
            "pe_mode": "rope",
            "share_mod": True,
            "initialization": "scaled",
            "qk_rms_norm": True,
            "qk_rms_norm_cross": True,
            "dtype": dtype,
        },
    }


def forward_flops(tokens: int, cond_tokens: int, blocks: int, c: int = 1536, cc: int = 1024, mlp_ratio=5.3334) -> float:
    """Multiply-adds x 2 of one forward with one batch item (norms, RoPE and softmax not counted)."""
    hidden = int(c * mlp_ratio)
    linear = 2 * tokens * (3 * c * c + c * c + c * c + c * c + 2 * c * hidden) + 2 * cond_tokens * cc * 2 * c
    attention = 4 * tokens * tokens * c + 4 * tokens * cond_tokens * c
    io_layers = 2 * tokens * (32 * c + c * 32)
    return blocks * (linear + attention) + io_layers


def random_voxels(tokens: int, grid: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """int32 [tokens, 4] distinct voxels of one batch item in a grid^3, sorted x-major."""
    flat = torch.randperm(grid**3, generator=generator)[:tokens].sort().values
    xyz = torch.stack([flat // (grid * grid), flat // grid % grid, flat % grid], dim=1)
    return torch.cat([torch.zeros(tokens, 1, dtype=torch.long), xyz], dim=1).int().to(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB: process peak RSS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="torso dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--tokens", type=int, default=9600)
    parser.add_argument("--cond-tokens", type=int, default=4101, help="4101 = DINOv3 at 1024 px, 1029 at 512 px")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "naive"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for the ratio")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(flow_config(args.blocks, dtype), device=device).eval()
    build_s = time.perf_counter() - t0
    if args.attention != "sdpa":
        from engine.sparse.attention import set_attention_backend

        set_attention_backend(model, args.attention)

    g = torch.Generator().manual_seed(1)
    coords = random_voxels(args.tokens, 64, device, g)
    x = SparseTensor(torch.randn(args.tokens, 32, generator=g).to(device), coords)
    cond = torch.randn(1, args.cond_tokens, 1024, generator=g).to(device)
    t = torch.tensor([500.0], device=device)

    times, cpu_times = [], []
    with torch.no_grad():
        for i in range(args.warmup + args.repeats):
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(x, t, cond)
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    assert torch.isfinite(out.feats).all(), "the forward produced non-finite values"

    median = statistics.median(times)
    flops = forward_flops(args.tokens, args.cond_tokens, args.blocks)
    tflops = flops / median / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"SLatFlowModel C=1536 heads=12 blocks={args.blocks} torso={dtype} attention={args.attention}")
    print(f"tokens {args.tokens}, cond tokens {args.cond_tokens}, build {build_s:.1f} s")
    print(f"forward median {median * 1e3:.1f} ms over {len(times)} runs (min {min(times) * 1e3:.1f} ms)")
    print(
        f"process CPU time per forward {statistics.median(cpu_times):.2f} s (wall >> CPU/threads means a busy machine)"
    )
    print(f"throughput {args.tokens / median:,.0f} tokens/s")
    print(f"work {flops / 1e12:.2f} TFLOP per forward -> {tflops:.3f} TFLOP/s achieved")
    if args.blocks != 30:
        print(f"full 30-block forward, extrapolated: {median * 30 / args.blocks * 1e3:.0f} ms")
    print(f"peak memory {peak_memory_mb(device):,.0f} MiB ({'allocated' if device.type == 'cuda' else 'process RSS'})")
    if args.peak_tflops:
        print(f"fraction of peak {tflops / args.peak_tflops:.1%} of {args.peak_tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
