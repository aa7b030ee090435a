"""DINOv3 ViT-L/16 image features: the tokens every flow model cross-attends to (spec 7.2).

Mirrors the official `DinoV3FeatureExtractor`: the preprocessed image is resized to `size x size` with
LANCZOS, scaled to [0, 1], ImageNet-normalised, and run through `transformers.DINOv3ViTModel`
(the native class, never remote code); the features are ALL tokens (CLS, 4 registers, patches) of the
last layer's output taken BEFORE the model's own final `norm`, standardised by an affine-free layer norm
(eps 1e-5). We capture that pre-norm state with a forward pre-hook on `model.norm`, which works whatever
the module nesting of the installed transformers version.

`ImageEncoder` is the interface the pipeline uses; the parity test passes a stub returning stored tensors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import EngineError, EngineInputError, WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_NORM_EPS = 1e-5  # `F.layer_norm`'s default, which the official extractor uses
MODEL_TYPE = "dinov3_vit"


class ImageEncoder(Protocol):
    """Image -> conditioning tokens `[1, L, C]` (fp32) for a square input of `size` pixels."""

    def encode(self, image: Image.Image, size: int) -> torch.Tensor: ...


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """`[1, 3, size, size]` float32: LANCZOS resize, then RGB, /255, ImageNet normalisation (official order)."""
    resized = image.resize((size, size), Image.Resampling.LANCZOS).convert("RGB")
    pixels = torch.from_numpy(np.asarray(resized).astype(np.float32) / 255).permute(2, 0, 1)  # [3, S, S]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return ((pixels - mean) / std)[None]


class DinoV3Encoder:
    """A loaded `DINOv3ViTModel` (fp32, eval) producing the official conditioning features."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.patch_size = int(model.config.patch_size)
        self.num_register_tokens = int(model.config.num_register_tokens)
        self.hidden_size = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> DinoV3Encoder:
        self.model.to(device)
        return self

    def num_tokens(self, size: int) -> int:
        return 1 + self.num_register_tokens + (size // self.patch_size) ** 2

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` normalised pixels -> `[B, L, C]`: affine-free layer norm of the pre-final-norm state."""
        captured: list[torch.Tensor] = []
        hook = self.model.norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            self.model(pixel_values=pixels.to(self.device, torch.float32))
        finally:
            hook.remove()
        hidden = captured[-1].float()  # [B, L, C], last layer output before `model.norm`
        return F.layer_norm(hidden, hidden.shape[-1:], eps=FEATURE_NORM_EPS)

    def encode(self, image: Image.Image, size: int) -> torch.Tensor:
        """`[1, 1 + registers + (size/16)^2, C]` on this encoder's device."""
        if not isinstance(size, int) or size <= 0 or size % self.patch_size:
            raise EngineInputError(
                f"the DINOv3 input size must be a positive multiple of {self.patch_size}, got {size}"
            )
        if not isinstance(image, Image.Image):
            raise EngineInputError(f"encode takes a preprocessed PIL image, got {type(image).__name__}")
        return self.features(image_to_tensor(image, size))


def load_dinov3(folder: str | Path, device: torch.device | str = "cpu") -> DinoV3Encoder:
    """Load a transformers DINOv3 ViT folder (config.json + model.safetensors) in fp32, strictly.

    Only safetensors are read (`use_safetensors=True`), no remote code, no network (`local_files_only`);
    a checkpoint whose keys or shapes do not match the config is refused. Use `engine.hub` to obtain
    the folder from a repo id (it checks the licence gate first).
    """
    folder = Path(folder).expanduser()
    _check_folder(folder)
    try:
        from transformers import DINOv3ViTModel
    except ImportError as exc:
        raise EngineError(
            "DINOv3 needs the `transformers` package (4.56 or newer); install it into the add-on's Python "
            "environment: pip install 'transformers>=4.56'"
        ) from exc
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers would draw a bar on stderr; the engine never prints
    try:
        model, info = DINOv3ViTModel.from_pretrained(
            str(folder),
            use_safetensors=True,
            local_files_only=True,
            dtype=torch.float32,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"could not load DINOv3 from {folder}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    problems = {k: sorted(map(str, v)) for k, v in info.items() if k in _STRICT_KEYS and v}
    if problems:
        listing = "; ".join(f"{k}: {', '.join(v[:10])}" + (" ..." if len(v) > 10 else "") for k, v in problems.items())
        raise WeightsError(f"{folder}: the DINOv3 weights do not match its config.json ({listing})")
    log.info(
        "DINOv3 loaded from %s (%d layers, width %d)", folder, model.config.num_hidden_layers, model.config.hidden_size
    )
    return DinoV3Encoder(model.to(device))


_STRICT_KEYS = ("missing_keys", "unexpected_keys", "mismatched_keys")


def _check_folder(folder: Path) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{config_path} does not exist; a DINOv3 folder holds config.json and model.safetensors")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise WeightsError(f"cannot read {config_path}: {exc}") from exc
    if model_type != MODEL_TYPE:
        raise WeightsError(f"{folder} holds a {model_type!r} model, not DINOv3 ViT ({MODEL_TYPE!r})")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (it has {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
        raise WeightsError(f"{folder} has no model.safetensors{hint}; download the safetensors weights")
