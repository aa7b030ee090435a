"""The add-on end to end in real Blender (bpy 5.0) with the tiny random checkpoint: the Generate operator,
the Python API, regenerate in place, cancel, relight + a Cycles render, and the headless command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest

from blender_trellis2 import api, cli, jobs, materials, mesh_import, work
from tests.blender.helpers import add_pictures, picture, snapshot

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "out" / "test_render.png"


@pytest.fixture(scope="module")
def tiny_result(tiny_checkpoint, tmp_path_factory):
    """One finished generation (engine + finishing, no Blender data), shared by the tests that only import it."""
    path = picture(tmp_path_factory.mktemp("pictures"))
    request = work.Request(
        images=(str(path),), resolution=512, seed=1, texture_size=256, model=work.ModelOptions(str(tiny_checkpoint))
    )
    return work.generate(request)


def bsdf_of(material):
    return next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")


def source(socket):
    assert socket.is_linked, f"{socket.name} is not linked"
    link = socket.links[0]
    return link.from_node, link.from_socket.name


def ss_flow_calls():
    """A counter of sparse-structure flow forwards of the cached pipeline (the first stage after conditioning)."""
    from engine import config as cfg

    calls = [0]
    model = work.pipeline(api.model_options()).models.get(cfg.SS_FLOW)
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def test_register_unregister_round_trips():
    import blender_trellis2
    from blender_trellis2 import operators, panels, properties

    before = set(sys.modules)
    for _ in range(2):
        blender_trellis2.register()
        assert all(c.is_registered for m in (operators, panels, properties) for c in m.classes)
        assert hasattr(bpy.types.Scene, "trellis2") and hasattr(bpy.types.Object, "trellis2")
        assert jobs._on_load_pre in bpy.app.handlers.load_pre and cli._handle is not None
        blender_trellis2.unregister()
        assert not any(c.is_registered for m in (operators, panels, properties) for c in m.classes)
        assert not hasattr(bpy.types.Scene, "trellis2") and jobs._on_load_pre not in bpy.app.handlers.load_pre
        assert cli._handle is None
    heavy = {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "engine")}
    assert not heavy, f"register imported {sorted(heavy)}"


def test_generate_operator_makes_a_textured_object_and_matches_the_api(addon, tmp_path):
    path = picture(tmp_path)
    add_pictures(path)
    s = bpy.context.scene.trellis2
    s.resolution, s.seed, s.texture_size = "512", 3, "256"
    bpy.context.scene.cursor.location = (1.0, 2.0, 0.5)
    before = snapshot()

    assert "UNDO" in bpy.types.TRELLIS2_OT_generate.bl_options  # the whole result is one undo step
    assert bpy.ops.trellis2.generate() == {"FINISHED"}  # one operator call creates everything below

    after = snapshot()
    obj = bpy.context.active_object
    assert obj.name == "object" and obj.type == "MESH"
    new = {k: sorted(set(after[k]) - set(before[k])) for k in after}
    assert new["objects"] == ["object"] and new["meshes"] == ["object"] and new["materials"] == ["object"]
    assert new["images"] == ["object Base Color", "object Metallic Roughness"]
    assert new["collections"] == ["TRELLIS.2"] and [c.name for c in obj.users_collection] == ["TRELLIS.2"]
    assert tuple(obj.location) == pytest.approx((1.0, 2.0, 0.5))
    assert tuple(obj.rotation_euler) == (0, 0, 0) and tuple(obj.scale) == (1, 1, 1)
    co = mesh_import.mesh_arrays(obj.data)["vertices"]
    assert co[:, 2].min() == pytest.approx(0.0, abs=1e-6) and (co.max(0) - co.min(0)).max() == pytest.approx(1.0)

    material = obj.active_material
    assert material.name == obj.name
    bsdf = bsdf_of(material)
    base, socket = source(bsdf.inputs["Base Color"])
    assert base.type == "TEX_IMAGE" and socket == "Color" and base.image.name == "object Base Color"
    assert base.image.colorspace_settings.name == "sRGB"
    split, channel = source(bsdf.inputs["Metallic"])
    assert split.type == "SEPARATE_COLOR" and channel == "Blue"
    assert source(bsdf.inputs["Roughness"]) == (split, "Green")
    mr, _ = source(split.inputs["Color"])
    assert mr.type == "TEX_IMAGE" and mr.image.colorspace_settings.name == "Non-Color"
    assert len({tuple(n.location) for n in material.node_tree.nodes}) == len(material.node_tree.nodes)
    for image in (base.image, mr.image):
        assert image.packed_file is not None and tuple(image.size) == (256, 256)
    has_alpha = material.surface_render_method == "BLENDED" or bsdf.inputs["Alpha"].is_linked
    assert bsdf.inputs["Alpha"].is_linked == has_alpha
    if has_alpha:
        assert source(bsdf.inputs["Alpha"])[0] in (base, *[n for n in material.node_tree.nodes if n.type == "MATH"])

    record = obj.trellis2
    assert record.is_result and record.seed == 3 and record.resolution == 512 and record.pipeline_type == "512"
    assert record.texture_size == 256 and len(record.image_hashes) == 16

    # The Python API with the same inputs makes the same mesh.
    twin = api.generate([bpy.data.images["object.png"]], resolution=512, seed=3, texture_size=256)
    assert twin.name == "object.001"
    a, b = mesh_import.mesh_arrays(obj.data), mesh_import.mesh_arrays(twin.data)
    assert a.keys() == b.keys() == {"vertices", "corners", "uvs"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert twin.trellis2.image_hashes == record.image_hashes


def test_regenerate_replaces_in_place_and_skips_the_structure_stage(addon, tiny_result):
    obj = api.add_result(tiny_result)
    obj.location, obj.rotation_euler = (3.0, -1.0, 0.0), (0.0, 0.0, 0.7)
    bpy.context.view_layer.update()
    matrix, name, old_id = obj.matrix_world.copy(), obj.name, obj.trellis2.generation_id
    old_mesh = obj.data.name_full
    before = snapshot()
    calls, handle = ss_flow_calls()
    try:
        assert bpy.ops.trellis2.regenerate(resolution="1024") == {"FINISHED"}
    finally:
        handle.remove()

    assert calls[0] == 0, "regenerate must reuse the sparse structure"
    bpy.context.view_layer.update()
    assert bpy.context.active_object == obj and obj.name == name and obj.matrix_world == matrix
    assert obj.trellis2.resolution == 1024 and obj.trellis2.pipeline_type == "1024_cascade"
    assert obj.trellis2.generation_id != old_id and obj.trellis2.seed == 1
    assert snapshot() == before, "same names: the old mesh, material and images were replaced, not added to"
    assert obj.data.name == old_mesh and obj.active_material.name == name
    assert all(i.packed_file is not None for i in bpy.data.images)
    assert len(bpy.data.meshes) == 1 and len(bpy.data.materials) == 1 and len(bpy.data.images) == 2


def test_cancel_leaves_the_scene_exactly_as_before(addon, tmp_path, monkeypatch):
    add_pictures(picture(tmp_path))
    bpy.context.scene.trellis2.resolution = "512"
    bpy.data.objects.new("keep me", bpy.data.meshes.new("keep me"))
    before = snapshot()
    real = work.generate
    seen = []

    def press_cancel_during_shape(request, on_progress, cancel):
        def progress(stage, step, total):
            seen.append(stage)
            if stage == "shape":
                jobs.cancel()  # what Esc or the Cancel button does, here from the worker thread
            on_progress(stage, step, total)

        return real(request, progress, cancel)

    monkeypatch.setattr(work, "generate", press_cancel_during_shape)
    assert bpy.ops.trellis2.generate() == {"CANCELLED"}
    assert snapshot() == before
    assert jobs.last().state == "cancelled" and "unchanged" in jobs.last().message
    assert "shape" in seen and "texture" not in seen, "stopped between sampler steps, before the texture stage"


def test_relight_and_cycles_render(addon, tiny_result):
    obj = api.add_result(tiny_result)
    camera = api.relight(obj, "STUDIO")
    scene = bpy.context.scene
    assert scene.camera == camera and scene.world.name == "TRELLIS.2 Studio"
    background = next(n for n in scene.world.node_tree.nodes if n.type == "BACKGROUND")
    assert background.inputs["Color"].is_linked
    pivot = camera.parent
    assert pivot.animation_data.drivers[0].data_path == "rotation_euler"
    scene.frame_set(scene.frame_start + (scene.frame_end - scene.frame_start + 1) // 4)
    assert pivot.rotation_euler.z == pytest.approx(np.pi / 2, abs=0.01)  # a quarter turn
    scene.frame_set(scene.frame_start)

    path = api._relight.render_still(RENDER, size=128, samples=8)
    log.warning("render of the tiny result under the studio relight: %s", path)
    print(f"\nrender: {path}")
    pixels = render_pixels(path)
    obj.hide_render = True
    empty = render_pixels(api._relight.render_still(path.with_name("test_render_empty.png"), size=128, samples=8))
    assert pixels.std() > 0.01, "the render is flat"
    # The tiny random model makes scattered sub-millimetre triangles: few pixels, but clearly there. Cycles'
    # noise is seeded, so without the object the same pixels come out identical.
    assert (np.abs(pixels - empty).max(-1) > 0.05).sum() >= 1, "the object does not show in the render"

    api.relight(obj, "SKY")  # the other world, same camera
    assert scene.world.name == "TRELLIS.2 Sky" and scene.camera == camera
    assert "TRELLIS.2 Key Light" not in bpy.data.objects


def render_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def test_headless_command_writes_a_blend_that_reopens(addon, tiny_checkpoint, tmp_path, capsys):
    path = picture(tmp_path, "mug.png")
    blend, png = tmp_path / "out.blend", tmp_path / "out.png"
    argv = ["generate", str(path), "--model", str(tiny_checkpoint), "--resolution", "512", "--seed", "1"]
    argv += ["--texture-size", "512", "--device", "cpu", "-o", str(blend), "--render", str(png)]
    assert cli.blender_command([*argv, "--render-size", "48", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert f"saved: {blend}" in out and f"render: {png}" in out and png.is_file()

    bpy.ops.wm.open_mainfile(filepath=str(blend))
    obj = bpy.data.objects["mug"]
    assert obj.trellis2.is_result and obj.trellis2.seed == 1
    assert [c.name for c in obj.users_collection] == ["TRELLIS.2"]
    assert len(obj.data.polygons) > 0 and obj.active_material.name == "mug"
    images = materials.material_images(obj.active_material)
    assert len(images) == 2
    for image in images:
        assert image.packed_file is not None and tuple(image.size) == (512, 512)
    assert bpy.context.scene.camera is not None and bpy.context.scene.world.name == "TRELLIS.2 Studio"
    assert cli.blender_command(["generate"]) == 2  # argparse usage error: no image given
