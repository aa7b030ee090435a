"""Operators: thin wrappers over `api` (the same calls a script makes) plus the reports a person reads.

Generate and Regenerate run as jobs. From the UI (`invoke`) the operator is modal: it only listens for Esc
and waits for the job's end while the timer pump builds the result, so the result lands in one undo step
when the operator finishes. From scripts and background mode (`execute`) it drives the same pump until
the job ends.
"""

from __future__ import annotations

import random
from pathlib import Path

import bpy
from bpy.props import CollectionProperty, EnumProperty, StringProperty
from bpy.types import Operator, OperatorFileListElement

from . import api, jobs
from .work import AddonError

RESOLUTION_ITEMS = (("512", "512", ""), ("1024", "1024", ""), ("1536", "1536", ""))


class _JobOperator:
    """Start a job, then wait for it: modally in the UI, blocking otherwise; report how it ended."""

    bl_options = {"REGISTER", "UNDO"}
    _job: jobs.Job | None = None
    _timer = None

    def make_job(self, context) -> jobs.Job:
        raise NotImplementedError

    def _start(self, context) -> jobs.Job | None:
        try:
            return jobs.start(self.make_job(context))
        except (AddonError, jobs.Busy) as exc:
            self.report({"ERROR"}, str(exc))
            return None

    def execute(self, context):
        job = self._start(context)
        return self._ended(jobs.wait(job)) if job is not None else {"CANCELLED"}

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        self._job = self._start(context)
        if self._job is None:
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            return {"RUNNING_MODAL"}
        if not self._job.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._ended(self._job)

    def _ended(self, job: jobs.Job):
        if job.state == "done":
            self.report({"INFO"}, f"{job.message}: {job.output}")
            return {"FINISHED"}
        self.report({"WARNING"} if job.state == "cancelled" else {"ERROR"}, job.message)
        return {"CANCELLED"}


class TRELLIS2_OT_generate(_JobOperator, Operator):
    """Make a textured 3D object from the reference images (Esc cancels)"""

    bl_idname = "trellis2.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER", "UNDO"}

    def make_job(self, context) -> jobs.Job:
        return api.generate_job(api.request_from_scene(context), context.scene)


class TRELLIS2_OT_regenerate(_JobOperator, Operator):
    """Regenerate the selected result at a higher resolution, in place (reuses its early stages)"""

    bl_idname = "trellis2.regenerate"
    bl_label = "Regenerate"
    bl_options = {"REGISTER", "UNDO"}

    resolution: EnumProperty(name="Resolution", items=RESOLUTION_ITEMS, default="1536")

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.trellis2.is_result

    def make_job(self, context) -> jobs.Job:
        s = context.scene.trellis2
        return api.regenerate_job(
            context.active_object,
            int(self.resolution),
            face_budget=s.face_budget,
            texture_size=int(s.texture_size),
            model=api.model_options(context),
        )


def active_item(context):
    """The selected row of the TRELLIS.2 image list, or None."""
    s = context.scene.trellis2
    return s.images[s.active_image] if 0 <= s.active_image < len(s.images) else None


class TRELLIS2_OT_preview_matte(_JobOperator, Operator):
    """Cut the object out of the selected picture now (background removal), to look at before generating"""

    bl_idname = "trellis2.preview_matte"
    bl_label = "Preview Matte"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        item = active_item(context)
        return item is not None and item.image is not None

    def make_job(self, context) -> jobs.Job:
        return api.preview_matte_job(active_item(context), api.model_options(context))


class TRELLIS2_OT_keep_matte(Operator):
    """Generate with this cut-out (as it is now, or after editing it in the Image Editor); no remover runs"""

    bl_idname = "trellis2.keep_matte"
    bl_label = "Keep"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        item = active_item(context)
        return item is not None and item.matte is not None

    def execute(self, context):
        matte = api.keep_matte(active_item(context))
        self.report({"INFO"}, f"Generate will use '{matte.name}'")
        return {"FINISHED"}


class TRELLIS2_OT_discard_matte(Operator):
    """Reject this matte: its image is deleted; choose another picture or give this one transparency"""

    bl_idname = "trellis2.discard_matte"
    bl_label = "Discard"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        item = active_item(context)
        return item is not None and (item.matte is not None or item.matte_choice == "KEPT")

    def execute(self, context):
        api.discard_matte(active_item(context))
        return {"FINISHED"}


