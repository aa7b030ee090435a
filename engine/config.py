"""The official pipeline.json as frozen dataclasses, validated in one place.

Mirrors what `Trellis2ImageTo3DPipeline.from_pretrained` reads from `args` (spec 2.2): the model table,
three `{name, args, params}` samplers, the two latent normalisations, the image-conditioning and
background-removal models, `low_vram` (default True) and `default_pipeline_type` (default
'1024_cascade'). Which checkpoints each pipeline type needs is spec 1.2's table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.errors import EngineInputError, WeightsError
from engine.sampling import SamplerParams

PIPELINE_TYPES = ("512", "1024", "1024_cascade", "1536_cascade")
DEFAULT_PIPELINE_TYPE = "1024_cascade"

SS_FLOW = "sparse_structure_flow_model"
SS_DECODER = "sparse_structure_decoder"
SHAPE_FLOW_512 = "shape_slat_flow_model_512"
SHAPE_FLOW_1024 = "shape_slat_flow_model_1024"
SHAPE_DECODER = "shape_slat_decoder"
TEX_FLOW_512 = "tex_slat_flow_model_512"
TEX_FLOW_1024 = "tex_slat_flow_model_1024"
TEX_DECODER = "tex_slat_decoder"

# Spec 1.2: the checkpoints each pipeline type runs. The official pipeline loads all eight whatever the
# type; we only fetch and load these.
REQUIRED_MODELS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "512": (SS_FLOW, SS_DECODER, SHAPE_FLOW_512, SHAPE_DECODER, TEX_FLOW_512, TEX_DECODER),
        "1024": (SS_FLOW, SS_DECODER, SHAPE_FLOW_1024, SHAPE_DECODER, TEX_FLOW_1024, TEX_DECODER),
        "1024_cascade": (
            SS_FLOW,
            SS_DECODER,
            SHAPE_FLOW_512,
            SHAPE_FLOW_1024,
            SHAPE_DECODER,
            TEX_FLOW_1024,
            TEX_DECODER,
        ),
        "1536_cascade": (
            SS_FLOW,
            SS_DECODER,
            SHAPE_FLOW_512,
            SHAPE_FLOW_1024,
            SHAPE_DECODER,
            TEX_FLOW_1024,
            TEX_DECODER,
        ),
    }
)


def check_pipeline_type(pipeline_type: str) -> str:
    if pipeline_type not in PIPELINE_TYPES:
        raise EngineInputError(f"unknown pipeline type {pipeline_type!r}; choose one of {', '.join(PIPELINE_TYPES)}")
    return pipeline_type


@dataclass(frozen=True)
class SamplerConfig:
    name: str  # "FlowEulerGuidanceIntervalSampler"
    args: Mapping[str, Any]  # constructor args: {"sigma_min": 1e-5}
    params: SamplerParams  # sigma_min from args, the rest from params


@dataclass(frozen=True)
class LatentNormalization:
    """Flows work on (latent - mean) / std, per channel (spec 1.5)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise EngineInputError(f"normalisation mean ({len(self.mean)}) and std ({len(self.std)}) differ in length")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise EngineInputError("normalisation std values must be positive and finite")

    @property
    def channels(self) -> int:
        return len(self.mean)


