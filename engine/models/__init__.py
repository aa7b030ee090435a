"""The TRELLIS.2 model families, built from the official `{"name": ..., "args": {...}}` configs.

`build_model(config)` constructs a module (on the meta device by default: no memory, no init cost);
`load_model(path)` reads `path.json` + `path.safetensors`, builds, and loads with strict key matching.
Families are imported on first use, so importing `engine.models` stays cheap.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import EngineInputError, WeightsError

# Official class name -> module that defines it (one file per family).
_REGISTRY: dict[str, str] = {
    "SparseStructureFlowModel": "engine.models.ss_flow",
    "SparseStructureEncoder": "engine.models.ss_vae",
    "SparseStructureDecoder": "engine.models.ss_vae",
    "SLatFlowModel": "engine.models.slat_flow",
    "ElasticSLatFlowModel": "engine.models.slat_flow",
    "SparseUnetVaeEncoder": "engine.models.sc_vae",
    "SparseUnetVaeDecoder": "engine.models.sc_vae",
    "FlexiDualGridVaeEncoder": "engine.models.shape_vae",
    "FlexiDualGridVaeDecoder": "engine.models.shape_vae",
}

KNOWN_MODELS = tuple(sorted(_REGISTRY))


def model_class(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise EngineInputError(f"unknown model name {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    return getattr(importlib.import_module(_REGISTRY[name]), name)


def build_model(config: dict[str, Any], device: torch.device | str = "meta") -> nn.Module:
    """Construct the model an official config describes. On "meta" nothing is allocated."""
    if not isinstance(config, dict) or "name" not in config:
        raise EngineInputError('a model config is a dict {"name": <class name>, "args": {...}}')
    cls = model_class(config["name"])
    with torch.device(device):
        return cls(**config.get("args", {}))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Build from `path.json`, load `path.safetensors` strictly, return the model in eval mode."""
    from engine.weights import load_state_dict_strict, read_safetensors

    path = Path(path)
    config_path = path.with_name(path.name + ".json")
    weights_path = path.with_name(path.name + ".safetensors")
    if not config_path.is_file():
        raise WeightsError(f"model config not found: {config_path}")
    if not weights_path.is_file():
        for legacy in (".pt", ".pth", ".bin", ".ckpt"):
            if path.with_name(path.name + legacy).is_file():
                raise WeightsError(
                    f"{path.name}{legacy} is a pickle checkpoint; only .safetensors weights are loaded "
                    "(pickles can run arbitrary code). Convert it with safetensors first."
                )
        raise WeightsError(f"model weights not found: {weights_path}")
    config = json.loads(config_path.read_text())
    model = build_model(config, device="meta")
    state = read_safetensors(weights_path)
    load_state_dict_strict(model, state, device=device, source=str(weights_path))
    return model.eval()


__all__ = ["KNOWN_MODELS", "build_model", "load_model", "model_class"]
