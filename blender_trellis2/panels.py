"""The "TRELLIS.2" tab of the 3D viewport sidebar: images (with a background-matte preview), settings,
Generate/Cancel with progress, and, for a selected result, Regenerate at 1024 / 1536 and Relight. Drawing
reads state, never changes it.
"""

from __future__ import annotations

from bpy.types import Panel, UIList

from . import jobs, preferences


class TRELLIS2_UL_images(UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        if item.image is not None:
            layout.prop(item, "image", text="", icon_value=item.image.preview_ensure().icon_id)
        else:
            layout.prop(item, "image", text="")


class _Sidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "TRELLIS.2"


def draw_job(layout, job: jobs.Job) -> None:
    col = layout.column(align=True)
    col.progress(factor=job.fraction, type="BAR", text=job.status_text())
    col.operator("trellis2.cancel", icon="CANCEL")


MATTE_NOTES = {
    "AUTO": "No transparency? Generate removes the background",
    "PREVIEW": "Matte preview: Keep it, or Discard it",
    "KEPT": "Generate uses this cut-out (edit it in the Image Editor)",
    "DISCARDED": "Matte discarded: choose another picture or preview again",
}


def draw_matte(layout, item, busy: bool) -> None:
    """The active picture's thumbnail (its cut-out once previewed) and the matte buttons."""
    shown = item.matte if item.matte is not None and item.matte_choice in ("PREVIEW", "KEPT") else item.image
    layout.template_icon(icon_value=shown.preview_ensure().icon_id, scale=6.0)
    layout.label(text=MATTE_NOTES[item.matte_choice], icon="CHECKMARK" if item.matte_choice == "KEPT" else "INFO")
    row = layout.row(align=True)
    row.enabled = not busy
    row.operator("trellis2.preview_matte", icon="IMAGE_RGB_ALPHA")
    if item.matte_choice == "PREVIEW":
        row.operator("trellis2.keep_matte", icon="CHECKMARK")
    if item.matte is not None or item.matte_choice == "KEPT":
        row.operator("trellis2.discard_matte", icon="TRASH")


class TRELLIS2_PT_generate(_Sidebar, Panel):
    bl_label = "Image to 3D"

    def draw(self, context):
        layout = self.layout
        s = context.scene.trellis2
        if preferences.find_torch() is None:
            box = layout.box()
            box.label(text="PyTorch is not installed.", icon="ERROR")
            box.label(text="Preferences > Add-ons > TRELLIS.2 > Install Runtime")

        row = layout.row()
        row.template_list("TRELLIS2_UL_images", "", s, "images", s, "active_image", rows=2)
        col = row.column(align=True)
        col.operator("trellis2.add_images", text="", icon="ADD")
        col.operator("trellis2.remove_image", text="", icon="REMOVE")
        if 0 <= s.active_image < len(s.images) and s.images[s.active_image].image is not None:
            draw_matte(layout, s.images[s.active_image], busy=jobs.current() is not None)

        layout.prop(s, "resolution", expand=True)
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.prop(s, "randomize_seed", text="", icon="FILE_REFRESH")
        row.operator("trellis2.new_seed", text="", icon="MOD_NOISE")

        job = jobs.current()
        if job is not None:
            draw_job(layout, job)
        else:
            row = layout.row()
            row.scale_y = 1.5
            row.enabled = len(s.images) > 0
            row.operator("trellis2.generate", icon="MESH_MONKEY")
        last = jobs.last()
        if job is None and last is not None and last.state != "done":
            layout.label(text=last.message[:120], icon="ERROR" if last.state == "failed" else "INFO")


class TRELLIS2_PT_advanced(_Sidebar, Panel):
    bl_label = "Advanced"
    bl_parent_id = "TRELLIS2_PT_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        s = context.scene.trellis2
        layout.use_property_split = True
        layout.prop(s, "override_samplers")
        col = layout.column(align=True)
        col.enabled = s.override_samplers
        for stage, label in (("sparse_structure", "Structure"), ("shape", "Shape"), ("texture", "Texture")):
            col.label(text=label)
            col.prop(s, f"{stage}_steps")
            col.prop(s, f"{stage}_guidance")
        layout.prop(s, "multi_image_mode")
        layout.prop(s, "face_budget")
        layout.prop(s, "texture_size")
        layout.prop(s, "object_size")


class TRELLIS2_PT_result(_Sidebar, Panel):
    bl_label = "Selected Result"

    @classmethod
    def poll(cls, context):
        return context.active_object is not None

    def draw(self, context):
        layout = self.layout
        obj = context.active_object
        record = obj.trellis2
        if record.is_result:
            layout.label(text=f"{record.resolution} px, seed {record.seed}, {len(obj.data.polygons):,} faces")
            row = layout.row(align=True)
            row.enabled = jobs.current() is None
            row.operator("trellis2.regenerate", text="Regenerate at 1024").resolution = "1024"
            row.operator("trellis2.regenerate", text="Regenerate at 1536").resolution = "1536"
        else:
            layout.label(text="Not a TRELLIS.2 result: only Relight applies.", icon="INFO")
        row = layout.row(align=True)
        row.prop(context.scene.trellis2, "light_style", expand=True)
        row.operator("trellis2.relight", icon="LIGHT_SUN").style = context.scene.trellis2.light_style


classes = (TRELLIS2_UL_images, TRELLIS2_PT_generate, TRELLIS2_PT_advanced, TRELLIS2_PT_result)
