"""What a generation computes, away from Blender: cached pipelines, the engine run, finishing, encoded maps.

Nothing here imports bpy, so it is safe on jobs.py's worker thread and testable without Blender; `api`
calls the same functions synchronously for scripts. The engine (and torch) are imported inside the
functions: registering the add-on must not import them.

Three caches live for the Blender session: the loaded pipeline (one at a time: a model holds gigabytes),
the loaded background remover (one at a time, loaded only when an image without transparency needs it),
and recent `Generation`s by id, which an object's record points to so "Regenerate at 1536" can reuse
the conditioning and the sparse structure.
"""

from __future__ import annotations

import io
import logging
import sys
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_REPO = "microsoft/TRELLIS.2-4B"
DEFAULT_REMOVER = "ZhengPeng7/BiRefNet"  # MIT, not gated; "briaai/RMBG-2.0" (gated, non-commercial) is an opt-in
MAX_REMEMBERED = 8  # generations kept for regenerate (each holds its conditioning tokens and latents)
PNG_LEVEL = 1  # zlib level: maps are large and encoding runs on every generation; the .blend pays a little

Progress = Callable[[str, int, int], None]
CancelCheck = Callable[[], bool]


class AddonError(Exception):
    """A problem the add-on itself found (no image chosen, result deleted...); the message is for people."""


@dataclass(frozen=True)
class ModelOptions:
    """Where the weights come from and how they run (Preferences, or the command line)."""

    source: str = DEFAULT_REPO  # Hugging Face repo id or a local folder holding pipeline.json
    cache_dir: str | None = None
    token: str | None = field(default=None, repr=False)
    device: str = "auto"  # auto | cuda | mps | cpu
    memory: str = "low_vram"  # low_vram | fast
    offline: bool = False
    remove_background: bool = True  # images without transparency get a matte from the remover
    remover_source: str = DEFAULT_REMOVER  # Hugging Face repo id or a folder holding model.safetensors

    def key(self) -> tuple:
        return (self.source, self.cache_dir, self.device, self.memory, self.offline)

    def remover_key(self) -> tuple:
        return (self.remover_source, self.cache_dir, self.device, self.offline)


@dataclass(frozen=True)
class Request:
    """One generation in plain values (no Blender or engine types): images, settings, how to finish."""

    images: tuple  # PIL images or file paths
    resolution: int = 1024  # 512 | 1024 | 1536
    seed: int = 42
    samplers: dict = field(default_factory=dict)  # stage -> {"steps", "guidance_strength"} overrides
    multi_image_mode: str = "stochastic"
    model: ModelOptions = ModelOptions()
    face_budget: int = 200_000
    texture_size: int = 1024
    object_size: float = 1.0  # metres, longest side
    name: str = "TRELLIS.2"

    def settings(self):
        """The engine's `GenerationSettings` (imports the engine: call it on the worker)."""
        from engine.pipeline import GenerationSettings

        return GenerationSettings.for_resolution(
            self.resolution,
            seed=self.seed,
            sparse_structure_sampler=dict(self.samplers.get("sparse_structure", {})),
            shape_sampler=dict(self.samplers.get("shape", {})),
            texture_sampler=dict(self.samplers.get("texture", {})),
            multi_image_mode=self.multi_image_mode,
        )

    def describe(self) -> dict:
        """What the object's record keeps (JSON-able)."""
        return {
            "resolution": self.resolution,
            "seed": self.seed,
            "samplers": self.samplers,
            "multi_image_mode": self.multi_image_mode,
            "face_budget": self.face_budget,
            "texture_size": self.texture_size,
            "object_size": self.object_size,
        }


@dataclass(frozen=True)
class MaterialMaps:
    """What the material needs, without Blender types: PNG-encoded maps and the alpha / culling flags."""

    base_color_png: bytes  # sRGB RGBA
    metallic_roughness_png: bytes  # glTF layout: G roughness, B metallic
    size: int
    alpha_mode: str = "OPAQUE"  # OPAQUE | MASK | BLEND
    alpha_cutoff: float = 0.5
    double_sided: bool = True


@dataclass
class Result:
    """A finished generation, ready for the main thread to turn into Blender data."""

    generation: Any  # engine.results.Generation
    asset: Any  # engine.finish.FinishedAsset
    maps: MaterialMaps
    request: Request


