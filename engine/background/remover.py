"""The BiRefNet background remover: weights from a local folder or the Hub, inference as in spec 7.1.

Only `model.safetensors` is ever read: no downloaded code, no pickles. The default weights are
`ZhengPeng7/BiRefNet` (MIT, not gated). `briaai/RMBG-2.0` is the same network with other weights
(CC BY-NC 4.0, gated on the Hub); it is used only when a caller names its repo id.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.background import BackgroundRemover
from engine.background.birefnet import BiRefNet, BiRefNetParams
from engine.background.swin import WindowAttention, relative_position_index
from engine.errors import EngineInputError, WeightsError

log = logging.getLogger(__name__)

DEFAULT_REPO = "ZhengPeng7/BiRefNet"
RMBG_REPO = "briaai/RMBG-2.0"
WEIGHTS_FILE = "model.safetensors"
RESOLUTION = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_NO_REMOVER = "or supply an image with transparency (an alpha channel), which needs no background removal"


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (the published weights are fp16; the backbone's norms and softmax accumulate in fp32 there),
    fp32 elsewhere (CPU half-precision is slow, MPS fp16 is untested)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


# -- weights --------------------------------------------------------------------------------------


def _local_weights(path: Path) -> Path:
    if path.is_file():
        return path
    weights = path / WEIGHTS_FILE
    if weights.is_file():
        return weights
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{path} holds {', '.join(pickles)} but no {WEIGHTS_FILE}: pickle checkpoints are never opened "
            "(they can run arbitrary code). Download the safetensors release of the weights instead."
        )
    raise WeightsError(f"no {WEIGHTS_FILE} in {path}; put the BiRefNet weights there, {_NO_REMOVER}.")


def _download(repo_id: str, token: str | bool | None, local_files_only: bool, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    page = f"https://huggingface.co/{repo_id}"
    try:
        return Path(
            hf_hub_download(repo_id, WEIGHTS_FILE, token=token, local_files_only=local_files_only, cache_dir=cache_dir)
        )
    except GatedRepoError as exc:
        raise WeightsError(
            f"{repo_id} is gated on Hugging Face: open {page}, accept its licence with your account, then set your "
            f"Hugging Face access token and try again. Or pick the default remover {DEFAULT_REPO} (MIT, not gated), "
            f"{_NO_REMOVER}."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise WeightsError(
            f"{repo_id} was not found on Hugging Face (or it is private and needs a token): check the repo id and "
            f"your token, pick the default remover {DEFAULT_REPO}, {_NO_REMOVER}."
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise WeightsError(
            f"The background-removal weights ({repo_id}/{WEIGHTS_FILE}) are not on this computer and could not be "
            "downloaded (offline?). Connect to the internet once so they can be downloaded, or put "
            f"{WEIGHTS_FILE} in a folder and select that folder, {_NO_REMOVER}."
        ) from exc
    except EntryNotFoundError as exc:
        raise WeightsError(
            f"{repo_id} has no {WEIGHTS_FILE}; pick a repo that publishes BiRefNet safetensors weights "
            f"(e.g. {DEFAULT_REPO}), {_NO_REMOVER}."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsError(
            f"Could not download {repo_id}/{WEIGHTS_FILE} ({exc}). Check your connection and token, {_NO_REMOVER}."
        ) from exc


def resolve_weights(
    source: str | Path = DEFAULT_REPO,
    *,
    token: str | bool | None = None,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """The local path of `model.safetensors` for a folder, a file, or a Hub repo id ("owner/name")."""
    path = Path(source).expanduser()
    if path.exists():
        return _local_weights(path)
    if isinstance(source, Path) or not _REPO_ID.match(str(source)):
        raise WeightsError(f"{source} does not exist: give a folder holding {WEIGHTS_FILE}, or a Hub repo id")
    return _download(str(source), token, local_files_only, cache_dir)


def _check_relative_index(model: BiRefNet, source: str) -> None:
    """Guard against weights of another window size or layout: every stored index must equal the formula."""
    for name, module in model.named_modules():
        if isinstance(module, WindowAttention):
            stored = module.relative_position_index
            window = round(stored.shape[0] ** 0.5)
            if not torch.equal(stored.cpu(), relative_position_index(window)):
                raise WeightsError(f"{source}: {name}.relative_position_index is not the Swin window index")


def load_birefnet(
    path: str | Path,
    params: BiRefNetParams | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> BiRefNet:
    """Build on the meta device, load `path` (safetensors) strictly on `device`, in eval mode."""
    from engine.weights import load_state_dict_strict, read_safetensors

    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        model = BiRefNet(params).to(dtype)  # the int64 index buffers keep their dtype
    state = read_safetensors(path)
    load_state_dict_strict(model, state, device=device, source=str(path))
    _check_relative_index(model, str(path))
    return model.eval()


# -- inference ------------------------------------------------------------------------------------


def preprocess(image: Image.Image, resolution: int = RESOLUTION) -> torch.Tensor:
    """RGB image -> [1, 3, R, R] fp32: PIL bilinear resize (antialiased), /255, ImageNet normalisation."""
    resized = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)  # [R, R, 3]
    mean = torch.tensor(IMAGENET_MEAN)
    std = torch.tensor(IMAGENET_STD)
    return ((pixels - mean) / std).permute(2, 0, 1)[None].contiguous()


def matte_image(probability: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """[R, R] foreground probability -> "L" matte of `size` (x255 truncated, PIL bicubic resize)."""
    levels = (probability.float().cpu() * 255).to(torch.uint8).numpy()  # truncation, like ToPILImage
    return Image.fromarray(levels, mode="L").resize(size, Image.Resampling.BICUBIC)


class BiRefNetRemover(BackgroundRemover):
    """Mattes an image with a BiRefNet network at `resolution` x `resolution` (1024 for the published weights)."""

    def __init__(
        self,
        model: BiRefNet,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        resolution: int = RESOLUTION,
        name: str = "BiRefNet",
    ) -> None:
        if resolution % 32:
            raise EngineInputError(f"BiRefNet needs a resolution that is a multiple of 32, got {resolution}")
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.resolution = resolution
        self.name = name

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_REPO,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        cache_dir: str | Path | None = None,
        params: BiRefNetParams | None = None,
        resolution: int = RESOLUTION,
    ) -> BiRefNetRemover:
        """Weights from a folder (or file) holding model.safetensors, or a Hub repo id (default ZhengPeng7/BiRefNet)."""
        path = resolve_weights(source, token=token, local_files_only=local_files_only, cache_dir=cache_dir)
        log.info("loading BiRefNet weights from %s", path)
        model = load_birefnet(path, params, device=device, dtype=dtype)
        label = str(source) if not Path(source).expanduser().exists() else Path(source).name
        return cls(model, device=device, dtype=dtype, resolution=resolution, name=f"BiRefNet ({label})")

    @torch.inference_mode()
    def probability(self, image: Image.Image) -> torch.Tensor:
        """[R, R] fp32 foreground probability: sigmoid of the network's logits at the working resolution."""
        batch = preprocess(image, self.resolution).to(self.device, self.dtype)
        logits = self.model(batch)  # [1, 1, R, R]
        return torch.sigmoid(logits.float())[0, 0]

    def remove(self, image: Image.Image) -> Image.Image:
        return matte_image(self.probability(image), image.size)
