"""Weight files: safetensors only, strict key matching, loud and specific mismatch errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.errors import WeightsError

_SHOWN = 20


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file on the CPU. Anything else is refused: pickles are never opened."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path.name}: only .safetensors weight files are loaded, never pickles")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}); delete it and download again") from exc


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Raise WeightsError unless `state` has exactly the model's persistent keys with the same shapes."""
    expected = model.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{source} does not match {type(model).__name__}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise WeightsError("\n".join(parts))
    for key, ref in expected.items():
        if tuple(ref.shape) != tuple(state[key].shape):
            raise WeightsError(
                f"{source}: key {key} has shape {list(state[key].shape)} in the file "
                f"but {list(ref.shape)} in {type(model).__name__}; the config does not match these weights"
            )


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], device: torch.device | str = "cpu", source: str = "weights"
) -> nn.Module:
    """Materialise a (meta-built) model on `device` and copy `state` in, keeping each parameter's dtype.

    Copying (not `assign=True`) matters: released files store every tensor in 16 bits, while the
    official precision plan keeps norms, embedders and modulation vectors in fp32.
    """
    check_state_dict(model, state, source)
    model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    return model
