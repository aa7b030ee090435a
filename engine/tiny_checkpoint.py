"""Write a tiny TRELLIS.2 checkpoint in the official layout, with random weights.

`pipeline.json` + `ckpts/<name>.json|.safetensors` for all eight models, plus a tiny DINOv3 saved with
`save_pretrained`: the same files and loading path as `microsoft/TRELLIS.2-4B`, small enough that a
whole image -> asset run takes seconds on a CPU. Tests, the demo, the add-on's tests and benchmarks use
it, because the real weights cannot be downloaded everywhere. Random networks make random shapes; a
few biases are calibrated so every stage has work to do (a few hundred occupied voxels, a mesh).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.models import build_model
from engine.sparse import SparseTensor

DINO_FOLDER = "dinov3_tiny"


def _flow(resolution: int, cin: int, cout: int, width: int, cond: int) -> dict:
    return {
        "resolution": resolution,
        "in_channels": cin,
        "out_channels": cout,
        "model_channels": width,
        "cond_channels": cond,
        "num_blocks": 2,
        "num_heads": 1,
        "mlp_ratio": 5.3334,
        "pe_mode": "rope",
        "share_mod": True,
        "initialization": "scaled",
        "qk_rms_norm": True,
        "qk_rms_norm_cross": True,
    }


def _sc_decoder(latent: int, channels: list[int], **extra) -> dict:
    levels = len(channels)
    return {
        "model_channels": channels,
        "latent_channels": latent,
        "num_blocks": [1] * (levels - 1) + [0],
        "block_type": ["SparseConvNeXtBlock3d"] * levels,
        "up_block_type": ["SparseResBlockC2S3d"] * (levels - 1),
        "block_args": [{"use_checkpoint": False}] * levels,
        "use_fp16": False,
        **extra,
    }


def tiny_configs(width: int = 16, cond: int = 16, ss_channels: int = 4, shape: int = 8, tex: int = 6) -> dict:
    """`{file stem: {"name", "args"}}` for the eight pipeline models."""
    vae = [8, 8, 8, 8, 4]
    return {
        "ss_flow_tiny": {"name": "SparseStructureFlowModel", "args": _flow(16, ss_channels, ss_channels, width, cond)},
        "ss_dec_tiny": {
            "name": "SparseStructureDecoder",
            "args": {
                "out_channels": 1,
                "latent_channels": ss_channels,
                "num_res_blocks": 2,
                "channels": [8, 8, 4],
                "num_res_blocks_middle": 2,
                "norm_type": "layer",
                "use_fp16": False,
            },
        },
        "shape_flow_512_tiny": {"name": "SLatFlowModel", "args": _flow(32, shape, shape, width, cond)},
        "shape_flow_1024_tiny": {"name": "SLatFlowModel", "args": _flow(64, shape, shape, width, cond)},
        "tex_flow_512_tiny": {"name": "SLatFlowModel", "args": _flow(32, tex + shape, tex, width, cond)},
        "tex_flow_1024_tiny": {"name": "SLatFlowModel", "args": _flow(64, tex + shape, tex, width, cond)},
        "shape_dec_tiny": {"name": "FlexiDualGridVaeDecoder", "args": _sc_decoder(shape, vae, resolution=1024)},
        "tex_dec_tiny": {
            "name": "SparseUnetVaeDecoder",
            "args": _sc_decoder(tex, vae, out_channels=6, pred_subdiv=False),
        },
    }


MODEL_KEYS = {
    "sparse_structure_flow_model": "ss_flow_tiny",
    "sparse_structure_decoder": "ss_dec_tiny",
    "shape_slat_flow_model_512": "shape_flow_512_tiny",
    "shape_slat_flow_model_1024": "shape_flow_1024_tiny",
    "shape_slat_decoder": "shape_dec_tiny",
    "tex_slat_flow_model_512": "tex_flow_512_tiny",
    "tex_slat_flow_model_1024": "tex_flow_1024_tiny",
    "tex_slat_decoder": "tex_dec_tiny",
}


def randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Fixture-style random weights: no zero-initialised layers, so every parameter matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "modulation":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
            elif p.ndim >= 2:
                fan_in = p.numel() // p.shape[0]
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            else:  # norm weights, RMS gammas
                p.copy_(1 + torch.randn(p.shape, generator=generator) * 0.1)


def _calibrate_structure(decoder: nn.Module, channels: int, generator: torch.Generator, fraction: float) -> None:
    """Shift the SS decoder's last bias so about `fraction` of the 64^3 grid is occupied for noise latents."""
    latents = torch.randn(2, channels, 16, 16, 16, generator=generator)
    with torch.no_grad():
        logits = decoder(latents).flatten()
        threshold = torch.quantile(logits[:: max(1, logits.numel() // 200_000)], 1 - fraction)
        decoder.out_layer[-1].bias -= threshold


def _calibrate_subdivisions(decoder: nn.Module, latent_channels: int, generator: torch.Generator) -> None:
    """Make each C2S level keep about 2 of 8 children, and ~40% of edge flags set, on a random latent."""
    coords = torch.argwhere(torch.rand(16, 16, 16, generator=generator) < 0.1).int()
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], dim=1)
    x = SparseTensor(torch.randn(len(coords), latent_channels, generator=generator), coords)
    with torch.no_grad():
        for level in decoder.blocks:
            for block in level:
                to_subdiv = getattr(block, "to_subdiv", None)
                if to_subdiv is None:
                    x = block(x)
                    continue
                logits = to_subdiv(x.feats)
                to_subdiv.bias -= torch.quantile(logits, 1 - 2 / 8, dim=0)
                x = block(x)[0]
        h = decoder.output_layer(torch.nn.functional.layer_norm(x.feats.float(), x.feats.shape[-1:]))
        decoder.output_layer.bias[3:6] -= torch.quantile(h[:, 3:6], 0.6, dim=0)


def _sampler(steps: int, strength: float, rescale: float, interval: list[float], rescale_t: float) -> dict:
    return {
        "name": "FlowEulerGuidanceIntervalSampler",
        "args": {"sigma_min": 1e-5},
        "params": {
            "steps": steps,
            "guidance_strength": strength,
            "guidance_rescale": rescale,
            "guidance_interval": interval,
            "rescale_t": rescale_t,
        },
    }


def write_dinov3(folder: Path, hidden: int, seed: int) -> None:
    """A tiny `DINOv3ViTModel` (4 registers, patch 16) saved with `save_pretrained` as safetensors."""
    import transformers

    config = transformers.DINOv3ViTConfig(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=1, intermediate_size=2 * hidden
    )
    config.num_register_tokens = 4
    torch.manual_seed(seed)  # transformers initialises from the global generator
    model = transformers.DINOv3ViTModel(config)
    model.save_pretrained(folder, safe_serialization=True)


def write_tiny_checkpoint(folder: str | Path, seed: int = 0, steps: int = 3) -> Path:
    """Write the whole tiny pipeline into `folder` (created); returns the folder."""
    folder = Path(folder)
    (folder / "ckpts").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    configs = tiny_configs()
    for stem, config in configs.items():
        model = build_model(config, device="cpu").eval()
        randomize(model, generator)
        if stem == "ss_dec_tiny":
            _calibrate_structure(model, config["args"]["latent_channels"], generator, fraction=0.001)
        if stem == "shape_dec_tiny":
            _calibrate_subdivisions(model, config["args"]["latent_channels"], generator)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "ckpts" / f"{stem}.safetensors"))
        (folder / "ckpts" / f"{stem}.json").write_text(json.dumps(config, indent=1))
    shape_c = configs["shape_flow_512_tiny"]["args"]["out_channels"]
    tex_c = configs["tex_flow_512_tiny"]["args"]["out_channels"]
    norm = torch.Generator().manual_seed(seed + 1)
    pipeline = {
        "name": "Trellis2ImageTo3DPipeline",
        "args": {
            "models": {key: f"ckpts/{stem}" for key, stem in MODEL_KEYS.items()},
            "sparse_structure_sampler": _sampler(steps, 7.5, 0.7, [0.6, 1.0], 5.0),
            "shape_slat_sampler": _sampler(steps, 7.5, 0.5, [0.6, 1.0], 3.0),
            "tex_slat_sampler": _sampler(steps, 1.0, 0.0, [0.6, 0.9], 3.0),
            "shape_slat_normalization": _normalization(shape_c, norm),
            "tex_slat_normalization": _normalization(tex_c, norm),
            "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": DINO_FOLDER}},
            "rembg_model": {"name": "BiRefNet", "args": {"model_name": "ZhengPeng7/BiRefNet"}},
            "default_pipeline_type": "1024_cascade",
        },
    }
    (folder / "pipeline.json").write_text(json.dumps(pipeline, indent=1))
    write_dinov3(folder / DINO_FOLDER, configs["ss_flow_tiny"]["args"]["cond_channels"], seed)
    return folder


def _normalization(channels: int, generator: torch.Generator) -> dict:
    mean = (torch.randn(channels, generator=generator) * 0.5).tolist()
    std = (0.5 + torch.rand(channels, generator=generator)).tolist()
    return {"mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std]}
