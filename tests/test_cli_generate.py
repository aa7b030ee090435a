"""`python -m engine generate`: images -> .npz asset or finished .glb, with readable errors."""

from __future__ import annotations

import io

import numpy as np

from engine.cli import main
from engine.results import Asset


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_generate_writes_an_asset_that_loads_back(tiny_checkpoint, object_image, tmp_path):
    image = tmp_path / "object.png"
    object_image.save(image)
    target = tmp_path / "asset.npz"
    code, out, err = run_cli(
        "generate", str(image), "--model", str(tiny_checkpoint), "--resolution", "512", "--seed", "3",
        "--device", "cpu", "-o", str(target),
    )  # fmt: skip
    assert code == 0, err
    assert "wrote" in out and "sparse_structure" in err and "decode" in err
    asset = Asset.load(target)
    assert asset.resolution == 512 and len(asset.faces) > 0
    assert asset.attribute("base_color").shape == (len(asset.coords), 3)
    assert not list(tmp_path.glob("*.partial"))


def test_generate_glb_is_a_finished_asset(tiny_checkpoint, object_image, tmp_path):
    image = tmp_path / "object.png"
    object_image.save(image)
    target = tmp_path / "asset.glb"
    code, out, err = run_cli(
        "generate", str(image), "--model", str(tiny_checkpoint), "--resolution", "512", "--device", "cpu",
        "--face-budget", "500", "--texture-size", "256", "-o", str(target),
    )  # fmt: skip
    assert code == 0, err
    data = target.read_bytes()
    assert data[:4] == b"glTF" and int.from_bytes(data[8:12], "little") == len(data)


def test_generate_errors_say_what_to_do(tiny_checkpoint, tmp_path):
    code, _, err = run_cli("generate", str(tmp_path / "missing.png"), "--model", str(tiny_checkpoint), "-o", "x.npz")
    assert code == 1 and "image not found" in err
    code, _, err = run_cli("generate", str(tmp_path), "--model", str(tiny_checkpoint), "-o", str(tmp_path / "x.obj"))
    assert code == 1 and ".npz or .glb" in err
    rgb = tmp_path / "photo.jpg"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(rgb)
    code, _, err = run_cli("generate", str(rgb), "--model", str(tiny_checkpoint), "--device", "cpu", "-o", "x.npz")
    assert code == 1 and "error:" in err
