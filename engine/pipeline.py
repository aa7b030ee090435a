"""Image(s) -> textured O-Voxel asset: the official TRELLIS.2 run, with progress, cancel and regenerate.

`Trellis2Pipeline.run` follows `Trellis2ImageTo3DPipeline.run` (spec 1.3) stage by stage; each stage's
typed result is kept in the returned `Generation`, so `regenerate(previous, resolution=1536)` reuses
the conditioning and the sparse structure and only samples what changes. Noise comes from one CPU
generator seeded per run, in the official order, so a seed reproduces the official noise and a
regenerated asset equals a fresh run at that resolution with the same seed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from engine import config as cfg
from engine import stages
from engine.config import PipelineConfig
from engine.errors import EngineInputError
from engine.holes import fill_small_holes
from engine.model_store import ModelStore
from engine.multiview import MULTI_IMAGE_MODES, MultiViewModel
from engine.results import Asset, Conditioning, Generation, ShapeLatent, SparseStructure, TextureLatent
from engine.runtime import Runtime
from engine.sampling import sample_euler
from engine.sparse import SparseTensor

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
RESOLUTION_TYPES = MappingProxyType({512: "512", 1024: "1024_cascade", 1536: "1536_cascade"})
MAX_HOLE_PERIMETER = 0.03


@dataclass(frozen=True)
class GenerationSettings:
    """What an artist chooses. Sampler overrides are merged over pipeline.json's params per stage."""

    pipeline_type: str | None = None  # None: pipeline.json's default ('1024_cascade' in the release)
    seed: int = 42
    sparse_structure_sampler: Mapping[str, Any] = field(default_factory=dict)
    shape_sampler: Mapping[str, Any] = field(default_factory=dict)
    texture_sampler: Mapping[str, Any] = field(default_factory=dict)
    max_num_tokens: int = 49152
    multi_image_mode: str = "stochastic"
    preprocess_image: bool = True
    fill_holes: bool = True

    def __post_init__(self) -> None:
        if self.pipeline_type is not None:
            cfg.check_pipeline_type(self.pipeline_type)
        if self.multi_image_mode not in MULTI_IMAGE_MODES:
            raise EngineInputError(f"multi_image_mode must be one of {MULTI_IMAGE_MODES}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise EngineInputError(f"seed must be a whole number from 0 to 2^63 - 1, got {self.seed!r}")
        if self.max_num_tokens < 1:
            raise EngineInputError("max_num_tokens must be at least 1")

    @classmethod
    def for_resolution(cls, resolution: int, **kwargs: Any) -> GenerationSettings:
        """The web demo's mapping: 512 -> '512', 1024 -> '1024_cascade', 1536 -> '1536_cascade'."""
        if resolution not in RESOLUTION_TYPES:
            raise EngineInputError(f"resolution must be 512, 1024 or 1536, got {resolution!r}")
        return cls(pipeline_type=RESOLUTION_TYPES[resolution], **kwargs)


class CancelToken:
    """Set from any thread; the sampler checks it between steps and raises `Cancelled`."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def image_hash(image: Any) -> str:
    """A stable content hash of a (preprocessed) PIL image, to remember which pictures made an asset."""
    h = hashlib.sha256()
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:16]


class Trellis2Pipeline:
    """The loaded pipeline: config, models (lazy), the image encoder and an optional background remover."""

    def __init__(
        self,
        config: PipelineConfig,
        models: ModelStore,
        image_encoder: Any = None,
        remover: Any = None,
        resolve_type: Callable[[str], Mapping[str, Path]] | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.image_encoder = image_encoder
        self.remover = remover
        self._resolve_type = resolve_type
        self.shape_norm = _normalization(config.shape_slat_normalization)
        self.tex_norm = _normalization(config.tex_slat_normalization)

    @property
    def runtime(self) -> Runtime:
        return self.models.runtime

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = "microsoft/TRELLIS.2-4B",
        *,
        runtime: Runtime | None = None,
        pipeline_type: str | None = None,
        memory: str = "low_vram",
        options: Any = None,
        downloader: Any = None,
        on_download: Callable | None = None,
        image_encoder: Any = None,
        remover: Any = None,
    ) -> Trellis2Pipeline:
        """Resolve `source` (repo id or local folder), fetch what `pipeline_type` runs, load lazily.

        `image_encoder` replaces the DINOv3 model named in pipeline.json (tests inject stored features);
        `remover` is an `engine.background.BackgroundRemover` used for images without alpha.
        """
        from engine.hub import resolve_pipeline

        runtime = runtime or Runtime.auto()

        def resolve(ptype: str | None, with_encoder: bool):
            return resolve_pipeline(
                source,
                ptype,
                options=options,
                downloader=downloader,
                on_progress=on_download,
                image_cond=with_encoder,
            )

        resolved = resolve(pipeline_type, image_encoder is None)
        if image_encoder is None:
            from engine.conditioning.dinov3 import load_dinov3

            image_encoder = load_dinov3(resolved.image_cond, device=runtime.device)
        store = ModelStore({k: m.stem for k, m in resolved.models.items()}, runtime, memory)

        def resolve_type(ptype: str) -> Mapping[str, Path]:
            return {k: m.stem for k, m in resolve(ptype, False).models.items()}

        return cls(resolved.config, store, image_encoder, remover, resolve_type)

    def _require_type(self, pipeline_type: str) -> None:
        missing = [k for k in cfg.REQUIRED_MODELS[pipeline_type] if k not in self.models.stems]
        if missing and self._resolve_type is not None:
            self.models.add(self._resolve_type(pipeline_type))

    # -- stages ---------------------------------------------------------------------------------

    def prepare_images(self, images: Sequence[Any], preprocess: bool = True) -> list:
        from engine.conditioning.preprocess import load_image, preprocess_image

        if not images:
            raise EngineInputError("give at least one reference image")
        if not preprocess:
            return [load_image(im) for im in images]
        return [preprocess_image(im, self.remover) for im in images]

    def condition(
        self, images: Sequence[Any], pipeline_type: str, previous: Conditioning | None = None
    ) -> Conditioning:
        """DINOv3 tokens per view at 512 px, and at 1024 px unless the type is '512' (reusing `previous`)."""
        if self.image_encoder is None:
            raise EngineInputError("this pipeline has no image encoder; load it with from_pretrained")
        encode = self.image_encoder.encode
        hashes = tuple(image_hash(im) for im in images)
        same = previous is not None and previous.image_hashes == hashes
        c512 = previous.cond_512 if same else torch.cat([encode(im, 512).cpu() for im in images])
        c1024 = None
        if pipeline_type != "512":
            c1024 = previous.cond_1024 if same and previous.cond_1024 is not None else None
            if c1024 is None:
                c1024 = torch.cat([encode(im, 1024).cpu() for im in images])
        return Conditioning(cond_512=c512, cond_1024=c1024, image_hashes=hashes)

    def _sample(self, key, noise, cond, sampler, overrides, stage, hooks, model_kwargs=None, trace=None):
        """One sampler run of model `key` on the runtime device; returns the samples on the CPU."""
        if trace is not None:
            hooks.record(f"{trace}.noise.coords", noise.coords)
            hooks.record(f"{trace}.noise.feats", noise.feats)
        params = sampler.params.merged(overrides)
        device = self.runtime.device
        with self.models.use(key) as model:
            wrapped = MultiViewModel(model, hooks.mode)
            cond_d = cond.to(device)
            neg = torch.zeros_like(cond_d[:1])
            kwargs = {k: v.to(device) for k, v in (model_kwargs or {}).items()}
            result = sample_euler(
                wrapped,
                noise.to(device),
                cond_d,
                neg,
                params,
                model_kwargs=kwargs,
                callback=hooks.step,
                cancel=hooks.cancel,
                stage=stage,
            )
        samples = result.samples.to("cpu")
        if trace is not None:
            hooks.record(f"{trace}.samples.feats", samples.feats)
        return samples

    def sample_structure(self, cond: Conditioning, generator: torch.Generator, settings, hooks) -> SparseStructure:
        with torch.no_grad():
            model = self.models.get(cfg.SS_FLOW)
            noise = stages.draw_structure_noise(model, generator)
            latent = self._sample(
                cfg.SS_FLOW,
                noise,
                cond.cond_512,
                self.config.sparse_structure_sampler,
                settings.sparse_structure_sampler,
                "sparse_structure",
                hooks,
            )
            with self.models.use(cfg.SS_DECODER) as decoder:
                logits = decoder(latent.to(self.runtime.device)).float().cpu()
        occupancy = stages.occupancy_coords(logits)
        hooks.record("ss.noise", noise)
        hooks.record("ss.samples", latent)
        hooks.record("ss.occupancy_full.coords", occupancy)
        return SparseStructure(latent=latent, occupancy=occupancy, grid=logits.shape[-1], seed=settings.seed)

    def sample_shape(self, structure, cond, ptype, generator, settings, hooks) -> ShapeLatent:
        occ = structure.occupancy
        coords = stages.pool_occupancy(occ, structure.grid) if stages.uses_pooled_structure(ptype) else occ
        if coords.shape[0] == 0:
            raise EngineInputError(
                "the sparse structure came out empty: nothing was generated. Try another seed, or an image "
                "where the object is clearly visible on a plain background."
            )
        sampler, overrides = self.config.shape_slat_sampler, settings.shape_sampler
        with torch.no_grad():
            if ptype in ("512", "1024"):
                key = cfg.SHAPE_FLOW_512 if ptype == "512" else cfg.SHAPE_FLOW_1024
                c = cond.cond_512 if ptype == "512" else cond.cond_1024
                noise = stages.sparse_noise(coords, self.models.get(key).in_channels, generator)
                slat = self._sample(key, noise, c, sampler, overrides, "shape", hooks, trace="shape")
                feats = self.shape_norm.denormalize(slat.feats)
                hooks.record("shape_slat.feats", feats)
                return ShapeLatent(coords=slat.coords, feats=feats, resolution=int(ptype), pipeline_type=ptype)
            lr_noise = stages.sparse_noise(coords, self.models.get(cfg.SHAPE_FLOW_512).in_channels, generator)
            lr = self._sample(
                cfg.SHAPE_FLOW_512, lr_noise, cond.cond_512, sampler, overrides, "shape_512", hooks, trace="shape_lr"
            )
            lr = lr.replace(self.shape_norm.denormalize(lr.feats))
            lr_mesh_res = structure.grid // 2 * stages.LATENT_TO_MESH
            with self.models.use(cfg.SHAPE_DECODER) as decoder:
                hr = decoder.upsample(lr.to(self.runtime.device), upsample_times=4).cpu()
            hooks.record("cascade.upsampled.coords", hr)
            hr_coords, res = stages.cascade_coords(
                hr, lr_mesh_res, stages.CASCADE_TARGET[ptype], settings.max_num_tokens
            )
            noise = stages.sparse_noise(hr_coords, self.models.get(cfg.SHAPE_FLOW_1024).in_channels, generator)
            slat = self._sample(
                cfg.SHAPE_FLOW_1024, noise, cond.cond_1024, sampler, overrides, "shape_1024", hooks, trace="shape_hr"
            )
            feats = self.shape_norm.denormalize(slat.feats)
        hooks.record("shape_slat.feats", feats)
        return ShapeLatent(coords=slat.coords, feats=feats, resolution=res, pipeline_type=ptype)

    def sample_texture(self, shape: ShapeLatent, cond: Conditioning, generator, settings, hooks) -> TextureLatent:
        ptype = shape.pipeline_type
        key = cfg.TEX_FLOW_512 if ptype == "512" else cfg.TEX_FLOW_1024
        c = cond.cond_512 if ptype == "512" else cond.cond_1024
        model = self.models.get(key)
        concat = SparseTensor(self.shape_norm.normalize(shape.feats), shape.coords)
        with torch.no_grad():
            noise = stages.sparse_noise(shape.coords, model.out_channels, generator)
            tex = self._sample(
                key,
                noise,
                c,
                self.config.tex_slat_sampler,
                settings.texture_sampler,
                "texture",
                hooks,
                model_kwargs={"concat_cond": concat},
                trace="tex",
            )
        feats = self.tex_norm.denormalize(tex.feats)
        hooks.record("tex.concat_cond.feats", concat.feats)
        hooks.record("tex_slat.feats", feats)
        return TextureLatent(feats=feats)

    def decode(self, shape: ShapeLatent, texture: TextureLatent, settings, hooks) -> Asset:
        """Shape decoder (mesh + subdivisions), texture decoder guided by them, then small-hole filling."""
        hooks.report("decode", 0, 2)
        device = self.runtime.device
        with torch.no_grad():
            with self.models.use(cfg.SHAPE_DECODER) as decoder:
                decoder.set_resolution(shape.resolution)
                slat = SparseTensor(shape.feats, shape.coords).to(device)
                meshes, subs = decoder(slat, return_subs=True)
            hooks.report("decode", 1, 2)
            with self.models.use(cfg.TEX_DECODER) as decoder:
                tex = SparseTensor(texture.feats, shape.coords).to(device)
                pbr = decoder(tex, guide_subs=subs)
        for i, sub in enumerate(subs):
            hooks.record(f"shape_dec.subs.{i}.coords", sub.coords)
            hooks.record(f"shape_dec.subs.{i}.feats", sub.feats)
        mesh = meshes[0]
        hooks.record("output.mesh.vertices", mesh.vertices)
        hooks.record("output.mesh.faces", mesh.faces)
        hooks.record("output.attrs.coords", pbr.coords)
        vertices = mesh.vertices.float().cpu().numpy()
        faces = mesh.faces.cpu().numpy().astype(np.int64)
        if settings.fill_holes:
            vertices, faces, _ = fill_small_holes(vertices, faces, MAX_HOLE_PERIMETER)
        attrs = (pbr.feats.float() * 0.5 + 0.5).cpu()
        hooks.record("output.attrs.feats", attrs)
        attrs = attrs.numpy()
        hooks.report("decode", 2, 2)
        return Asset(
            vertices=vertices,
            faces=faces,
            coords=pbr.coords[:, 1:].cpu().numpy().astype(np.int32),
            attrs=attrs,
            resolution=shape.resolution,
            voxel_size=1.0 / shape.resolution,
        )

    # -- whole runs -----------------------------------------------------------------------------

    def run(
        self,
        images: Sequence[Any],
        settings: GenerationSettings | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | Callable[[], bool] | None = None,
        trace: dict[str, torch.Tensor] | None = None,
    ) -> Generation:
        """One or more images of one object -> a `Generation` (all stage results plus the `Asset`)."""
        settings = settings or GenerationSettings()
        ptype = settings.pipeline_type or self.config.default_pipeline_type
        self._require_type(ptype)
        prepared = self.prepare_images(images, settings.preprocess_image)
        hooks = _Hooks(on_progress, cancel, settings.multi_image_mode, trace)
        cond = self.condition(prepared, ptype)
        generator = torch.Generator().manual_seed(settings.seed)
        structure = self.sample_structure(cond, generator, settings, hooks)
        return self._finish(prepared, cond, structure, ptype, generator, settings, hooks)

    def regenerate(
        self,
        previous: Generation,
        resolution: int | None = None,
        pipeline_type: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | Callable[[], bool] | None = None,
        **changes: Any,
    ) -> Generation:
        """Run again at another resolution, reusing conditioning and sparse structure.

        The sparse structure only depends on the images and the seed, so it is reused as is; the RNG is
        replayed past the structure noise, which makes the result equal to a fresh run at that setting.
        """
        if resolution is not None and pipeline_type is not None:
            raise EngineInputError("give either a resolution or a pipeline type, not both")
        if resolution is not None:
            pipeline_type = GenerationSettings.for_resolution(resolution).pipeline_type
        if "seed" in changes or "sparse_structure_sampler" in changes:
            raise EngineInputError("a new seed or structure sampler changes the whole asset: call run() instead")
        settings = replace(previous.settings, pipeline_type=pipeline_type or previous.settings.pipeline_type, **changes)
        ptype = settings.pipeline_type or self.config.default_pipeline_type
        self._require_type(ptype)
        hooks = _Hooks(on_progress, cancel, settings.multi_image_mode, None)
        cond = self.condition(previous.images, ptype, previous.conditioning)
        generator = torch.Generator().manual_seed(settings.seed)
        stages.draw_structure_noise(self.models.get(cfg.SS_FLOW), generator)  # replay the first draw
        return self._finish(previous.images, cond, previous.structure, ptype, generator, settings, hooks)

    def _finish(self, images, cond, structure, ptype, generator, settings, hooks) -> Generation:
        shape = self.sample_shape(structure, cond, ptype, generator, settings, hooks)
        texture = self.sample_texture(shape, cond, generator, settings, hooks)
        asset = self.decode(shape, texture, settings, hooks)
        return Generation(
            images=list(images),
            conditioning=cond,
            structure=structure,
            shape=shape,
            texture=texture,
            asset=asset,
            settings=replace(settings, pipeline_type=ptype),
        )


class _Hooks:
    """Progress, cancel and the multi-image mode, threaded through the stages of one run."""

    def __init__(self, on_progress: ProgressCallback | None, cancel: Any, mode: str, trace: dict | None) -> None:
        self.on_progress = on_progress
        self.cancel = cancel
        self.mode = mode
        self.trace = trace

    def record(self, name: str, value: torch.Tensor) -> None:
        """Keep an intermediate (under the official fixture's key names) when the caller asked for a trace."""
        if self.trace is not None:
            self.trace[name] = value.detach().cpu().clone()

    def step(self, stage: str, step: int, total: int, preview: Any) -> None:
        self.report(stage, step, total)

    def report(self, stage: str, step: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, step, total)


def _normalization(norm: cfg.LatentNormalization) -> stages.Normalization:
    return stages.Normalization(
        torch.tensor(norm.mean, dtype=torch.float32), torch.tensor(norm.std, dtype=torch.float32)
    )
