"""Scene settings the panel edits, and the record each result object keeps of how it was made.

`Scene.trellis2` holds the reference images and the generation settings (saved with the .blend).
`Object.trellis2` is the result's record: which generation it shows (the id of the in-memory stage cache
that "Regenerate" reuses), the images' hashes, the seed and every setting, so a result can be explained
and reproduced after Blender restarts.
"""

from __future__ import annotations

import json

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

RESOLUTIONS = (("512", "512", "Fastest; coarse geometry"), ("1024", "1024", "The default"), ("1536", "1536", "Finest"))
TEXTURE_SIZES = tuple((str(s), f"{s} px", f"{s} x {s} texture maps") for s in (256, 512, 1024, 2048, 4096))
# The release's pipeline.json sampler defaults (spec 1.2), shown when "Override Samplers" is on.
STAGES = ("sparse_structure", "shape", "texture")
STEPS_DEFAULT, GUIDANCE_DEFAULT = 12, {"sparse_structure": 7.5, "shape": 7.5, "texture": 1.0}


MATTE_CHOICES = (
    ("AUTO", "Automatic", "No preview: Generate removes the background if the image has no transparency"),
    ("PREVIEW", "Previewed", "A matte was made; Keep it or Discard it (until then Generate works as Automatic)"),
    ("KEPT", "Kept", "Generate uses the cut-out image (edit it in the Image Editor if you like); no remover runs"),
    ("DISCARDED", "Discarded", "Rejected: choose another image, give this one transparency, or preview again"),
)


def _image_changed(self, context) -> None:
    """Another picture in the row: the matte of the old one does not apply (its image stays in the .blend)."""
    if self.matte is not None or self.matte_choice != "AUTO":
        self.matte = None
        self.matte_choice = "AUTO"


class TRELLIS2_PG_image(PropertyGroup):
    """One reference picture, and the choice made about its background matte (Preview Matte, Keep, Discard)."""

    image: PointerProperty(
        name="Image", type=bpy.types.Image, description="A reference picture of the object", update=_image_changed
    )
    matte: PointerProperty(name="Matte", type=bpy.types.Image, description="The cut-out made by Preview Matte")
    matte_choice: EnumProperty(name="Matte", items=MATTE_CHOICES, default="AUTO")


def _steps(stage: str) -> IntProperty:
    return IntProperty(name="Steps", default=STEPS_DEFAULT, min=1, max=100, description=f"{stage} sampler steps")


def _guidance(stage: str) -> FloatProperty:
    return FloatProperty(
        name="Guidance", default=GUIDANCE_DEFAULT[stage], min=0.0, max=20.0, description=f"{stage} guidance strength"
    )


class TRELLIS2_PG_settings(PropertyGroup):
    images: CollectionProperty(type=TRELLIS2_PG_image)
    active_image: IntProperty(name="Active Image", default=0)
    resolution: EnumProperty(name="Resolution", items=RESOLUTIONS, default="1024")
    seed: IntProperty(name="Seed", default=42, min=0, max=2**31 - 1, description="Same seed, same result")
    randomize_seed: BoolProperty(name="Randomize", default=False, description="Pick a new seed for every Generate")
    show_advanced: BoolProperty(name="Advanced", default=False)
    override_samplers: BoolProperty(
        name="Override Samplers", default=False, description="Use these steps and guidance instead of the model's"
    )
    sparse_structure_steps: _steps("Sparse structure")
    sparse_structure_guidance: _guidance("sparse_structure")
    shape_steps: _steps("Shape")
    shape_guidance: _guidance("shape")
    texture_steps: _steps("Texture")
    texture_guidance: _guidance("texture")
    multi_image_mode: EnumProperty(
        name="Several Images",
        items=(
            ("stochastic", "Stochastic", "One image per sampler step, in turn (the official default)"),
            ("multidiffusion", "Average", "Every image at every step (slower, steadier)"),
        ),
        default="stochastic",
    )
    face_budget: IntProperty(name="Face Budget", default=200_000, min=1_000, max=2_000_000, step=10_000)
    texture_size: EnumProperty(name="Texture Size", items=TEXTURE_SIZES, default="1024")
    object_size: FloatProperty(
        name="Size", default=1.0, min=0.001, soft_max=100.0, unit="LENGTH", description="Longest side of the result"
    )
    light_style: EnumProperty(
        name="Light",
        items=(("STUDIO", "Studio", "Soft grey studio gradient"), ("SKY", "Sky", "Procedural daylight sky")),
        default="STUDIO",
    )

    def sampler_overrides(self) -> dict[str, dict]:
        """Per-stage {"steps", "guidance_strength"} when overriding, else empty (pipeline.json decides)."""
        if not self.override_samplers:
            return {stage: {} for stage in STAGES}
        return {
            stage: {"steps": getattr(self, f"{stage}_steps"), "guidance_strength": getattr(self, f"{stage}_guidance")}
            for stage in STAGES
        }


class TRELLIS2_PG_record(PropertyGroup):
    """How an object was generated. An empty `generation_id` means: not a TRELLIS.2 result."""

    generation_id: StringProperty(name="Generation", description="Key of the stage cache kept while Blender runs")
    image_hashes: StringProperty(name="Image Hashes", description="Content hashes of the preprocessed images")
    seed: IntProperty(name="Seed")
    resolution: IntProperty(name="Resolution")
    pipeline_type: StringProperty(name="Pipeline Type")
    model_source: StringProperty(name="Model")
    face_budget: IntProperty(name="Face Budget")
    texture_size: IntProperty(name="Texture Size")
    object_size: FloatProperty(name="Size", default=1.0)
    settings_json: StringProperty(name="Settings", description="Every engine setting, as JSON")

    @property
    def is_result(self) -> bool:
        return bool(self.generation_id)

    def settings(self) -> dict:
        return json.loads(self.settings_json) if self.settings_json else {}


classes = (TRELLIS2_PG_image, TRELLIS2_PG_settings, TRELLIS2_PG_record)


def register() -> None:
    bpy.types.Scene.trellis2 = PointerProperty(type=TRELLIS2_PG_settings)
    bpy.types.Object.trellis2 = PointerProperty(type=TRELLIS2_PG_record)


def unregister() -> None:
    del bpy.types.Object.trellis2
    del bpy.types.Scene.trellis2
