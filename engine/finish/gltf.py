"""GLB (binary glTF 2.0) writer for a `FinishedAsset`: one mesh, one PBR metallic-roughness material.

The engine frame is Z-up; glTF is Y-up, so positions and normals go through (x, y, z) -> (x, z, -y).
UVs are already in glTF's image convention (v down). Textures are PNG. The file is written to a
temporary name beside the target and moved into place, so a crash never leaves half a GLB behind.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
FLOAT, UINT32 = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


def z_up_to_y_up(xyz: np.ndarray) -> np.ndarray:
    return np.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], 1).astype(np.float32)


def png_bytes(image: np.ndarray, compress_level: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class _Buffer:
    """The binary chunk, built as aligned views; each `add` returns its bufferView index."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.views: list[dict] = []
        self.length = 0

    def add(self, data: bytes, target: int | None = None) -> int:
        pad = (-self.length) % 4
        if pad:
            self.parts.append(b"\0" * pad)
            self.length += pad
        view = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.parts.append(data)
        self.length += len(data)
        self.views.append(view)
        return len(self.views) - 1

    def blob(self) -> bytes:
        return b"".join(self.parts) + b"\0" * ((-self.length) % 4)


def build_glb(asset, *, png_compress_level: int = 1) -> bytes:
    buffer = _Buffer()
    accessors: list[dict] = []

    def accessor(array: np.ndarray, kind: str, target: int, with_bounds: bool = False) -> int:
        comp = UINT32 if array.dtype == np.uint32 else FLOAT
        view = buffer.add(np.ascontiguousarray(array).tobytes(), target)
        acc = {"bufferView": view, "componentType": comp, "count": int(array.shape[0]), "type": kind}
        if with_bounds:
            acc["min"] = array.min(0).tolist()
            acc["max"] = array.max(0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    attributes = {
        "POSITION": accessor(z_up_to_y_up(asset.vertices), "VEC3", ARRAY_BUFFER, with_bounds=True),
        "NORMAL": accessor(z_up_to_y_up(asset.normals), "VEC3", ARRAY_BUFFER),
        "TEXCOORD_0": accessor(asset.uvs.astype(np.float32), "VEC2", ARRAY_BUFFER),
    }
    indices = accessor(asset.faces.astype(np.uint32).reshape(-1), "SCALAR", ELEMENT_ARRAY_BUFFER)
    images = [
        {
            "bufferView": buffer.add(png_bytes(asset.base_color, png_compress_level)),
            "mimeType": "image/png",
            "name": "base_color",
        },
        {
            "bufferView": buffer.add(png_bytes(asset.metallic_roughness, png_compress_level)),
            "mimeType": "image/png",
            "name": "metallic_roughness",
        },
    ]
    material = {
        "name": asset.name,
        "pbrMetallicRoughness": {
            "baseColorTexture": {"index": 0},
            "metallicRoughnessTexture": {"index": 1},
            "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
            "metallicFactor": 1.0,
            "roughnessFactor": 1.0,
        },
        "alphaMode": asset.alpha_mode,
        "doubleSided": bool(asset.double_sided),
    }
    if asset.alpha_mode == "MASK":
        material["alphaCutoff"] = float(asset.alpha_cutoff)
    doc = {
        "asset": {"version": "2.0", "generator": "blender-trellis2 engine.finish"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": asset.name}],
        "meshes": [{"name": asset.name, "primitives": [{"attributes": attributes, "indices": indices, "material": 0}]}],
        "materials": [material],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "textures": [{"sampler": 0, "source": 0}, {"sampler": 0, "source": 1}],
        "images": images,
        "accessors": accessors,
        "bufferViews": buffer.views,
    }
    blob = buffer.blob()
    doc["buffers"] = [{"byteLength": len(blob)}]
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join(
        [
            struct.pack("<III", GLB_MAGIC, 2, total),
            struct.pack("<II", len(text), CHUNK_JSON),
            text,
            struct.pack("<II", len(blob), CHUNK_BIN),
            blob,
        ]
    )


def write_glb(asset, path, *, png_compress_level: int = 1) -> Path:
    """Write `asset` as a GLB at `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    data = build_glb(asset, png_compress_level=png_compress_level)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_glb(path) -> tuple[dict, bytes]:
    """(JSON document, binary chunk) of a GLB; for tests and tools."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"{path} is not a complete GLB 2.0 file")
    n, kind = struct.unpack_from("<II", data, 12)
    doc = json.loads(data[20 : 20 + n])
    m, _ = struct.unpack_from("<II", data, 20 + n)
    return doc, data[28 + n : 28 + n + m]
