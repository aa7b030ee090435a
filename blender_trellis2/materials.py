"""The result's PBR material: a Principled BSDF fed by the baked maps, one function per socket group.

Maps arrive as PNG bytes (encoded off the main thread by `work.encode_maps`) and are packed into the
.blend as they are: the main thread only copies bytes, and Blender decodes them when it first draws.
Layout (x, y) of every node is explicit so the tree reads left to right in the Shader Editor.
"""

from __future__ import annotations

import bpy

from .work import MaterialMaps

# Node positions: images on the left, the channel split between, the BSDF and the output on the right.
X_IMAGE, X_SPLIT, X_BSDF, X_OUTPUT = -800.0, -380.0, 0.0, 380.0
Y_BASE, Y_MR, Y_ALPHA = 300.0, -80.0, 80.0


def packed_image(name: str, png: bytes, colorspace: str, alpha: bool) -> bpy.types.Image:
    """An image datablock holding `png` as packed data (saved inside the .blend)."""
    image = bpy.data.images.new(name, 1, 1, alpha=alpha)  # tiny generated buffer, replaced by the packed file
    image.source = "FILE"
    image.filepath_raw = f"//textures/{bpy.path.clean_name(name)}.png"
    image.file_format = "PNG"
    image.pack(data=png, data_len=len(png))
    image.colorspace_settings.name = colorspace
    image.alpha_mode = "STRAIGHT" if alpha else "NONE"
    return image


def _image_node(tree, image: bpy.types.Image, label: str, y: float):
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image, node.label, node.location = image, label, (X_IMAGE, y)
    return node


def _principled(tree):
    bsdf = tree.nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.location = (X_BSDF, Y_BASE)
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    out.location = (X_OUTPUT, Y_BASE)
    tree.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    return bsdf


def link_base_color(tree, bsdf, image: bpy.types.Image):
    """Base Color <- the sRGB base-colour map."""
    node = _image_node(tree, image, "Base Color", Y_BASE)
    tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    return node


def link_metallic_roughness(tree, bsdf, image: bpy.types.Image):
    """Metallic <- blue, Roughness <- green of the Non-Color metallic-roughness map."""
    node = _image_node(tree, image, "Metallic Roughness", Y_MR)
    split = tree.nodes.new("ShaderNodeSeparateColor")
    split.mode, split.location = "RGB", (X_SPLIT, Y_MR)
    tree.links.new(node.outputs["Color"], split.inputs["Color"])
    tree.links.new(split.outputs["Blue"], bsdf.inputs["Metallic"])
    tree.links.new(split.outputs["Green"], bsdf.inputs["Roughness"])
    return node


def link_alpha(material, tree, bsdf, base_node, alpha_mode: str, cutoff: float) -> None:
    """Alpha <- base-colour alpha, only when the asset has transparency: clipped for MASK, blended for BLEND."""
    if alpha_mode == "OPAQUE":
        return
    source = base_node.outputs["Alpha"]
    if alpha_mode == "MASK":
        clip = tree.nodes.new("ShaderNodeMath")
        clip.operation, clip.label, clip.location = "GREATER_THAN", "Alpha Clip", (X_SPLIT, Y_ALPHA)
        clip.inputs[1].default_value = cutoff
        tree.links.new(source, clip.inputs[0])
        source = clip.outputs["Value"]
    tree.links.new(source, bsdf.inputs["Alpha"])
    material.surface_render_method = "BLENDED" if alpha_mode == "BLEND" else "DITHERED"


def build_material(name: str, maps: MaterialMaps) -> bpy.types.Material:
    """A material named `name` with packed maps; every datablock it creates is named after it."""
    base = packed_image(f"{name} Base Color", maps.base_color_png, "sRGB", alpha=True)
    mr = packed_image(f"{name} Metallic Roughness", maps.metallic_roughness_png, "Non-Color", alpha=False)
    material = bpy.data.materials.new(name)
    if material.node_tree is None:  # Blender 4.x: a new material has no node tree until use_nodes is set
        material.use_nodes = True
    tree = material.node_tree
    tree.nodes.clear()
    bsdf = _principled(tree)
    base_node = link_base_color(tree, bsdf, base)
    link_metallic_roughness(tree, bsdf, mr)
    link_alpha(material, tree, bsdf, base_node, maps.alpha_mode, maps.alpha_cutoff)
    material.use_backface_culling = not maps.double_sided
    return material


def rename_material(material: bpy.types.Material, name: str) -> None:
    """Rename a material and its images the way `build_material` names them."""
    material.name = name
    for node in material.node_tree.nodes:
        if node.type == "TEX_IMAGE" and node.image is not None:
            node.image.name = f"{name} {node.label}"


def material_images(material: bpy.types.Material) -> list[bpy.types.Image]:
    """The images a material's nodes use (what is removed with it)."""
    tree = material.node_tree
    return [n.image for n in tree.nodes if n.type == "TEX_IMAGE" and n.image is not None] if tree else []


def remove_material(material: bpy.types.Material) -> None:
    """Delete a material and the images only it used."""
    images = material_images(material)
    bpy.data.materials.remove(material)
    for image in images:
        if image.users == 0:
            bpy.data.images.remove(image)
