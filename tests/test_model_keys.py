"""The 10 released checkpoints' configs build (on the meta device) into exactly the official tensors.

Ground truth: `../shared/spec/trellis2_keys/<ckpt>.tsv` lists every parameter and buffer the official
classes hold (key, shape, module dtype, kind), non-persistent buffers such as `rope_phases` included.
The configs are the released `ckpts/<name>.json` args (spec 2.3), kept as data in tests/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.models import build_model

CONFIGS = json.loads((Path(__file__).parent / "data" / "official_configs.json").read_text())
KEYS_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec" / "trellis2_keys"


def _expected(name: str) -> dict[str, tuple[tuple[int, ...], str, str]]:
    path = KEYS_DIR / f"{name}.tsv"
    if not path.is_file():
        pytest.skip(f"key tables not found at {KEYS_DIR}")
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype, kind = line.split("\t")
        dims = tuple(int(d) for d in shape.split("x")) if shape else ()
        rows[key] = (dims, dtype, "buffer" if kind.startswith("buffer") else "param")
    return rows


def _actual(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str, str]]:
    rows = {k: (tuple(p.shape), str(p.dtype).removeprefix("torch."), "param") for k, p in model.named_parameters()}
    for k, b in model.named_buffers():
        rows[k] = (tuple(b.shape), str(b.dtype).removeprefix("torch."), "buffer")
    return rows


def test_every_released_checkpoint_has_a_config():
    if not KEYS_DIR.is_dir():
        pytest.skip(f"key tables not found at {KEYS_DIR}")
    tables = {p.stem for p in KEYS_DIR.glob("*.tsv")} - {"SUMMARY"}
    assert tables == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_meta_build_matches_official_keys_shapes_dtypes(name):
    expected = _expected(name)
    actual = _actual(build_model(CONFIGS[name], device="meta"))
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    wrong = [(k, actual[k], expected[k]) for k in expected if actual[k] != expected[k]]
    assert not wrong, f"{len(wrong)} tensors differ (key, ours, official): {wrong[:5]}"