class TRELLIS2_OT_cancel(Operator):
    """Stop the running generation at the next sampler step; nothing is added"""

    bl_idname = "trellis2.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if not jobs.cancel():
            self.report({"INFO"}, "Nothing is running")
        return {"FINISHED"}


class TRELLIS2_OT_relight(Operator):
    """Light the selected object with a procedural world and circle it with a turntable camera"""

    bl_idname = "trellis2.relight"
    bl_label = "Relight"
    bl_options = {"REGISTER", "UNDO"}

    style: EnumProperty(
        name="Light", items=(("STUDIO", "Studio", "Studio gradient"), ("SKY", "Sky", "Daylight sky")), default="STUDIO"
    )

    @classmethod
    def poll(cls, context):
        return context.active_object is not None

    def execute(self, context):
        camera = api.relight(context.active_object, self.style, scene=context.scene)
        self.report({"INFO"}, f"Lit with the {self.style.lower()} world; camera '{camera.name}' turns around it")
        return {"FINISHED"}


class TRELLIS2_OT_add_images(Operator):
    """Add reference pictures of the object (PNG with transparency works best)"""

    bl_idname = "trellis2.add_images"
    bl_label = "Add Images"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE", "HIDDEN"})
    files: CollectionProperty(type=OperatorFileListElement, options={"SKIP_SAVE", "HIDDEN"})
    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE", "HIDDEN"})
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        if self.directory and self.files:  # dropped on the viewport: the file handler filled them in
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def paths(self) -> list[Path]:
        if self.files and self.directory:
            return [Path(self.directory) / f.name for f in self.files if f.name]
        return [Path(self.filepath)] if self.filepath else []

    def execute(self, context):
        settings = context.scene.trellis2
        added, problems = 0, []
        for path in self.paths():
            try:
                image = bpy.data.images.load(str(path), check_existing=True)
                if image.size[0] == 0:  # loaded lazily: (0, 0) means Blender could not decode it
                    raise RuntimeError("not an image Blender can decode")
            except RuntimeError as exc:
                problems.append(f"{path.name} ({str(exc).strip().splitlines()[-1]})")
                continue
            settings.images.add().image = image
            settings.active_image = len(settings.images) - 1
            added += 1
        if problems:
            self.report(
                {"ERROR"},
                "Blender cannot read " + ", ".join(problems) + ". Save it as PNG or JPEG and add it again.",
            )
        return {"FINISHED"} if added else {"CANCELLED"}


class TRELLIS2_OT_remove_image(Operator):
    """Remove the selected picture from the list (the image stays in the .blend)"""

    bl_idname = "trellis2.remove_image"
    bl_label = "Remove Image"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.trellis2.images) > 0

    def execute(self, context):
        settings = context.scene.trellis2
        settings.images.remove(settings.active_image)
        settings.active_image = max(0, min(settings.active_image, len(settings.images) - 1))
        return {"FINISHED"}


class TRELLIS2_OT_new_seed(Operator):
    """Pick a random seed"""

    bl_idname = "trellis2.new_seed"
    bl_label = "New Seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.trellis2.seed = random.randrange(2**31)
        return {"FINISHED"}


class TRELLIS2_FH_images(bpy.types.FileHandler):
    """Drop pictures on the 3D viewport to add them as reference images."""

    bl_idname = "TRELLIS2_FH_images"
    bl_label = "TRELLIS.2 reference images"
    bl_import_operator = TRELLIS2_OT_add_images.bl_idname
    bl_file_extensions = ";".join(api.IMAGE_SUFFIXES)

    @classmethod
    def poll_drop(cls, context):
        return context.area is not None and context.area.type == "VIEW_3D"


classes = (
    TRELLIS2_OT_generate,
    TRELLIS2_OT_regenerate,
    TRELLIS2_OT_preview_matte,
    TRELLIS2_OT_keep_matte,
    TRELLIS2_OT_discard_matte,
    TRELLIS2_OT_cancel,
    TRELLIS2_OT_relight,
    TRELLIS2_OT_add_images,
    TRELLIS2_OT_remove_image,
    TRELLIS2_OT_new_seed,
    TRELLIS2_FH_images,
)
