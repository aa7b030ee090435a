"""The scriptable API: what the panel's buttons do, as functions. The operators only wrap these.

    from blender_trellis2 import api
    obj = api.generate(["chair.png"], resolution=1024, seed=7, model=api.ModelOptions("/models/TRELLIS.2-4B"))
    api.regenerate(obj, 1536)          # same object, new mesh and material; early stages reused
    api.relight(obj, "SKY")            # procedural world + turntable camera

    item = bpy.context.scene.trellis2.images[0]
    api.preview_matte(item)            # "<image> (matte)": the background-removal cut-out, to look at
    api.keep_matte(item)               # Generate now uses the cut-out (no remover call); or api.discard_matte(item)

Three layers, so that a job can run the middle one on its worker thread:
`make_request` (main thread: read and check the inputs) -> `work.generate` (engine; no Blender data) ->
`add_result` / `replace_result` (main thread: Blender data, all or nothing).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import jobs, materials, mesh_import, work
from . import relight as _relight
from .work import AddonError, ModelOptions, Request

COLLECTION = "TRELLIS.2"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr", ".tga")

__all__ = [
    "AddonError",
    "ModelOptions",
    "Request",
    "add_result",
    "discard_matte",
    "find_result",
    "generate",
    "generate_job",
    "keep_matte",
    "make_request",
    "model_options",
    "preview_matte",
    "preview_matte_job",
    "regenerate",
    "regenerate_job",
    "relight",
    "replace_result",
]


# ------------------------------------------------------------------------------------------- inputs


def model_options(context=None) -> ModelOptions:
    """Model source, cache, token, device, memory mode and background removal from the add-on preferences
    (defaults if disabled)."""
    from . import preferences

    prefs = preferences.get_prefs(context)
    if prefs is None:
        return ModelOptions()
    if prefs.model_source == "LOCAL":
        if not prefs.local_model_folder.strip():
            raise AddonError(
                "No model folder chosen: set Model Folder in Preferences > Add-ons > TRELLIS.2, "
                "or switch Model Source to Hugging Face."
            )
        source = bpy.path.abspath(prefs.local_model_folder)
    else:
        source = prefs.hf_repo_id.strip() or work.DEFAULT_REPO
    return ModelOptions(
        source=source,
        cache_dir=str(preferences.cache_folder(prefs)),
        token=prefs.hf_token.strip() or None,
        device=prefs.device.lower(),
        memory=prefs.memory_mode.lower(),
        remove_background=prefs.remove_background,
        remover_source=_remover_source(prefs.remover_source),
    )


def _remover_source(text: str) -> str:
    """A repo id as typed, or a folder (Blender's "//" relative paths resolved); empty means the default."""
    text = text.strip()
    if not text:
        return work.DEFAULT_REMOVER
    return bpy.path.abspath(text) if text.startswith("//") else text


def read_image(item: Any):
    """A reference image for the engine: a Blender image becomes a PIL image (read now, on the main thread);
    a file path is checked here and decoded by the engine; a PIL image passes through."""
    if isinstance(item, bpy.types.Image):
        return image_to_pil(item)
    if isinstance(item, str | Path):
        path = Path(bpy.path.abspath(str(item))).expanduser()
        if not path.is_file():
            raise AddonError(f"Image file not found: {path}. Check the path, or pick the image again.")
        return str(path)
    return item


def image_to_pil(image: bpy.types.Image):
    """The pixels of a Blender image as an 8-bit sRGB PIL image (RGB or RGBA), top row first."""
    from PIL import Image

    if image.source not in ("FILE", "GENERATED"):
        raise AddonError(f"'{image.name}' is a {image.source.lower()}, not a still image: pick a PNG or JPEG.")
    width, height = image.size  # loads the file if needed; (0, 0) when Blender cannot
    if width == 0 or height == 0 or not image.has_data:
        path = Path(bpy.path.abspath(image.filepath)) if image.filepath else None
        if image.source == "FILE" and image.packed_file is None and (path is None or not path.is_file()):
            raise AddonError(
                f"The file of image '{image.name}' is missing ({path}). Locate it (Image Editor > Image > "
                "Replace) or remove it from the TRELLIS.2 image list and add it again."
            )
        raise AddonError(
            f"Blender cannot read image '{image.name}' ({path}): the file is damaged or not an image. "
            "Save it again as PNG or JPEG and add it to the TRELLIS.2 image list."
        )
    channels = image.channels
    pixels = np.empty(width * height * channels, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, channels)[::-1]  # Blender stores the bottom row first
    if image.is_float:  # float images hold linear values: encode to sRGB like an 8-bit picture
        rgb = np.clip(pixels[..., :3], 0.0, 1.0)
        pixels[..., :3] = np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * rgb ** (1 / 2.4) - 0.055)
    data = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if channels == 1:
        return Image.fromarray(data[..., 0], "L")
    if channels == 2:  # grey + alpha
        data = np.concatenate([np.repeat(data[..., :1], 3, -1), data[..., 1:]], -1)
    return Image.fromarray(np.ascontiguousarray(data[..., : 4 if data.shape[-1] >= 4 else 3]))


