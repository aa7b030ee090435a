"""Add-on preferences: the runtime status box, consented runtime install/removal, and the generation settings.

The status box never imports torch in Blender's process: what is installed comes from the runtime marker
and dist-info folders, and "Check" imports torch in a child process (a broken CUDA install must not take
Blender down). Install and removal are thin operators over `runtime_install`; the modal install polls pip
from a timer, so there is no thread here.
"""

import importlib.util
import sys
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy.types import AddonPreferences, Operator

from . import runtime_install as ri
from .work import DEFAULT_REMOVER

ADDON = __package__
DEFAULT_REPO = "microsoft/TRELLIS.2-4B"

# Session state the panel draws: the last probe, the running install, the last message.
_state: dict = {"probe": None, "probe_proc": None, "job": None, "progress": "", "message": "", "paths": []}


# ---------------------------------------------------------------------------------------------- places


def user_folder() -> Path:
    """The add-on's own writable folder: the extension user directory, or a data folder when run from the repo."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON, create=False))
    except ValueError:  # loaded as `blender_trellis2`, not as an extension
        return Path(bpy.utils.user_resource("DATAFILES", path="trellis2"))


def runtime_layout() -> ri.RuntimeLayout:
    return ri.RuntimeLayout(user_folder() / "runtime")


def get_prefs(context=None) -> "TRELLIS2_AddonPreferences | None":
    addon = (context or bpy.context).preferences.addons.get(ADDON)
    return addon.preferences if addon is not None else None


def cache_folder(prefs) -> Path:
    """Where weights are downloaded: the preference, or `<user folder>/models`."""
    return Path(bpy.path.abspath(prefs.cache_folder)) if prefs.cache_folder else user_folder() / "models"


def weights_present(prefs) -> tuple[bool, str]:
    """A cheap look for pipeline.json (no download, no hub call); the full check happens when loading."""
    if prefs.model_source == "LOCAL":
        folder = Path(bpy.path.abspath(prefs.local_model_folder)) if prefs.local_model_folder else None
        found = folder is not None and (folder / "pipeline.json").is_file()
        return found, str(folder) if folder else "no local folder chosen"
    cache = cache_folder(prefs)
    repo = prefs.hf_repo_id.strip()
    hub_layout = cache / ("models--" + repo.replace("/", "--")) / "snapshots"
    found = any(hub_layout.glob("*/pipeline.json")) or (cache / repo / "pipeline.json").is_file()
    return found, str(cache)


def activate_runtime(prefs=None) -> list[str]:
    """Put the installed runtime (or the chosen existing environment) on sys.path; imports nothing."""
    paths = list(ri.read_state(runtime_layout()).paths)
    prefs = prefs or get_prefs()
    if prefs is not None and prefs.runtime_source == "ENVIRONMENT" and prefs.python_env_path:
        env = bpy.path.abspath(prefs.python_env_path)
        if ri.check_external_env(env) is None:
            paths.append(env)
    ri.deactivate([p for p in _state["paths"] if p not in paths])
    _state["paths"] = paths
    return ri.activate(paths)


def engine_conflict() -> str | None:
    """Another add-on's top-level `engine` module, already imported, would hide ours."""
    module = sys.modules.get("engine")
    where = getattr(module, "__file__", None) or ""
    mine = Path(__file__).resolve().parent
    if module is None or not where or Path(where).resolve().is_relative_to(mine.parent):
        return None
    return f"Another add-on's 'engine' module ({where}) is loaded; TRELLIS.2 cannot load its own. Disable it."


