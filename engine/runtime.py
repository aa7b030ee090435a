"""Where and how the engine computes: chosen once by the caller and passed down explicitly.

Nothing here reads environment variables or picks a device on import. A `Runtime` is a plain value;
`Runtime.auto()` is the one place that probes the machine, and only when a caller asks it to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPARSE_CONV_BACKENDS = ("torch", "spconv")
ATTENTION_BACKENDS = ("sdpa", "naive")


@dataclass(frozen=True)
class Runtime:
    """Device and kernel choices for one engine session.

    device:       where weights and activations live.
    sparse_conv:  "torch" (gather-GEMM-scatter, every device) or "spconv" (CUDA fast path only).
    attention:    "sdpa" (torch scaled_dot_product_attention) or "naive" (explicit softmax, for checks).
    official_precision: use the checkpoint's bf16/fp16 torso dtypes; False keeps everything in fp32
                  (what the CPU path does, since CPU half-precision GEMMs are slow and imprecise).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sparse_conv: str = "torch"
    attention: str = "sdpa"
    official_precision: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.sparse_conv not in SPARSE_CONV_BACKENDS:
            raise ValueError(f"sparse_conv must be one of {SPARSE_CONV_BACKENDS}, got {self.sparse_conv!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.sparse_conv == "spconv" and self.device.type != "cuda":
            raise ValueError("the spconv backend is only used on CUDA: its CPU build returns wrong values")

    @classmethod
    def auto(cls, prefer: str = "auto") -> Runtime:
        """Pick cuda > mps > cpu (or the device named by `prefer`), with that device's usual settings."""
        if prefer not in ("auto", "cuda", "mps", "cpu"):
            raise ValueError(f"device must be auto, cuda, mps or cpu, got {prefer!r}")
        if prefer in ("auto", "cuda") and torch.cuda.is_available():
            return cls(device=torch.device("cuda"), official_precision=True)
        if prefer in ("auto", "mps") and torch.backends.mps.is_available():
            return cls(device=torch.device("mps"))
        if prefer not in ("auto", "cpu"):
            raise ValueError(f"{prefer} was requested but is not available on this machine")
        return cls(device=torch.device("cpu"))
