"""The runtime installer against a local wheel folder, with stand-in packages and no network.

Real pip runs in a subprocess exactly as it does from Blender; only the package names differ
(`fake-torch` stands in for torch), which the installer takes as data.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from blender_trellis2 import runtime_install as ri


def make_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any") -> Path:
    """A minimal valid wheel: one module whose __version__ says which build is on sys.path."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{module}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def plan(folder: Path, *requirements: str) -> ri.InstallPlan:
    return ri.InstallPlan(requirements, label="test", find_links=(str(folder),), no_index=True, expected_bytes=0)


def imported_version(state: ri.RuntimeState, module: str) -> str:
    """Import `module` in a fresh Python with the runtime on sys.path, as the add-on would."""
    code = f"import sys; sys.path.extend({list(state.paths)!r}); import {module}; print({module}.__version__)"
    return subprocess.run([sys.executable, "-s", "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "fake-torch", "1.0")
    make_wheel(folder, "fake-torch", "2.0")
    make_wheel(folder, "fake-spconv", "1.0")
    return folder


def test_install_is_idempotent_upgrades_and_removes(wheels, tmp_path):
    layout = ri.RuntimeLayout(tmp_path / "runtime")
    assert not ri.read_state(layout).installed

    lines = []
    first = ri.install(plan(wheels, "fake-torch==1.0", "fake-spconv==1.0"), layout, on_line=lines.append)
    state = ri.read_state(layout)
    assert first.changed and state.installed
    assert state.packages["fake-torch"] == "1.0" and state.packages["fake-spconv"] == "1.0"
    assert state.summary() == "fake-torch 1.0, fake-spconv 1.0"
    assert imported_version(state, "fake_torch") == "1.0"
    assert lines[0].startswith("$ ") and "--target" in lines[0] and "--only-binary" in lines[0]
    assert state.command[:5] == (sys.executable, "-s", "-m", "pip", "install")

    job = ri.InstallJob(plan(wheels, "fake-torch==1.0", "fake-spconv==1.0"), layout)
    job.start()
    assert not job.result.changed and job.command == [], "a second install with everything present runs nothing"
    assert "Already installed" in job.result.message

    upgrade = ri.install(plan(wheels, "fake-torch==2.0", "fake-spconv==1.0"), layout)
    state = ri.read_state(layout)
    assert upgrade.changed and state.packages["fake-torch"] == "2.0"
    assert imported_version(state, "fake_torch") == "2.0"
    assert [p.name for p in layout.root.glob("env-*")] == [Path(state.paths[0]).name], "the old version is gone"

    assert ri.remove(layout) == "Runtime removed."
    assert not ri.read_state(layout).installed
    assert not list(layout.root.glob("env-*"))


def test_a_damaged_wheel_keeps_the_previous_runtime_and_says_why(wheels, tmp_path):
    layout = ri.RuntimeLayout(tmp_path / "runtime")
    ri.install(plan(wheels, "fake-torch==1.0"), layout)
    before = ri.read_state(layout)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fake_torch-3.0-py3-none-any.whl").write_bytes(b"this is not a zip file")
    with pytest.raises(ri.RuntimeInstallError) as err:
        ri.install(plan(broken, "fake-torch==3.0"), layout)
    message = str(err.value)
    assert "fake_torch-3.0-py3-none-any.whl" in message and "damaged" in message
    assert "Nothing was changed (still using fake-torch 1.0)" in message

    after = ri.read_state(layout)
    assert after == before
    assert imported_version(after, "fake_torch") == "1.0"
    assert not list(layout.root.glob("staging-*")), "the failed staging folder was cleaned up"


def test_a_wheel_for_another_python_is_refused_with_a_clear_message(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "fake-torch", "1.0", tag="cp27-cp27mu-manylinux1_x86_64")
    layout = ri.RuntimeLayout(tmp_path / "runtime")
    with pytest.raises(ri.RuntimeInstallError) as err:
        ri.install(plan(folder, "fake-torch==1.0"), layout)
    assert f"fits this Blender (Python {sys.version_info[0]}.{sys.version_info[1]}" in str(err.value)
    assert "Nothing was changed (no runtime installed)" in str(err.value)
    assert not ri.read_state(layout).installed


def test_a_half_finished_install_is_reported_then_replaced(wheels, tmp_path):
    layout = ri.RuntimeLayout(tmp_path / "runtime")
    leftover = layout.staging_dir("0123456789ab")
    (leftover / "fake_torch").mkdir(parents=True)
    state = ri.read_state(layout)
    assert not state.installed
    assert any("did not finish" in p for p in state.problems)

    ri.install(plan(wheels, "fake-torch==1.0"), layout)
    state = ri.read_state(layout)
    assert state.installed and not state.problems and not leftover.exists()


def test_a_folder_that_cannot_be_written_says_so(wheels, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    layout = ri.RuntimeLayout(blocker / "runtime")  # a folder inside a file: mkdir fails even for root
    with pytest.raises(ri.RuntimeInstallError, match="is not writable"):
        ri.install(plan(wheels, "fake-torch==1.0"), layout)


def test_a_full_disk_is_refused_before_pip_runs(wheels, tmp_path):
    layout = ri.RuntimeLayout(tmp_path / "runtime")
    big = ri.InstallPlan(("fake-torch==1.0",), find_links=(str(wheels),), no_index=True, expected_bytes=2**60)
    with pytest.raises(ri.RuntimeInstallError, match="GB free"):
        ri.install(big, layout)
    assert not layout.log_file.exists(), "pip never started"


@pytest.mark.parametrize(
    ("output", "no_index", "expected"),
    [
        ("OSError: [Errno 28] No space left on device", False, "The disk is full"),
        ("Failed to establish a new connection: [Errno -3] Temporary failure in name resolution", False, "network"),
        ("ERROR: No matching distribution found for torch==9.9+cu999", False, "No build of torch==9.9+cu999"),
        ("ERROR: [Errno 13] Permission denied: '/x'", False, "permission denied"),
    ],
)
def test_pip_failures_become_sentences(output, no_index, expected):
    assert expected in ri.explain_pip_failure(output, ri.InstallPlan(("torch",), no_index=no_index))


def test_default_plans_per_machine():
    mac = ri.default_plan(system="Darwin")
    assert mac.requirements == (f"torch=={ri.TORCH_VERSION}", *ri.ENGINE_REQUIREMENTS) and not mac.extra_index_urls

    new = ri.default_plan(system="Windows", gpu=ri.GpuInfo("nvidia", "RTX 5090", 575))
    assert new.requirements == (f"torch=={ri.TORCH_VERSION}+cu128", *ri.ENGINE_REQUIREMENTS, ri.SPCONV_REQUIREMENT)
    assert new.extra_index_urls == ("https://download.pytorch.org/whl/cu128",)

    older = ri.default_plan(system="Linux", gpu=ri.GpuInfo("nvidia", "RTX 3060", 535), include_spconv=False)
    assert older.requirements == (f"torch=={ri.TORCH_VERSION}+cu126", *ri.ENGINE_REQUIREMENTS)

    stale = ri.default_plan(system="Linux", gpu=ri.GpuInfo("nvidia", "GTX 970", 470))
    assert stale.requirements == (f"torch=={ri.TORCH_VERSION}+cpu", *ri.ENGINE_REQUIREMENTS)
    assert "too old" in stale.label
    assert ri.default_plan(system="Linux", gpu=ri.GpuInfo("none")).label == "CPU only"
    assert len({p.key() for p in (mac, new, older, stale)}) == 4


def test_wheel_folder_plan_finds_spconv(tmp_path):
    make_wheel(tmp_path, "torch", "1.0")
    make_wheel(tmp_path, "spconv-cu126", "2.3.8")
    offline = ri.wheels_folder_plan(tmp_path)
    assert offline.requirements == ("torch", "spconv-cu126") and offline.no_index
    (tmp_path / "empty").mkdir()
    with pytest.raises(ri.RuntimeInstallError, match="no .whl files"):
        ri.wheels_folder_plan(tmp_path / "empty")


def test_external_environment_checks(tmp_path):
    site = tmp_path / "site-packages"
    assert "is not a folder" in ri.check_external_env(site, "fake-torch")
    (site / "fake_torch").mkdir(parents=True)
    assert "has no fake-torch" in ri.check_external_env(site, "fake-torch")
    (site / "fake_torch" / "__init__.py").write_text("")
    (site / "fake_torch" / "_C.cpython-27-x86_64-linux-gnu.so").write_bytes(b"")
    assert "built for another Python" in ri.check_external_env(site, "fake-torch")
    (site / "fake_torch" / "_C.cpython-27-x86_64-linux-gnu.so").unlink()
    (site / "fake_torch" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    assert ri.check_external_env(site, "fake-torch") is None
