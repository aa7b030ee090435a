"""The add-on's only threading code: one worker thread per job, a queue, and a timer pump.

The worker runs the engine (no Blender data); it talks to Blender only through the queue. `pump()`,
registered with `bpy.app.timers`, is the one place that turns a result into Blender data, on the main
thread. `wait()` drives the same pump in a loop for callers without an event loop (scripts, the command
line, background mode, tests), so every path applies results the same way.

Cancel (Esc, the Cancel button, closing the file, quitting) sets an event the engine checks between
sampler steps; a cancelled or failed job never calls its `apply`, so the scene stays as it was.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import bpy
from bpy.app.handlers import persistent

log = logging.getLogger(__name__)

PUMP_INTERVAL = 0.1  # seconds between pumps while a job runs
STAGE_LABELS = {
    "download": "Downloading weights (MB)",
    "background_removal": "Background removal",
    "sparse_structure": "Sparse structure",
    "shape": "Shape",
    "shape_512": "Shape 512",
    "shape_1024": "Shape (high resolution)",
    "texture": "Texture",
    "decode": "Decoding",
    "finish": "Baking maps",
}
CLOSED_MESSAGE = "The file was closed while TRELLIS.2 was generating; nothing was added. Generate again."


class Busy(Exception):
    """Another job is running (one at a time: a model fills the GPU)."""


class Job:
    """One unit of work: `work(progress, cancelled)` on the worker, then `apply(output)` on the main thread.

    `state` goes queued -> running -> done | failed | cancelled; `message` says what happened, for a report.
    """

    def __init__(
        self,
        label: str,
        work: Callable[[Callable[[str, int, int], None], Callable[[], bool]], Any],
        apply: Callable[[Any], Any],
        explain: Callable[[BaseException], str] = str,
        cancelled_message: str = "Cancelled: the scene is unchanged.",
    ) -> None:
        self.label = label
        self.work, self.apply, self.explain = work, apply, explain
        self.state = "queued"
        self.stage, self.step, self.total = "", 0, 0
        self.message = ""
        self.output: Any = None
        self.error: BaseException | None = None
        self.cancelled_message = cancelled_message
        self._cancel = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------------------

    def cancel(self, message: str | None = None) -> None:
        if message:
            self.cancelled_message = message
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def status_text(self) -> str:
        if not self.stage:
            return f"{self.label}: starting…"
        stage = STAGE_LABELS.get(self.stage, self.stage.replace("_", " ").capitalize())
        cancelling = " (cancelling…)" if self.cancel_requested else ""
        return f"{self.label}: {stage} {self.step}/{self.total}{cancelling}"

    # -- worker thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            output = self.work(self._progress, self._cancel.is_set)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the main thread as a report
            self._queue.put(("error", exc))
        else:
            self._queue.put(("output", output))

    def _progress(self, stage: str, step: int, total: int) -> None:
        self._queue.put(("progress", (stage, step, total)))

    # -- main thread ----------------------------------------------------------------------------

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "progress":
            self.stage, self.step, self.total = payload
            return
        if self.cancel_requested or _engine_error(payload, "Cancelled"):
            self._end("cancelled", self.cancelled_message)
        elif kind == "error":
            if not _engine_error(payload):
                log.error("%s failed", self.label, exc_info=payload)
            self.error = payload
            self._end("failed", self.explain(payload))
        else:
            self._apply(payload)

    def _apply(self, output: Any) -> None:
        try:
            self.output = self.apply(output)
        except Exception as exc:  # noqa: BLE001 - apply rolls back its own data; the person gets the reason
            if not _engine_error(exc):
                log.error("%s: applying the result failed", self.label, exc_info=exc)
            self.error = exc
            self._end("failed", self.explain(exc))
        else:
            self._end("done", f"{self.label}: done")

    def _end(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        if state == "failed":
            log.warning("%s", message)


def _engine_error(value: Any, name: str = "EngineError") -> bool:
    """isinstance against engine.errors without importing the engine (it imports torch): if it is not
    loaded yet, nothing can be one of its errors."""
    errors = sys.modules.get("engine.errors")
    return errors is not None and isinstance(value, getattr(errors, name))


# -------------------------------------------------------------------------------------- the job slot

_current: Job | None = None
_last: Job | None = None


def current() -> Job | None:
    """The running job, if any."""
    return _current


def last() -> Job | None:
    """The most recent job that ended (its message stays in the panel)."""
    return _last


def start(job: Job) -> Job:
    """Start `job` on a worker thread; raises `Busy` if another one runs."""
    global _current
    if _current is not None:
        raise Busy(f"TRELLIS.2 is busy ({_current.status_text()}). Wait for it to finish, or press Cancel first.")
    _current = job
    job.state = "running"
    job._thread = threading.Thread(target=job._run, name=f"trellis2: {job.label}", daemon=True)
    job._thread.start()
    if not bpy.app.timers.is_registered(pump):
        bpy.app.timers.register(pump, first_interval=PUMP_INTERVAL, persistent=True)
    return job


def pump() -> float | None:
    """The timer: hand queued progress and results to Blender. Returns None (stop) once no job runs."""
    global _current, _last
    job = _current
    if job is None:
        return None
    while True:
        try:
            kind, payload = job._queue.get_nowait()
        except queue.Empty:
            break
        job._handle(kind, payload)
        if job.finished:
            _current, _last = None, job
            break
    _redraw()
    return None if job.finished else PUMP_INTERVAL


def wait(job: Job, poll: float = 0.02) -> Job:
    """Drive `pump()` until `job` ends (no event loop needed)."""
    while not job.finished:
        if pump() is None and not job.finished:
            raise RuntimeError(f"{job.label} is not the running job")
        time.sleep(poll)
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)
    return job


def run_blocking(job: Job) -> Job:
    """Start `job` and wait for it: the synchronous path (scripts, command line, background mode, tests)."""
    return wait(start(job))


def cancel(message: str | None = None) -> bool:
    """Ask the running job to stop at the next sampler step; True if there was one."""
    if _current is None:
        return False
    _current.cancel(message)
    return True


# ------------------------------------------------------------------------------------------ the UI


def draw_status(self, context) -> None:
    """Status-bar progress while a job runs (appended to STATUSBAR_HT_header)."""
    job = _current
    if job is None:
        return
    self.layout.progress(factor=job.fraction, type="BAR", text=job.status_text())


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "STATUSBAR"):
                area.tag_redraw()


# ---------------------------------------------------------------------------------------- handlers


@persistent
def _on_load_pre(*_args) -> None:
    cancel(CLOSED_MESSAGE)


def _on_exit() -> None:
    cancel(CLOSED_MESSAGE)
    job = _current
    if job is not None and job._thread is not None:
        job._thread.join(timeout=5.0)  # the engine stops at the next sampler step; never block quitting long


def register() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)
    bpy.types.STATUSBAR_HT_header.append(draw_status)
    atexit.register(_on_exit)


def unregister() -> None:
    cancel("The TRELLIS.2 add-on was disabled while it was generating; nothing was added.")
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    bpy.types.STATUSBAR_HT_header.remove(draw_status)
    atexit.unregister(_on_exit)