def _image_name(item: Any) -> str:
    if isinstance(item, bpy.types.Image):
        return Path(item.name).stem or COLLECTION
    if isinstance(item, str | Path):
        return Path(item).stem or COLLECTION
    return COLLECTION


def make_request(
    images: Sequence[Any],
    *,
    resolution: int = 1024,
    seed: int | None = 42,
    samplers: dict | None = None,
    multi_image_mode: str = "stochastic",
    face_budget: int = 200_000,
    texture_size: int = 1024,
    object_size: float = 1.0,
    model: ModelOptions | str | None = None,
    name: str | None = None,
) -> Request:
    """Check and read the inputs (main thread). `seed=None` picks a random one; `model` may be a repo id or folder."""
    if not images:
        raise AddonError(
            "No reference image: add one with + in the TRELLIS.2 panel (or drop a picture on the 3D viewport)."
        )
    if resolution not in (512, 1024, 1536):
        raise AddonError(f"Resolution must be 512, 1024 or 1536, not {resolution}.")
    if isinstance(model, str):
        model = ModelOptions(source=model)
    return Request(
        images=tuple(read_image(item) for item in images),
        resolution=int(resolution),
        seed=random.randrange(2**31) if seed is None else int(seed),
        samplers=dict(samplers or {}),
        multi_image_mode=multi_image_mode,
        model=model or model_options(),
        face_budget=int(face_budget),
        texture_size=int(texture_size),
        object_size=float(object_size),
        name=name or _image_name(images[0]),
    )


def _has_transparency(picture) -> bool:
    """The engine's rule (some alpha below 255), for the modes `image_to_pil` makes."""
    return picture.mode == "RGBA" and picture.getchannel("A").getextrema()[0] < 255


def item_image(item) -> bpy.types.Image | None:
    """The picture Generate uses for an image-list row: the kept cut-out, else the image itself.

    A discarded matte means the person rejected what background removal makes of this picture, so it is
    not run again behind their back: the picture must carry its own transparency.
    """
    image = item.image
    if image is None:
        return None
    if item.matte_choice == "KEPT":
        if item.matte is None:
            raise AddonError(
                f"The kept matte of '{image.name}' is gone (deleted?). Press Preview Matte again and Keep it, "
                "or Discard to go back to the picture itself."
            )
        return item.matte
    if item.matte_choice == "DISCARDED" and not _has_transparency(image_to_pil(image)):
        raise AddonError(
            f"You discarded the background matte of '{image.name}'. Choose another picture in its row, give this "
            "one transparency (an alpha channel around the object), or press Preview Matte again and Keep it."
        )
    return image