@dataclass(frozen=True)
class ComponentConfig:
    """An auxiliary model named by pipeline.json: `{"name": class, "args": {"model_name": repo or folder}}`."""

    name: str
    args: Mapping[str, Any]

    @property
    def model_name(self) -> str | None:
        value = self.args.get("model_name")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    models: Mapping[str, str]  # pipeline.json key -> "ckpts/<stem>" or "owner/repo/<subpath>"
    sparse_structure_sampler: SamplerConfig
    shape_slat_sampler: SamplerConfig
    tex_slat_sampler: SamplerConfig
    shape_slat_normalization: LatentNormalization
    tex_slat_normalization: LatentNormalization
    image_cond_model: ComponentConfig
    rembg_model: ComponentConfig | None  # required by the official loader; optional here
    low_vram: bool = True
    default_pipeline_type: str = DEFAULT_PIPELINE_TYPE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "pipeline.json") -> PipelineConfig:
        if not isinstance(data, Mapping) or not isinstance(data.get("args"), Mapping):
            raise WeightsError(f'{where}: expected {{"name": ..., "args": {{...}}}} at the top level')
        args = data["args"]

        def need(key: str) -> Any:
            if key not in args:
                raise WeightsError(f"{where}: missing args.{key}")
            return args[key]

        try:
            models = need("models")
            if not isinstance(models, Mapping) or not all(isinstance(v, str) for v in models.values()):
                raise WeightsError(f"{where}: args.models must map names to checkpoint paths")
            rembg = args.get("rembg_model")
            config = cls(
                name=str(data.get("name", "")),
                models=MappingProxyType(dict(models)),
                sparse_structure_sampler=_sampler(
                    need("sparse_structure_sampler"), f"{where}: sparse_structure_sampler"
                ),
                shape_slat_sampler=_sampler(need("shape_slat_sampler"), f"{where}: shape_slat_sampler"),
                tex_slat_sampler=_sampler(need("tex_slat_sampler"), f"{where}: tex_slat_sampler"),
                shape_slat_normalization=_normalization(need("shape_slat_normalization"), where),
                tex_slat_normalization=_normalization(need("tex_slat_normalization"), where),
                image_cond_model=_component(need("image_cond_model"), f"{where}: image_cond_model"),
                rembg_model=None if rembg is None else _component(rembg, f"{where}: rembg_model"),
                low_vram=bool(args.get("low_vram", True)),
                default_pipeline_type=str(args.get("default_pipeline_type", DEFAULT_PIPELINE_TYPE)),
            )
        except EngineInputError as exc:  # a bad value inside the file: the file is at fault, not the caller
            raise WeightsError(f"{where}: {exc}") from exc
        if config.default_pipeline_type not in PIPELINE_TYPES:
            raise WeightsError(
                f"{where}: default_pipeline_type {config.default_pipeline_type!r} is not one of {PIPELINE_TYPES}"
            )
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(data, where=str(path))

    def models_for(self, pipeline_type: str | None = None) -> dict[str, str]:
        """`{key: entry}` of the checkpoints `pipeline_type` runs (None: the file's default type)."""
        pipeline_type = check_pipeline_type(pipeline_type or self.default_pipeline_type)
        missing = [k for k in REQUIRED_MODELS[pipeline_type] if k not in self.models]
        if missing:
            raise WeightsError(f"pipeline.json has no entry for {', '.join(missing)}, needed by type {pipeline_type!r}")
        return {k: self.models[k] for k in REQUIRED_MODELS[pipeline_type]}


def _sampler(data: Any, where: str) -> SamplerConfig:
    if not isinstance(data, Mapping) or "name" not in data:
        raise WeightsError(f"{where}: expected {{name, args, params}}")
    params = data.get("params", {})
    if not isinstance(params, Mapping):
        raise WeightsError(f"{where}: params must be an object")
    return SamplerConfig(
        name=str(data["name"]),
        args=MappingProxyType(dict(data.get("args", {}))),
        params=SamplerParams.from_official(data),
    )


def _normalization(data: Any, where: str) -> LatentNormalization:
    if not isinstance(data, Mapping) or "mean" not in data or "std" not in data:
        raise WeightsError(f"{where}: a latent normalisation needs mean and std lists")
    try:
        return LatentNormalization(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{where}: normalisation values must be numbers ({exc})") from exc


def _component(data: Any, where: str) -> ComponentConfig:
    if not isinstance(data, Mapping) or "name" not in data:
        raise WeightsError(f"{where}: expected {{name, args}}")
    return ComponentConfig(name=str(data["name"]), args=MappingProxyType(dict(data.get("args", {}))))
