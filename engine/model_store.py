"""Loads the pipeline's checkpoints on first use and decides where each one lives (the memory policy).

low_vram: every model waits on the CPU and visits the accelerator only for its own stage, so the peak
is the largest single model plus activations. fast: models move to the accelerator once and stay.
On the CPU both policies are the same. Precision follows the Runtime: the official plan (bf16 flow
torsos, fp16 VAE torsos) or fp32 everywhere (the CPU default).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from engine.errors import EngineError, WeightsError
from engine.models import build_model
from engine.runtime import Runtime
from engine.sparse.attention import set_attention_backend
from engine.sparse.conv import set_sparse_conv_backend
from engine.weights import load_state_dict_strict, read_safetensors

log = logging.getLogger(__name__)

MEMORY_POLICIES = ("low_vram", "fast")


def read_model_config(stem: Path) -> dict:
    path = stem.with_name(stem.name + ".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read model config {path}: {exc}") from exc


def with_precision(config: dict, official: bool) -> dict:
    """The config with its torso dtype forced to fp32 unless the official precision is wanted."""
    if official:
        return config
    args = dict(config.get("args", {}))
    if "dtype" in args:
        args["dtype"] = "float32"
    if "use_fp16" in args:
        args["use_fp16"] = False
    return {**config, "args": args}


def load_checkpoint(stem: Path, runtime: Runtime, device: torch.device | str) -> nn.Module:
    """Build `stem.json` at the runtime's precision and strictly load `stem.safetensors` onto `device`."""
    config = with_precision(read_model_config(stem), runtime.official_precision)
    model = build_model(config, device="meta")
    state = read_safetensors(stem.with_name(stem.name + ".safetensors"))
    load_state_dict_strict(model, state, device=device, source=str(stem) + ".safetensors")
    apply_runtime(model, runtime)
    return model.eval().requires_grad_(False)


def apply_runtime(model: nn.Module, runtime: Runtime) -> None:
    """Hand the runtime's kernel choices to every module that has one."""
    set_sparse_conv_backend(model, runtime.sparse_conv)
    set_attention_backend(model, runtime.attention)


class ModelStore:
    """`key -> checkpoint stem`; models are loaded when first used and placed by the memory policy."""

    def __init__(self, stems: Mapping[str, Path], runtime: Runtime, memory: str = "low_vram") -> None:
        if memory not in MEMORY_POLICIES:
            raise ValueError(f"memory policy must be one of {MEMORY_POLICIES}, got {memory!r}")
        self.stems = dict(stems)
        self.runtime = runtime
        self.memory = memory
        self._models: dict[str, nn.Module] = {}
        self.load_counts: dict[str, int] = {}

    @classmethod
    def from_models(cls, models: Mapping[str, nn.Module], runtime: Runtime, memory: str = "fast") -> ModelStore:
        """A store over models already built (benchmarks, custom setups); nothing is loaded from disk."""
        store = cls({}, runtime, memory)
        store._models.update(models)
        return store

    @property
    def _home(self) -> torch.device:
        """Where an idle model waits."""
        return torch.device("cpu") if self.memory == "low_vram" else self.runtime.device

    def add(self, stems: Mapping[str, Path]) -> None:
        for key, stem in stems.items():
            self.stems.setdefault(key, stem)

    def get(self, key: str) -> nn.Module:
        if key not in self._models:
            if key not in self.stems:
                raise WeightsError(f"the pipeline has no checkpoint for {key}; it is not part of the loaded types")
            log.info("loading %s from %s", key, self.stems[key])
            self._models[key] = load_checkpoint(self.stems[key], self.runtime, self._home)
            self.load_counts[key] = self.load_counts.get(key, 0) + 1
        return self._models[key]

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[nn.Module]:
        """The model on the runtime device for one stage; under low_vram it goes back to the CPU after."""
        model = self.get(key)
        device = self.runtime.device
        moved = self.memory == "low_vram" and device.type != "cpu"
        try:
            if moved:
                model.to(device)
            yield model
        except torch.OutOfMemoryError as exc:
            raise EngineError(
                f"the GPU ran out of memory in {key}. Switch the memory mode to low-VRAM in Preferences, "
                "or generate at a lower resolution."
            ) from exc
        finally:
            if moved:
                model.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    def unload(self) -> None:
        self._models.clear()