def find_torch():
    """torch's import spec if it is on sys.path (found, not imported), else None."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__spec__
    try:
        return importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None


def plan_for(prefs) -> ri.InstallPlan:
    if prefs.runtime_source == "WHEELS":
        return ri.wheels_folder_plan(bpy.path.abspath(prefs.wheels_folder))
    if _state.get("gpu") is None:  # nvidia-smi runs once per session, not on every redraw of the dialog
        _state["gpu"] = ri.detect_gpu()
    return ri.default_plan(gpu=_state["gpu"], include_spconv=prefs.install_spconv)


def _env_path_changed(self, context) -> None:
    activate_runtime(self)


def _redraw() -> None:
    for window in bpy.context.window_manager.windows if bpy.context.window_manager else ():
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


# -------------------------------------------------------------------------------------------- operators


class TRELLIS2_OT_install_runtime(Operator):
    """Download PyTorch (and spconv with an NVIDIA GPU) into the add-on's own folder, after you agree"""

    bl_idname = "trellis2.install_runtime"
    bl_label = "Install Runtime"

    consent: BoolProperty(
        name="I agree to download and install these packages",
        description="Nothing is downloaded or installed without this",
        default=False,
        options={"SKIP_SAVE"},
    )

    _timer = None

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=560, title="Install the PyTorch runtime")

    def draw(self, context):
        prefs = get_prefs(context)
        col = self.layout.column(align=True)
        try:
            plan = plan_for(prefs)
        except ri.RuntimeInstallError as exc:
            col.label(text=str(exc), icon="ERROR")
            return
        col.label(text=f"Build: {plan.label}")
        col.label(text="Packages: " + ", ".join(plan.requirements))
        source = ", ".join(plan.find_links) if plan.no_index else "PyPI / your pip index"
        col.label(text="From: " + ", ".join((*plan.extra_index_urls, source)))
        col.label(text=f"Into: {runtime_layout().root}  (about {plan.expected_bytes / ri.GB:.0f} GB)")
        col.label(text="Blender's own Python folders are not touched; Remove Runtime undoes this.")
        self.layout.prop(self, "consent")

    def execute(self, context):
        prefs = get_prefs(context)
        if prefs is None:
            self.report({"ERROR"}, "Enable the TRELLIS.2 add-on first")
            return {"CANCELLED"}
        if prefs.runtime_source == "ENVIRONMENT":
            return self._use_environment(prefs)
        if not self.consent:
            self.report({"ERROR"}, "Nothing installed: tick 'I agree' to download the runtime")
            return {"CANCELLED"}
        if _state["job"] is not None:
            self.report({"ERROR"}, "An install is already running")
            return {"CANCELLED"}
        try:
            job = ri.InstallJob(plan_for(prefs), runtime_layout())
            job.start()
        except ri.RuntimeInstallError as exc:
            return self._fail(str(exc))
        if job.result is not None:
            return self._done(job.result)
        _state.update(job=job, progress="Starting pip…", message="")
        if bpy.app.background:  # no event loop to drive a modal operator
            return self._wait(job)
        self._timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        job = _state["job"]
        try:
            if _state.get("cancel"):
                _state["cancel"] = False
                job.cancel()
            lines = job.poll()
        except ri.RuntimeInstallError as exc:
            self._stop(context)
            return self._fail(str(exc))
        if lines:
            _state["progress"] = lines[-1][:160]
            _redraw()
        if job.result is None:
            return {"RUNNING_MODAL"}
        self._stop(context)
        return self._done(job.result)

    def _wait(self, job):
        try:
            while job.result is None:
                job.poll()
                if job.result is None:
                    time.sleep(0.2)
        except ri.RuntimeInstallError as exc:
            _state["job"] = None
            return self._fail(str(exc))
        return self._done(job.result)

    def _stop(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        _state["job"] = None

    def _done(self, result: ri.InstallResult):
        _state.update(job=None, progress="", message=result.message, probe=None)
        activate_runtime()
        if "torch" in sys.modules and result.changed:
            _state["message"] += " Restart Blender to use the new version (torch is already loaded)."
        self.report({"INFO"}, _state["message"])
        _redraw()
        return {"FINISHED"}

    def _fail(self, message: str):
        _state.update(job=None, progress="", message=message)
        self.report({"ERROR"}, message)
        _redraw()
        return {"CANCELLED"}

    def _use_environment(self, prefs):
        env = bpy.path.abspath(prefs.python_env_path)
        if problem := ri.check_external_env(env):
            return self._fail(problem)
        activate_runtime(prefs)
        return self._done(ri.InstallResult(False, f"Using PyTorch from {env}", ri.RuntimeState(True, (env,))))


class TRELLIS2_OT_cancel_install(Operator):
    """Stop the running install; the previous runtime stays as it was"""

    bl_idname = "trellis2.cancel_install"
    bl_label = "Cancel Install"

    def execute(self, context):
        _state["cancel"] = _state["job"] is not None
        return {"FINISHED"}


class TRELLIS2_OT_remove_runtime(Operator):
    """Delete the runtime the add-on installed (never an environment you pointed it at)"""

    bl_idname = "trellis2.remove_runtime"
    bl_label = "Remove Runtime"

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(
            self, event, title="Remove the PyTorch runtime?", message=str(runtime_layout().root), confirm_text="Remove"
        )

    def execute(self, context):
        if _state["job"] is not None:
            self.report({"ERROR"}, "An install is running; cancel it first")
            return {"CANCELLED"}
        try:
            message = ri.remove(runtime_layout())
        except ri.RuntimeInstallError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        activate_runtime()
        _state.update(message=message, probe=None)
        self.report({"INFO"}, message)
        return {"FINISHED"}


class TRELLIS2_OT_check_runtime(Operator):
    """Import PyTorch in a separate process and report its version, CUDA / MPS and spconv"""

    bl_idname = "trellis2.check_runtime"
    bl_label = "Check"

    _timer = None

    def execute(self, context):
        proc = ri.start_probe(list(_state["paths"]))
        if bpy.app.background:
            _state["probe"] = ri.read_probe(proc, timeout=300)
            return {"FINISHED"}
        _state.update(probe_proc=proc, probe={"checking": True})
        self._timer = context.window_manager.event_timer_add(0.5, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        proc = _state["probe_proc"]
        if event.type != "TIMER" or proc.poll() is None:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        _state.update(probe=ri.read_probe(proc), probe_proc=None)
        _redraw()
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------ preferences


class TRELLIS2_AddonPreferences(AddonPreferences):
    bl_idname = ADDON

    # Runtime (packaging issue): where torch comes from.
    runtime_source: EnumProperty(
        name="Runtime Source",
        items=(
            ("ONLINE", "Download", "Download PyTorch from the network after you agree"),
            ("WHEELS", "Wheels Folder", "Install from a folder of .whl files (offline)"),
            ("ENVIRONMENT", "Existing Environment", "Use PyTorch from an existing Python environment's site-packages"),
        ),
        default="ONLINE",
    )
    install_spconv: BoolProperty(
        name="Fast Sparse Convolutions (spconv)",
        description="With an NVIDIA GPU, also install spconv (faster; the pure-PyTorch path works without it)",
        default=True,
    )
    wheels_folder: StringProperty(name="Wheels Folder", subtype="DIR_PATH")
    python_env_path: StringProperty(
        name="Site-Packages",
        description="The site-packages folder of a Python environment of the same version as Blender's, with torch",
        subtype="DIR_PATH",
        update=_env_path_changed,
    )

    # Model and compute (used by the generation UI).
    model_source: EnumProperty(
        name="Model Source",
        items=(
            ("HF", "Hugging Face", "Download the weights from a Hugging Face repository"),
            ("LOCAL", "Local Folder", "Weights already on disk (a folder holding pipeline.json)"),
        ),
        default="HF",
    )
    hf_repo_id: StringProperty(name="Repository", default=DEFAULT_REPO)
    local_model_folder: StringProperty(name="Model Folder", subtype="DIR_PATH")
    hf_token: StringProperty(
        name="Hugging Face Token",
        description="Needed for gated repositories (DINOv3, RMBG-2.0): accept their licence on huggingface.co first",
        subtype="PASSWORD",
    )
    cache_folder: StringProperty(
        name="Cache Folder",
        description="Where weights are downloaded (empty: the add-on's user folder)",
        subtype="DIR_PATH",
    )
    device: EnumProperty(
        name="Device",
        items=(
            ("AUTO", "Auto", "CUDA, else Apple MPS, else the CPU"),
            ("CUDA", "CUDA", "NVIDIA GPU"),
            ("MPS", "MPS", "Apple Silicon GPU"),
            ("CPU", "CPU", "Slow, but works everywhere"),
        ),
        default="AUTO",
    )
    memory_mode: EnumProperty(
        name="Memory",
        items=(
            ("LOW_VRAM", "Low VRAM", "Keep only the running model on the GPU (slower, fits 8-16 GB cards)"),
            ("FAST", "Fast", "Keep every model on the GPU (needs a large GPU)"),
        ),
        default="LOW_VRAM",
    )

    # Background removal (images without transparency).
    remove_background: BoolProperty(
        name="Background Removal",
        description="Cut the object out of pictures without transparency (BiRefNet); images with alpha keep theirs",
        default=True,
    )
    remover_source: StringProperty(
        name="Remover",
        description=(
            f"Hugging Face repo id or a folder with model.safetensors. {DEFAULT_REMOVER} is MIT-licensed and open; "
            "briaai/RMBG-2.0 is gated and non-commercial: type its id only after accepting its licence"
        ),
        default=DEFAULT_REMOVER,
    )

    def draw(self, context):
        layout = self.layout
        draw_status(layout.box(), self)
        box = layout.box()
        box.label(text="Model", icon="FILE_3D")
        box.prop(self, "model_source", expand=True)
        if self.model_source == "HF":
            box.prop(self, "hf_repo_id")
            box.prop(self, "hf_token")
        else:
            box.prop(self, "local_model_folder")
        box.prop(self, "cache_folder")
        if not self.cache_folder:
            box.label(text=f"Default: {user_folder() / 'models'}")
        row = box.row()
        row.prop(self, "device")
        row.prop(self, "memory_mode")
        box = layout.box()
        box.prop(self, "remove_background")
        col = box.column()
        col.enabled = self.remove_background
        col.prop(self, "remover_source")
        if "RMBG" in self.remover_source.upper():
            col.label(text="RMBG-2.0: gated, CC BY-NC 4.0 (non-commercial); needs a Hugging Face token.", icon="INFO")
            if self.model_source != "HF":
                col.prop(self, "hf_token")
        else:
            col.label(text=f"Default: {DEFAULT_REMOVER} (MIT). Images with transparency never use it.")


def draw_status(box, prefs) -> None:
    """What works and what is missing, and the buttons that fix it."""
    box.label(text="Runtime", icon="SYSTEM")
    col = box.column(align=True)
    version = sys.version.split()[0]
    col.label(text=f"Python {version} (Blender {bpy.app.version_string})")
    state = ri.read_state(runtime_layout())
    torch_spec = find_torch()
    if state.installed:
        col.label(text=f"Installed: {state.summary()} ({state.label})", icon="CHECKMARK")
        col.label(text=f"In: {state.paths[0]}")
    elif torch_spec is not None:
        col.label(text=f"PyTorch found at {Path(torch_spec.origin).parent}", icon="CHECKMARK")
    else:
        col.label(text="PyTorch is not installed: generation needs it. Install it below.", icon="ERROR")
    probe = _state["probe"]
    if probe is None:
        col.label(text="GPU: not checked yet (Check imports PyTorch in a separate process)")
    elif probe.get("checking"):
        col.label(text="Checking PyTorch…", icon="TIME")
    elif probe.get("torch") is None:
        col.label(text=f"PyTorch does not import: {probe.get('torch_error', '')}"[:200], icon="ERROR")
    else:
        gpu = f"CUDA ({probe['cuda_device']})" if probe.get("cuda") else "MPS" if probe.get("mps") else "CPU only"
        col.label(text=f"PyTorch {probe['torch']}: {gpu}", icon="CHECKMARK" if gpu != "CPU only" else "INFO")
        if probe.get("cuda"):
            spconv = probe.get("spconv") or f"not available ({probe.get('spconv_error', 'not installed')})"
            col.label(text=f"spconv on CUDA: {spconv}"[:200])
    found, where = weights_present(prefs)
    col.label(
        text=f"Weights: {'present' if found else 'not downloaded yet'} ({where})", icon="CHECKMARK" if found else "INFO"
    )
    for problem in (*state.problems, *filter(None, [engine_conflict()])):
        col.label(text=problem, icon="ERROR")

    box.prop(prefs, "runtime_source", expand=True)
    if prefs.runtime_source == "WHEELS":
        box.prop(prefs, "wheels_folder")
    elif prefs.runtime_source == "ENVIRONMENT":
        box.prop(prefs, "python_env_path")
    if prefs.runtime_source != "ENVIRONMENT":
        box.prop(prefs, "install_spconv")
    job = _state["job"]
    row = box.row()
    if job is not None:
        row.label(text=_state["progress"] or "Installing…", icon="TIME")
        row.operator(TRELLIS2_OT_cancel_install.bl_idname, icon="CANCEL")
        box.label(text="$ " + " ".join(job.command)[:300])
    else:
        label = "Use This Environment" if prefs.runtime_source == "ENVIRONMENT" else "Install Runtime"
        row.operator(TRELLIS2_OT_install_runtime.bl_idname, text=label, icon="IMPORT")
        sub = row.row()
        sub.enabled = state.installed
        sub.operator(TRELLIS2_OT_remove_runtime.bl_idname, icon="TRASH")
        row.operator(TRELLIS2_OT_check_runtime.bl_idname, icon="VIEWZOOM")
    if _state["message"]:
        for line in _state["message"].splitlines()[:6]:
            box.label(text=line[:200])
    if state.command:
        box.label(text="Last install: $ " + " ".join(state.command)[:300])


classes = (
    TRELLIS2_OT_install_runtime,
    TRELLIS2_OT_cancel_install,
    TRELLIS2_OT_remove_runtime,
    TRELLIS2_OT_check_runtime,
    TRELLIS2_AddonPreferences,
)