# ------------------------------------------------------------------------------------------------ caches

_pipelines: dict[tuple, Any] = {}
_removers: dict[tuple, Any] = {}
_generations: OrderedDict[str, Any] = OrderedDict()


def _runtime(model: ModelOptions):
    from engine.runtime import Runtime

    try:
        return Runtime.auto(model.device)
    except ValueError as exc:
        from engine.errors import EngineError

        raise EngineError(f"{exc}. Choose another Device in the TRELLIS.2 add-on preferences.") from exc


def pipeline(model: ModelOptions, on_progress: Progress | None = None):
    """The loaded `Trellis2Pipeline` for `model` (loading or downloading it the first time)."""
    key = model.key()
    if key in _pipelines:
        return _pipelines[key]
    from engine.hub import HubOptions
    from engine.pipeline import Trellis2Pipeline

    def on_download(p) -> None:
        if on_progress is not None and p.overall_total:
            on_progress("download", int(p.overall_done // 1_000_000), max(1, int(p.overall_total // 1_000_000)))

    runtime = _runtime(model)
    options = HubOptions(cache_dir=model.cache_dir, token=model.token or None, offline=model.offline)
    loaded = Trellis2Pipeline.from_pretrained(
        model.source, runtime=runtime, memory=model.memory, options=options, on_download=on_download
    )
    _pipelines.clear()  # one model in memory at a time
    _pipelines[key] = loaded
    return loaded


def forget_pipelines() -> None:
    _pipelines.clear()


def load_remover(model: ModelOptions):
    """The one place background-removal weights are loaded: BiRefNet from `model.remover_source`, on the
    pipeline's device, with the token, cache folder and offline choice of the model. Tests replace this
    function (monkeypatch) with a stand-in that returns any `engine.background.BackgroundRemover`."""
    from engine.background.remover import BiRefNetRemover

    return BiRefNetRemover.from_pretrained(
        model.remover_source,
        device=_runtime(model).device,
        token=model.token or None,
        local_files_only=model.offline,
        cache_dir=model.cache_dir,
    )


def remover(model: ModelOptions):
    """The loaded background remover for `model` (loading or downloading it the first time)."""
    key = model.remover_key()
    if key not in _removers:
        loaded = load_remover(model)
        _removers.clear()  # one remover in memory at a time
        _removers[key] = loaded
    return _removers[key]


def forget_removers() -> None:
    _removers.clear()


REMOVAL_OFF = (
    "This image has no transparency and Background Removal is off (Preferences > Add-ons > TRELLIS.2). "
    "Turn Background Removal on, or supply an image with transparency (an alpha channel around the object), "
    "or use Preview Matte in the panel and Keep the cut-out."
)


class OnDemandRemover:
    """What the pipeline gets as its remover: loads the real one only when an image without transparency
    reaches it (images with their own alpha never do), and shows the step as "background removal".
    With removal off in Preferences it says how to go on instead."""

    def __init__(self, model: ModelOptions, on_progress: Progress | None = None) -> None:
        self.model, self.on_progress = model, on_progress
        self.name = f"Background removal ({model.remover_source})"

    def remove(self, image):
        if not self.model.remove_background:
            raise AddonError(REMOVAL_OFF)
        if self.on_progress is not None:
            self.on_progress("background_removal", 0, 1)
        matte = remover(self.model).remove(image)
        if self.on_progress is not None:
            self.on_progress("background_removal", 1, 1)
        return matte


def cut_out(image, model: ModelOptions, on_progress: Progress | None = None, cancel: CancelCheck | None = None):
    """PIL image -> RGBA cut-out (the remover's matte as alpha), for the panel's matte preview.

    Refuses an image that already has transparency (generation uses its own alpha, no matte needed) and a
    matte that finds no object or no background, with the engine's messages.
    """
    from engine.background import ensure_alpha, needs_matte
    from engine.conditioning.preprocess import as_rgb_or_rgba, load_image
    from engine.errors import Cancelled

    image = as_rgb_or_rgba(load_image(image))
    if not needs_matte(image):
        raise AddonError(
            "This image already has transparency: Generate uses its own alpha and never removes its background. "
            "To preview a matte, use a picture without an alpha channel."
        )
    if on_progress is not None:
        on_progress("background_removal", 0, 1)
    loaded = remover(model)
    if cancel is not None and cancel():
        raise Cancelled("cancelled")
    rgba = ensure_alpha(image.convert("RGB"), loaded)  # checks the matte: an object and a background found
    if on_progress is not None:
        on_progress("background_removal", 1, 1)
    return rgba


def remember(generation) -> str:
    """Keep `generation` for later regenerates; returns the id an object's record stores."""
    gid = uuid.uuid4().hex
    _generations[gid] = generation
    while len(_generations) > MAX_REMEMBERED:
        _generations.popitem(last=False)
    return gid


def recall(gid: str):
    """The remembered `Generation`, or None (Blender restarted, or evicted after MAX_REMEMBERED newer runs)."""
    generation = _generations.get(gid)
    if generation is not None:
        _generations.move_to_end(gid)
    return generation


# ------------------------------------------------------------------------------------------------- runs


def generate(request: Request, on_progress: Progress | None = None, cancel: CancelCheck | None = None) -> Result:
    """Images -> engine `Generation` -> `FinishedAsset` -> encoded maps."""
    pipe = pipeline(request.model, on_progress)
    pipe.remover = OnDemandRemover(request.model, on_progress)
    generation = pipe.run(list(request.images), request.settings(), on_progress=on_progress, cancel=cancel)
    return _finish(generation, request, on_progress, cancel)


def regenerate(
    previous, resolution: int, request: Request, on_progress: Progress | None = None, cancel: CancelCheck | None = None
) -> Result:
    """`previous` at another resolution: conditioning and sparse structure are reused, not recomputed."""
    pipe = pipeline(request.model, on_progress)
    generation = pipe.regenerate(previous, resolution=resolution, on_progress=on_progress, cancel=cancel)
    return _finish(generation, request, on_progress, cancel)


def _finish(generation, request: Request, on_progress: Progress | None, cancel: CancelCheck | None) -> Result:
    from engine.errors import Cancelled
    from engine.finish import finish

    def check() -> None:
        if cancel is not None and cancel():
            raise Cancelled("cancelled")

    check()
    if on_progress is not None:
        on_progress("finish", 0, 2)
    a = generation.asset
    asset = finish(
        a.vertices, a.faces, a, face_budget=request.face_budget, texture_size=request.texture_size, name=request.name
    )
    check()
    if on_progress is not None:
        on_progress("finish", 1, 2)
    maps = encode_maps(asset)
    check()
    if on_progress is not None:
        on_progress("finish", 2, 2)
    return Result(generation=generation, asset=asset, maps=maps, request=request)


def encode_png(pixels) -> bytes:
    """uint8 [H, W, 3|4] (row 0 at the top) -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def encode_maps(asset) -> MaterialMaps:
    """The finished asset's maps as PNG bytes plus its alpha and culling flags."""
    return MaterialMaps(
        base_color_png=encode_png(asset.base_color),
        metallic_roughness_png=encode_png(asset.metallic_roughness),
        size=int(asset.base_color.shape[0]),
        alpha_mode=asset.alpha_mode,
        alpha_cutoff=float(asset.alpha_cutoff),
        double_sided=bool(asset.double_sided),
    )


# ----------------------------------------------------------------------------------------------- errors

OOM_ADVICE = (
    "Set Memory to 'Low VRAM' in the TRELLIS.2 add-on preferences, choose a lower resolution, or close other "
    "programs that use the GPU, then try again"
)


def explain(exc: BaseException) -> str:
    """A message for the person at the keyboard: what happened and what to do."""
    errors = sys.modules.get("engine.errors")  # not imported yet: the error cannot be one of the engine's
    if isinstance(exc, AddonError) or (errors is not None and isinstance(exc, errors.EngineError)):
        return str(exc)
    if _is_out_of_memory(exc):
        return f"The GPU ran out of memory ({str(exc).splitlines()[0][:120]}). {OOM_ADVICE}."
    return f"TRELLIS.2 failed unexpectedly: {type(exc).__name__}: {exc}. The system console has the details."


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
