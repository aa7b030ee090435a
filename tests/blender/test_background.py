"""Background removal in the add-on: the Preferences switch, Generate with a remover, Preview Matte with
Keep / Discard, and the rule that a picture with its own transparency never reaches the remover.

The remover is a stand-in (no 900 MB BiRefNet download): `work.load_remover`, the one place the add-on
loads remover weights, is replaced; every call to it and to its `remove` is counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import bpy
import numpy as np
import pytest
from PIL import Image

from blender_trellis2 import api, work
from engine.background import BackgroundRemover
from tests.blender.helpers import add_pictures, picture, snapshot
from tests.conftest import draw_object

BACKGROUND = (128, 140, 150)


class StandInRemover(BackgroundRemover):
    """Object = pixels clearly unlike the top-left corner (the picture's plain background)."""

    name = "stand-in remover"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def remove(self, image: Image.Image) -> Image.Image:
        self.seen.append(image.size)
        return stand_in_matte(image)


def stand_in_matte(image: Image.Image) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)  # [H, W, 3]
    far = np.abs(rgb - rgb[0, 0]).sum(-1) > 30
    return Image.fromarray(np.where(far, 255, 0).astype(np.uint8), "L")


def photo(folder: Path, name: str = "photo.png", size: tuple[int, int] = (160, 128)) -> Path:
    """An RGB picture (no alpha channel): a coloured object on a plain background, like a photograph."""
    canvas = Image.new("RGB", size, BACKGROUND)
    canvas.paste(draw_object(size=size[1]), (16, 0), draw_object(size=size[1]))
    path = folder / name
    canvas.save(path)
    return path


@pytest.fixture
def remover(addon, monkeypatch):
    """The stand-in as the add-on's remover; `remover.loads` lists the ModelOptions it was loaded for."""
    stand_in = StandInRemover()
    stand_in.loads = []

    def load(model: work.ModelOptions) -> BackgroundRemover:
        stand_in.loads.append(model)
        return stand_in

    monkeypatch.setattr(work, "load_remover", load)
    work.forget_removers()
    s = bpy.context.scene.trellis2
    s.resolution, s.seed, s.texture_size = "512", 3, "256"
    yield stand_in
    work.forget_removers()


def fails(operator, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):  # bpy raises the operator's ERROR report
        operator()


def test_picture_without_transparency_and_removal_off_says_what_to_do(remover, addon, tmp_path):
    addon.remove_background = False
    add_pictures(photo(tmp_path))
    bpy.data.objects.new("keep me", bpy.data.meshes.new("keep me"))
    before = snapshot()
    fails(
        bpy.ops.trellis2.generate,
        re.escape("Background Removal is off (Preferences > Add-ons > TRELLIS.2). Turn Background Removal on, ")
        + re.escape("or supply an image with transparency"),
    )
    assert snapshot() == before
    assert remover.loads == [] and remover.seen == []


def test_generate_removes_the_background_only_of_the_picture_without_alpha(remover, tmp_path, monkeypatch):
    rgb, rgba = photo(tmp_path), picture(tmp_path, "cutout.png")  # 160x128 RGB, 128x128 with its own alpha
    add_pictures(rgb, rgba)
    stages = []
    real = work.generate

    def recording(request, on_progress, cancel):
        def progress(stage, step, total):
            stages.append(stage)
            on_progress(stage, step, total)

        return real(request, progress, cancel)

    monkeypatch.setattr(work, "generate", recording)
    assert bpy.ops.trellis2.generate() == {"FINISHED"}

    assert bpy.context.active_object.name == "photo" and bpy.context.active_object.trellis2.is_result
    assert remover.seen == [(160, 128)], "only the RGB picture reaches the remover; the RGBA one keeps its alpha"
    assert stages[: stages.index("sparse_structure")].count("background_removal") == 2  # 0/1, 1/1
    (model,) = remover.loads
    assert model.remover_source == work.DEFAULT_REMOVER == "ZhengPeng7/BiRefNet" and model.device == "cpu"
    assert model.cache_dir == api.model_options().cache_dir


