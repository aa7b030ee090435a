"""Judge a result at once: a procedural world (studio gradient or daylight sky, no downloaded HDRI) and a
turntable camera circling the object, plus a small Cycles render for previews and the command line.

Running it again reuses the same world, lights and camera (named "TRELLIS.2 ..."), re-aimed at the object.
"""

from __future__ import annotations

import math
from pathlib import Path

import bpy
from mathutils import Vector

WORLD = {"STUDIO": "TRELLIS.2 Studio", "SKY": "TRELLIS.2 Sky"}
CAMERA, PIVOT, KEY_LIGHT = "TRELLIS.2 Camera", "TRELLIS.2 Turntable", "TRELLIS.2 Key Light"
SKY_TYPES = ("MULTIPLE_SCATTERING", "NISHITA", "SINGLE_SCATTERING", "HOSEK_WILKIE")  # newest first (4.2 .. 5.0)
LENS_MM, ELEVATION_DEG, MARGIN = 50.0, 20.0, 1.15


def _world(name: str) -> bpy.types.World:
    world = bpy.data.worlds.get(name) or bpy.data.worlds.new(name)
    if world.node_tree is None:  # Blender 4.x: no tree until use_nodes is set
        world.use_nodes = True
    world.node_tree.nodes.clear()
    return world


def studio_world() -> bpy.types.World:
    """A soft grey gradient: dark below the horizon, light above (view direction's Z through a ramp)."""
    world = _world(WORLD["STUDIO"])
    nodes, links = world.node_tree.nodes, world.node_tree.links
    coords = nodes.new("ShaderNodeTexCoord")
    coords.location = (-900, 0)
    split = nodes.new("ShaderNodeSeparateXYZ")
    split.location = (-700, 0)
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.location = (-500, 0)
    ramp.color_ramp.elements[0].position, ramp.color_ramp.elements[0].color = 0.45, (0.08, 0.08, 0.09, 1)
    ramp.color_ramp.elements[1].position, ramp.color_ramp.elements[1].color = 0.75, (0.85, 0.86, 0.9, 1)
    map_range = nodes.new("ShaderNodeMapRange")
    map_range.location = (-600, -250)
    background = nodes.new("ShaderNodeBackground")
    background.location = (-200, 0)
    background.inputs["Strength"].default_value = 0.8
    output = nodes.new("ShaderNodeOutputWorld")
    output.location = (0, 0)
    links.new(coords.outputs["Generated"], split.inputs["Vector"])
    links.new(split.outputs["Z"], map_range.inputs["Value"])  # view direction z in [-1, 1] -> [0, 1]
    map_range.inputs["From Min"].default_value, map_range.inputs["From Max"].default_value = -1.0, 1.0
    links.new(map_range.outputs["Result"], ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], background.inputs["Color"])
    links.new(background.outputs["Background"], output.inputs["Surface"])
    return world


def sky_world() -> bpy.types.World:
    """Blender's physical sky with the sun 35 degrees up, dimmed to a sensible exposure."""
    world = _world(WORLD["SKY"])
    nodes, links = world.node_tree.nodes, world.node_tree.links
    sky = nodes.new("ShaderNodeTexSky")
    sky.location = (-400, 0)
    available = {item.identifier for item in sky.bl_rna.properties["sky_type"].enum_items}
    sky.sky_type = next(t for t in SKY_TYPES if t in available)
    if hasattr(sky, "sun_elevation"):
        sky.sun_elevation = math.radians(35.0)
        sky.sun_rotation = math.radians(60.0)
    background = nodes.new("ShaderNodeBackground")
    background.location = (-150, 0)
    background.inputs["Strength"].default_value = 0.15
    output = nodes.new("ShaderNodeOutputWorld")
    output.location = (100, 0)
    links.new(sky.outputs["Color"], background.inputs["Color"])
    links.new(background.outputs["Background"], output.inputs["Surface"])
    return world


def _object(name: str, data, scene: bpy.types.Scene) -> bpy.types.Object:
    obj = bpy.data.objects.get(name) or bpy.data.objects.new(name, data)
    if obj.name not in scene.collection.objects:
        scene.collection.objects.link(obj)
    return obj


def framing(obj: bpy.types.Object) -> tuple[Vector, float]:
    """World-space bounding-box centre and the radius of the sphere around it."""
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8.0
    return centre, max((c - centre).length for c in corners) or 1.0


def turntable(obj: bpy.types.Object, scene: bpy.types.Scene, frames: int = 96) -> bpy.types.Object:
    """A camera on a pivot at the object's centre; a driver turns the pivot once over `frames` frames."""
    centre, radius = framing(obj)
    pivot = _object(PIVOT, None, scene)
    pivot.location, pivot.empty_display_size = centre, radius
    camera_data = bpy.data.cameras.get(CAMERA) or bpy.data.cameras.new(CAMERA)
    camera_data.lens = LENS_MM
    camera = _object(CAMERA, camera_data, scene)
    camera.parent = pivot
    half_fov = math.atan(camera_data.sensor_width / 2 / LENS_MM)
    distance = MARGIN * radius / math.sin(half_fov)
    elevation = math.radians(ELEVATION_DEG)
    camera.location = (0.0, -distance * math.cos(elevation), distance * math.sin(elevation))
    track = camera.constraints.get("Aim") or camera.constraints.new("TRACK_TO")
    track.name, track.target = "Aim", pivot
    track.track_axis, track.up_axis = "TRACK_NEGATIVE_Z", "UP_Y"
    camera_data.clip_start, camera_data.clip_end = distance / 100, distance * 10
    pivot.driver_remove("rotation_euler", 2)
    driver = pivot.driver_add("rotation_euler", 2).driver
    driver.type = "SCRIPTED"
    driver.expression = f"(frame - {scene.frame_start}) * {2 * math.pi / frames:.9f}"  # a simple expression: no Python
    scene.frame_end = scene.frame_start + frames - 1
    scene.camera = camera
    return camera


def key_light(obj: bpy.types.Object, scene: bpy.types.Scene) -> bpy.types.Object:
    """A soft sun from the front left, so the studio gradient still shows the shape."""
    data = bpy.data.lights.get(KEY_LIGHT) or bpy.data.lights.new(KEY_LIGHT, "SUN")
    data.energy, data.angle = 3.0, math.radians(15.0)
    light = _object(KEY_LIGHT, data, scene)
    light.rotation_euler = (math.radians(50.0), 0.0, math.radians(-40.0))
    light.location = framing(obj)[0]
    return light


def setup(obj: bpy.types.Object, style: str = "STUDIO", scene: bpy.types.Scene | None = None, frames: int = 96):
    """World + turntable camera (+ key light in the studio) around `obj`; returns the camera."""
    if style not in WORLD:
        raise ValueError(f"style must be one of {tuple(WORLD)}, got {style!r}")
    scene = scene or bpy.context.scene
    scene.world = studio_world() if style == "STUDIO" else sky_world()
    light = bpy.data.objects.get(KEY_LIGHT)
    if style == "STUDIO":
        key_light(obj, scene)
    elif light is not None:
        bpy.data.objects.remove(light)
    return turntable(obj, scene, frames)


def render_still(path: str | Path, scene: bpy.types.Scene | None = None, size: int = 256, samples: int = 16) -> Path:
    """Render the scene's camera with Cycles on the CPU (small and quick) to a PNG at `path`."""
    scene = scene or bpy.context.scene
    if scene.camera is None:
        raise ValueError("the scene has no camera: run relight.setup(obj) first")
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    return path