def request_from_scene(context) -> Request:
    """The request the panel describes (its images and settings); a fresh seed first if Randomize is on."""
    s = context.scene.trellis2
    if s.randomize_seed:
        s.seed = random.randrange(2**31)
    rows = [item for item in s.images if item.image is not None]
    return make_request(
        [item_image(item) for item in rows],
        resolution=int(s.resolution),
        seed=s.seed,
        samplers={k: v for k, v in s.sampler_overrides().items() if v},
        multi_image_mode=s.multi_image_mode,
        face_budget=s.face_budget,
        texture_size=int(s.texture_size),
        object_size=s.object_size,
        model=model_options(context),
        name=_image_name(rows[0].image) if rows else None,
    )


# ------------------------------------------------------------------------------------ matte preview


def store_matte(item, cut_out) -> bpy.types.Image:
    """The RGBA cut-out as the Blender image `<image name> (matte)`, packed into the .blend, on `item`.

    A matte this row already has is overwritten in place (same image, same name); no other image is touched.
    """
    width, height = cut_out.size
    image = item.matte
    created = image is None
    if created:
        image = bpy.data.images.new(f"{item.image.name} (matte)", width, height, alpha=True)
    try:
        if tuple(image.size) != (width, height):
            image.scale(width, height)
        pixels = np.asarray(cut_out.convert("RGBA"), dtype=np.float32)[::-1] / 255.0  # Blender: bottom row first
        image.pixels.foreach_set(pixels.ravel())
        image.pack()
    except BaseException:
        if created:
            bpy.data.images.remove(image)
        raise
    item.matte = image
    item.matte_choice = "PREVIEW"
    return image


def _matte_inputs(item, model: ModelOptions | None):
    if item is None or item.image is None:
        raise AddonError("Choose an image in the TRELLIS.2 list first, then press Preview Matte.")
    return read_image(item.image), model or model_options()


def _find_item(scene_name: str, image_name: str):
    scene = bpy.data.scenes.get(scene_name)
    rows = scene.trellis2.images if scene is not None else ()
    item = next((row for row in rows if row.image is not None and row.image.name == image_name), None)
    if item is None:
        raise AddonError(
            f"'{image_name}' left the TRELLIS.2 image list while its matte was being made; nothing was changed."
        )
    return item


def preview_matte(item, *, model: ModelOptions | None = None, on_progress=None, cancel=None) -> bpy.types.Image:
    """Run background removal on an image-list row and store the cut-out as `<image name> (matte)`."""
    _idle()
    picture, model = _matte_inputs(item, model)
    return store_matte(item, work.cut_out(picture, model, on_progress, cancel))


def preview_matte_job(item, model: ModelOptions | None = None) -> jobs.Job:
    """`preview_matte` as a job: the remover on the worker, the image made in the pump (the row looked up again)."""
    picture, model = _matte_inputs(item, model)
    scene_name, image_name = item.id_data.name, item.image.name
    return jobs.Job(
        "Preview matte",
        lambda progress, cancelled: work.cut_out(picture, model, progress, cancelled),
        lambda cut_out: store_matte(_find_item(scene_name, image_name), cut_out).name,
        work.explain,
    )


def keep_matte(item) -> bpy.types.Image:
    """Generate uses the row's cut-out from now on (with any edits made to it); no remover runs for it."""
    if item.matte is None:
        raise AddonError("There is no matte to keep: press Preview Matte first.")
    item.matte_choice = "KEPT"
    return item.matte


def discard_matte(item) -> None:
    """Reject the row's matte: its preview image is deleted (unless something else uses it) and Generate will
    not remove this picture's background; choose another picture, or preview again."""
    matte = item.matte
    item.matte = None
    item.matte_choice = "DISCARDED"
    if matte is not None and matte.users == 0:
        bpy.data.images.remove(matte)


# ------------------------------------------------------------------------------------ Blender data


def result_collection(scene: bpy.types.Scene) -> tuple[bpy.types.Collection, bool]:
    """The "TRELLIS.2" collection, linked under the scene's; True if it was created now."""
    collection = bpy.data.collections.get(COLLECTION)
    created = collection is None
    if created:
        collection = bpy.data.collections.new(COLLECTION)
    if collection.name not in scene.collection.children and scene.user_of_id(collection) == 0:
        scene.collection.children.link(collection)
    return collection, created