def test_preview_keep_then_generate_uses_the_cut_out_without_the_remover(remover, tmp_path):
    path = photo(tmp_path)
    add_pictures(path)
    item = bpy.context.scene.trellis2.images[0]
    before = snapshot()

    assert bpy.ops.trellis2.preview_matte() == {"FINISHED"}
    assert remover.seen == [(160, 128)]
    new = {k: sorted(set(v) - set(before[k])) for k, v in snapshot().items()}
    assert new == {**{k: [] for k in new}, "images": ["photo.png (matte)"]}, "only the matte image was added"
    matte = bpy.data.images["photo.png (matte)"]
    assert item.matte == matte and item.matte_choice == "PREVIEW" and item.image.name == "photo.png"
    assert matte.packed_file is not None, "the matte is saved with the .blend"
    cut = np.asarray(api.image_to_pil(matte))  # [H, W, 4]
    original = Image.open(path)
    np.testing.assert_array_equal(cut[..., :3], np.asarray(original))
    np.testing.assert_array_equal(cut[..., 3], np.asarray(stand_in_matte(original)))

    # The API is what the operator runs: a second preview overwrites the same image in place.
    assert api.preview_matte(item) == matte and snapshot()["images"] == sorted([*before["images"], matte.name])
    np.testing.assert_array_equal(np.asarray(api.image_to_pil(matte)), cut)
    calls = len(remover.seen)
    assert calls == 2

    assert bpy.ops.trellis2.keep_matte() == {"FINISHED"}
    assert item.matte_choice == "KEPT"
    # An edit made in Blender's Image Editor counts: paint one object pixel transparent.
    pixels = np.empty(len(matte.pixels), np.float32)
    matte.pixels.foreach_get(pixels)
    pixels = pixels.reshape(128, 160, 4)
    pixels[128 - 1 - 64, 80, 3] = 0.0  # row 64 from the top, the middle of the object
    matte.pixels.foreach_set(pixels.ravel())
    request = api.request_from_scene(bpy.context)
    (used,) = request.images
    assert request.name == "photo" and used.mode == "RGBA"
    expected = cut[..., 3].copy()
    expected[64, 80] = 0
    np.testing.assert_array_equal(np.asarray(used)[..., 3], expected)

    assert bpy.ops.trellis2.generate() == {"FINISHED"}
    assert len(remover.seen) == calls, "the kept cut-out has its own alpha: the remover is not called"
    assert bpy.context.active_object.name == "photo"
    assert bpy.data.images.get("photo.png (matte)") == matte, "the matte stays in the .blend"


def test_discard_replace_and_pictures_that_need_no_matte(remover, tmp_path):
    add_pictures(photo(tmp_path))
    s = bpy.context.scene.trellis2
    item = s.images[0]
    assert bpy.ops.trellis2.preview_matte() == {"FINISHED"}
    assert bpy.ops.trellis2.discard_matte() == {"FINISHED"}
    assert item.matte is None and item.matte_choice == "DISCARDED"
    assert "photo.png (matte)" not in bpy.data.images, "the rejected preview is deleted"

    before = snapshot()
    fails(bpy.ops.trellis2.generate, "You discarded the background matte of 'photo.png'. Choose another picture")
    assert snapshot() == before and remover.seen == [(160, 128)], "a rejected matte is not made again"

    # Keep, then the matte image is deleted: Generate says so instead of quietly using the original.
    assert bpy.ops.trellis2.preview_matte() == {"FINISHED"}
    assert bpy.ops.trellis2.keep_matte() == {"FINISHED"}
    bpy.data.images.remove(bpy.data.images["photo.png (matte)"])
    before = snapshot()
    fails(bpy.ops.trellis2.generate, r"The kept matte of 'photo.png' is gone \(deleted\?\). Press Preview Matte")
    assert snapshot() == before

    # Another picture in the row: the old choice no longer applies. A picture with alpha needs no matte.
    item.image = bpy.data.images.load(str(picture(tmp_path, "cutout.png")))
    assert item.matte_choice == "AUTO" and item.matte is None
    calls = len(remover.seen)
    before = snapshot()
    fails(bpy.ops.trellis2.preview_matte, "This image already has transparency: Generate uses its own alpha")
    assert snapshot() == before and len(remover.seen) == calls

    # A picture where the remover finds nothing: the engine's message, nothing added.
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), BACKGROUND).save(blank)
    item.image = bpy.data.images.load(str(blank))
    before = snapshot()
    fails(bpy.ops.trellis2.preview_matte, "stand-in remover found no object in this image .*Supply an image with")
    assert snapshot() == before and item.matte_choice == "AUTO" and len(remover.seen) == calls + 1
