"""Bad input and interruptions: each ends in a report that says what to do, and the scene keeps what it had.

The engine's own failures (gated repository, out of GPU memory) are raised from the worker the way the
engine raises them; the add-on's part under test is that they reach the person and leave nothing behind.
"""

from __future__ import annotations

import threading

import bpy
import pytest

from blender_trellis2 import api, jobs, work
from tests.blender.helpers import add_pictures, picture, snapshot


@pytest.fixture
def ready(addon, tmp_path):
    """The add-on with one picture in the panel and an unrelated object in the scene."""
    add_pictures(picture(tmp_path))
    bpy.context.scene.trellis2.resolution = "512"
    bpy.data.objects.new("keep me", bpy.data.meshes.new("keep me"))
    return snapshot()


def generate_fails(match: str) -> None:
    with pytest.raises(RuntimeError, match=match):  # bpy raises the operator's ERROR report
        bpy.ops.trellis2.generate()


def test_no_image_chosen(addon):
    before = snapshot()
    generate_fails(r"No reference image: add one with \+ in the TRELLIS.2 panel")
    assert snapshot() == before


def test_missing_image_file(ready, tmp_path):
    (tmp_path / "object.png").unlink()  # the picture was added, then its file went away...
    bpy.data.images["object.png"].reload()  # ...and Blender reads it again (as after reopening the .blend)
    generate_fails(r"The file of image 'object.png' is missing .* Locate it")
    assert snapshot() == ready
    with pytest.raises(api.AddonError, match="Image file not found: .*nowhere.png. Check the path"):
        api.generate([str(tmp_path / "nowhere.png")])


def test_image_blender_cannot_read(addon, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(RuntimeError, match="Blender cannot read broken.png .*Save it as PNG or JPEG"):
        bpy.ops.trellis2.add_images(directory=str(tmp_path), files=[{"name": bad.name}])
    assert len(bpy.context.scene.trellis2.images) == 0


def test_weights_missing(ready, addon, tmp_path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    addon.local_model_folder = str(empty)
    generate_fails("has no pipeline.json; point to the pipeline's root folder")
    assert snapshot() == ready
    addon.local_model_folder = ""
    generate_fails("No model folder chosen: set Model Folder in Preferences")


def test_gated_repository_without_token(ready, monkeypatch):
    from engine.hub import GatedRepoError, gated_message

    def gated(model, on_progress=None):
        raise GatedRepoError(gated_message("facebook/dinov3-vitl16-pretrain-lvd1689m", token_given=False))

    monkeypatch.setattr(work, "pipeline", gated)
    generate_fails(r"is a gated model(.|\n)*Preferences > HF token")
    assert snapshot() == ready


def test_gpu_out_of_memory(ready, monkeypatch):
    import torch

    def oom(request, on_progress=None, cancel=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(work, "generate", oom)
    generate_fails(r"The GPU ran out of memory .*Set Memory to 'Low VRAM'")
    assert snapshot() == ready


def blocked(monkeypatch, name: str):
    """Make `work.<name>` wait on the worker until the test releases it (the user acts meanwhile)."""
    release = threading.Event()
    real = getattr(work, name)

    def waiting(*args, **kwargs):
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(work, name, waiting)
    return release


def test_one_job_at_a_time(ready, monkeypatch):
    release = blocked(monkeypatch, "generate")
    job = jobs.start(api.generate_job(api.request_from_scene(bpy.context)))
    try:
        generate_fails("TRELLIS.2 is busy .*Wait for it to finish, or press Cancel first")
        with pytest.raises(jobs.Busy):
            api.generate([bpy.data.images["object.png"]])
    finally:
        job.cancel()
        release.set()
        jobs.wait(job)
    assert job.state == "cancelled" and snapshot() == ready


def test_target_deleted_during_regenerate(addon, monkeypatch, tiny_checkpoint, tmp_path):
    obj = api.generate([str(picture(tmp_path))], resolution=512, seed=1, texture_size=256)
    release = blocked(monkeypatch, "regenerate")
    job = jobs.start(api.regenerate_job(obj, 1024))
    bpy.data.objects.remove(obj)  # the user deletes it while the worker runs
    before = snapshot()
    release.set()
    jobs.wait(job)
    assert job.state == "failed"
    assert "was deleted (or undone) while TRELLIS.2 worked; nothing was changed" in job.message
    assert snapshot() == before, "the new mesh, material and images were removed again"


def test_file_closed_during_a_job(ready, monkeypatch, tmp_path):
    other = tmp_path / "other.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(other), copy=True)
    release = blocked(monkeypatch, "generate")
    job = jobs.start(api.generate_job(api.request_from_scene(bpy.context)))
    bpy.ops.wm.open_mainfile(filepath=str(other))  # load_pre: the job is told to stop
    release.set()
    jobs.wait(job)
    assert job.state == "cancelled" and job.message == jobs.CLOSED_MESSAGE
    assert not [o for o in bpy.data.objects if o.trellis2.is_result] and "TRELLIS.2" not in bpy.data.collections
