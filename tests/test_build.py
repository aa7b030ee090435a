"""build.py: byte-reproducible zips, one platform each, and a validator that catches what it should."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import build


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> dict[str, Path]:
    out = build.build(build.ROOT / "wheels", tmp_path_factory.mktemp("a"), write_manifest=False)
    return dict(zip(build.PLATFORM_TAGS, out, strict=True))


def test_same_inputs_give_the_same_bytes(zips, tmp_path):
    # Two builds back to back (the sources must not change in between), then compare every byte.
    first = build.build(build.ROOT / "wheels", tmp_path / "one", offline=True, write_manifest=False)
    second = build.build(build.ROOT / "wheels", tmp_path / "two", offline=True, write_manifest=False)
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two builds"


def test_each_zip_carries_its_platform_and_both_pythons(zips):
    assert build.blender_validator() is not None, "Blender's own validator (from the bpy module) checked the zips"
    for platform, path in zips.items():
        assert build.validate_zip(path, platform) == []
        with zipfile.ZipFile(path) as zf:
            wheels = [n.split("/", 1)[1] for n in zf.namelist() if n.startswith("wheels/")]
            assert "__init__.py" in zf.namelist() and "_vendor/engine/__init__.py" in zf.namelist()
        pillows = sorted(w.split("-")[2] for w in wheels if w.startswith("pillow-"))
        assert pillows == ["cp311", "cp313"], f"{platform}: {pillows}"
        assert not any(w.startswith(("torch", "numpy", "spconv")) for w in wheels)
        assert ("colorama" in " ".join(wheels)) == (platform == "windows-x64"), "markers follow the target"
        other = {"windows-x64": "win_amd64", "linux-x64": "manylinux", "macos-arm64": "macosx"}
        foreign = [w for w in wheels for p, tag in other.items() if p != platform and tag in w]
        assert not foreign, f"{platform} zip carries {foreign}"


def test_validation_catches_stray_files_and_missing_wheels(zips, tmp_path):
    source = zips["linux-x64"]
    broken = tmp_path / source.name
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(broken, "w") as dst:
        names = src.namelist()
        dropped = next(n for n in names if n.startswith("wheels/"))
        for name in names:
            if name != dropped:
                dst.writestr(name, src.read(name))
        dst.writestr("__pycache__/preferences.cpython-311.pyc", b"")
        dst.writestr("wheels/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", b"")
    errors = build.validate_zip(broken, "linux-x64")
    assert f"{broken.name}: listed wheel ./{dropped} is not in the zip" in errors
    assert f"{broken.name}: stray file __pycache__/preferences.cpython-311.pyc" in errors
    assert f"{broken.name}: stray file wheels/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl" in errors
    assert build.validate_zip(source, "windows-x64"), "a Linux zip is not a valid Windows zip"


def test_the_manifest_wheels_block_is_rewritten_in_place():
    text = build.MANIFEST.read_text(encoding="utf-8")
    rewritten = build.write_manifest_wheels(text, ["a-1-py3-none-any.whl"])
    assert '  "./wheels/a-1-py3-none-any.whl",\n' in rewritten
    assert rewritten.replace('  "./wheels/a-1-py3-none-any.whl",\n', "").count("./wheels/") == 0
    assert rewritten.split("wheels = [")[0] == text.split("wheels = [")[0], "everything above the list is kept"