def find_result(generation_id: str) -> bpy.types.Object | None:
    """The object showing generation `generation_id`, if it still exists."""
    if not generation_id:
        return None
    return next((o for o in bpy.data.objects if o.trellis2.generation_id == generation_id), None)


def write_record(obj: bpy.types.Object, result: work.Result, generation_id: str) -> None:
    record, request = obj.trellis2, result.request
    record.generation_id = generation_id
    record.image_hashes = ",".join(result.generation.conditioning.image_hashes)
    record.seed = request.seed
    record.resolution = request.resolution
    record.pipeline_type = str(result.generation.settings.pipeline_type)
    record.model_source = request.model.source
    record.face_budget = request.face_budget
    record.texture_size = request.texture_size
    record.object_size = request.object_size
    record.settings_json = json.dumps(request.describe(), sort_keys=True)


def _remove_ids(ids: list) -> None:
    """Undo a half-built result: remove what was created, newest first."""
    for block in reversed(ids):
        if isinstance(block, bpy.types.Material):
            materials.remove_material(block)
        elif isinstance(block, bpy.types.Object):
            bpy.data.objects.remove(block)
        elif isinstance(block, bpy.types.Mesh):
            bpy.data.meshes.remove(block)
        elif isinstance(block, bpy.types.Collection):
            bpy.data.collections.remove(block)


def _build(result: work.Result, name: str, created: list) -> tuple[bpy.types.Mesh, bpy.types.Material]:
    request = result.request
    mesh = mesh_import.mesh_from_asset(name, result.asset, size=request.object_size)
    created.append(mesh)
    material = materials.build_material(name, result.maps)
    created.append(material)
    mesh.materials.append(material)
    return mesh, material


def add_result(result: work.Result, scene: bpy.types.Scene | None = None) -> bpy.types.Object:
    """A new object for `result` in the "TRELLIS.2" collection at the 3D cursor; all or nothing."""
    scene = scene or bpy.context.scene
    created: list = []
    try:
        mesh, material = _build(result, result.request.name, created)
        obj = bpy.data.objects.new(result.request.name, mesh)
        created.append(obj)
        material.name = mesh.name = obj.name
        collection, new_collection = result_collection(scene)
        if new_collection:
            created.insert(0, collection)
        collection.objects.link(obj)
        obj.location = scene.cursor.location
        write_record(obj, result, work.remember(result.generation))
    except BaseException:
        _remove_ids(created)
        raise
    _select(obj, scene)
    return obj


def replace_result(generation_id: str, result: work.Result) -> bpy.types.Object:
    """Swap the mesh and material of the object showing `generation_id` (same object and transform)."""
    obj = find_result(generation_id)
    if obj is None:
        raise AddonError(
            "The object being regenerated was deleted (or undone) while TRELLIS.2 worked; nothing was changed. "
            "Select a TRELLIS.2 result and regenerate it again."
        )
    created: list = []
    try:
        mesh, material = _build(result, f"{obj.name} (new)", created)
    except BaseException:
        _remove_ids(created)
        raise
    old_mesh = obj.data
    old_materials = [m for m in old_mesh.materials if m is not None]
    obj.data = mesh
    if old_mesh.users == 0:
        bpy.data.meshes.remove(old_mesh)
    for old in old_materials:
        if old.users == 0:
            materials.remove_material(old)
    mesh.name = obj.name
    materials.rename_material(material, obj.name)
    write_record(obj, result, work.remember(result.generation))
    return obj


def _select(obj: bpy.types.Object, scene: bpy.types.Scene) -> None:
    layer = bpy.context.view_layer if bpy.context.scene == scene and bpy.context.view_layer else scene.view_layers[0]
    for other in layer.objects.selected:
        other.select_set(False, view_layer=layer)
    obj.select_set(True, view_layer=layer)
    layer.objects.active = obj


