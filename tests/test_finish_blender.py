"""The GLB that engine.finish writes opens in Blender 5.0 with image-linked PBR inputs and the right alpha mode."""

from __future__ import annotations

import numpy as np
import pytest

from engine.finish import finish, write_glb
from tests.test_finish import cube_sphere, half_transparent, shell_volume

bpy = pytest.importorskip("bpy")


@pytest.fixture
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene
    bpy.ops.wm.read_factory_settings(use_empty=True)


def linked_image(socket):
    """The image node feeding a socket, directly or through one node (e.g. Separate Color); else None."""
    if not socket.is_linked:
        return None
    node = socket.links[0].from_node
    if node.type == "TEX_IMAGE":
        return node
    for inp in node.inputs:
        if inp.is_linked and inp.links[0].from_node.type == "TEX_IMAGE":
            return inp.links[0].from_node
    return None


def import_glb(path):
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=str(path))
    (obj,) = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    return obj


@pytest.mark.parametrize("alpha", [False, True])
def test_glb_opens_in_blender_with_pbr_images(tmp_path, empty_scene, alpha):
    v, f = cube_sphere(10)
    volume = shell_volume(v, 32, half_transparent) if alpha else shell_volume(v, 32)
    asset = finish(v, f, volume, texture_size=128)
    obj = import_glb(write_glb(asset, tmp_path / "asset.glb"))

    mesh = obj.data
    assert len(mesh.polygons) == len(asset.faces)
    # glTF Y-up is turned back into Blender's Z-up: the bounds match the engine frame.
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3) @ np.asarray(obj.matrix_world)[:3, :3].T
    np.testing.assert_allclose(co.min(0), asset.vertices.min(0), atol=1e-5)
    np.testing.assert_allclose(co.max(0), asset.vertices.max(0), atol=1e-5)

    mat = obj.active_material
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    base = linked_image(bsdf.inputs["Base Color"])
    mr = linked_image(bsdf.inputs["Metallic"])
    assert base is not None and mr is not None
    assert linked_image(bsdf.inputs["Roughness"]) == mr
    assert base.image.size[:] == (128, 128) and mr.image.size[:] == (128, 128)
    assert base.image.colorspace_settings.name == "sRGB" and mr.image.colorspace_settings.name == "Non-Color"
    if alpha:
        assert linked_image(bsdf.inputs["Alpha"]) == base
        assert mat.surface_render_method == "BLENDED"
    else:
        assert not bsdf.inputs["Alpha"].is_linked
        assert mat.surface_render_method == "DITHERED"
    assert mat.use_backface_culling == (not asset.double_sided)

    # The baked colours survive the trip: Blender's pixels (bottom row first) equal the asset's maps.
    px = np.empty(128 * 128 * 4, np.float32)
    base.image.pixels.foreach_get(px)
    np.testing.assert_allclose(px, asset.blender_pixels("base_color"), atol=0.5 / 255)