# ------------------------------------------------------------------------------------- whole runs


def _idle() -> None:
    if jobs.current() is not None:
        raise jobs.Busy(f"TRELLIS.2 is busy ({jobs.current().status_text()}); wait for it or cancel it first.")


def generate(images: Sequence[Any], *, on_progress=None, cancel=None, scene=None, **options) -> bpy.types.Object:
    """Images (paths, PIL or Blender images) -> a new textured object. Options as in `make_request`."""
    _idle()
    request = make_request(images, **options)
    return add_result(work.generate(request, on_progress, cancel), scene)


def generate_job(request: Request, scene: bpy.types.Scene | None = None) -> jobs.Job:
    """The same as `generate`, as a job: the engine on the worker, `add_result` in the pump."""
    scene_name = (scene or bpy.context.scene).name

    def apply(result: work.Result) -> str:
        target = bpy.data.scenes.get(scene_name) or bpy.context.scene
        return add_result(result, target).name

    return jobs.Job(
        "Generating", lambda progress, cancelled: work.generate(request, progress, cancelled), apply, work.explain
    )


def _regenerate_inputs(obj: bpy.types.Object, resolution: int, face_budget, texture_size, model):
    record = getattr(obj, "trellis2", None)
    if obj is None or record is None or not record.is_result:
        raise AddonError("Select an object made by TRELLIS.2 to regenerate it.")
    if resolution not in (512, 1024, 1536):
        raise AddonError(f"Resolution must be 512, 1024 or 1536, not {resolution}.")
    previous = work.recall(record.generation_id)
    if previous is None:
        raise AddonError(
            f"The stage cache of '{obj.name}' is gone (Blender was restarted, or {work.MAX_REMEMBERED} newer "
            f"results replaced it). Generate it again with seed {record.seed}: same images and seed, same object."
        )
    # The cached stages belong to the model that made them: keep its source, take the rest (device...) as given.
    model = dataclasses.replace(model or model_options(), source=record.model_source)
    saved = record.settings()
    request = Request(
        images=(),
        resolution=resolution,
        seed=record.seed,
        samplers=saved.get("samplers", {}),
        multi_image_mode=saved.get("multi_image_mode", "stochastic"),
        model=model,
        face_budget=int(face_budget or record.face_budget),
        texture_size=int(texture_size or record.texture_size),
        object_size=record.object_size,
        name=obj.name,
    )
    return previous, request, record.generation_id


def regenerate(
    obj: bpy.types.Object,
    resolution: int,
    *,
    face_budget: int | None = None,
    texture_size: int | None = None,
    model: ModelOptions | None = None,
    on_progress=None,
    cancel=None,
) -> bpy.types.Object:
    """Re-run a result at another resolution, reusing its conditioning and sparse structure; in place."""
    _idle()
    previous, request, gid = _regenerate_inputs(obj, resolution, face_budget, texture_size, model)
    return replace_result(gid, work.regenerate(previous, resolution, request, on_progress, cancel))


def regenerate_job(obj: bpy.types.Object, resolution: int, **options) -> jobs.Job:
    """`regenerate` as a job: the object is looked up again when the result lands (it may be gone)."""
    previous, request, gid = _regenerate_inputs(
        obj, resolution, options.get("face_budget"), options.get("texture_size"), options.get("model")
    )
    return jobs.Job(
        f"Regenerating at {resolution}",
        lambda progress, cancelled: work.regenerate(previous, resolution, request, progress, cancelled),
        lambda result: replace_result(gid, result).name,
        work.explain,
    )


def relight(obj: bpy.types.Object, style: str = "STUDIO", frames: int = 96, scene=None) -> bpy.types.Object:
    """A procedural world and a turntable camera aimed at `obj`; returns the camera."""
    if obj is None:
        raise AddonError("Select the object to light (a TRELLIS.2 result, or any mesh).")
    return _relight.setup(obj, style, scene=scene, frames=frames)
