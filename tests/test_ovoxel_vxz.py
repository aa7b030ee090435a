"""The .vxz container (spec 5.5): round trips of a converted mesh under every option, byte layouts
worked out by hand from the format (octree masks in Morton order, filters, header fields), a file laid
out like the official writer's, and the refusal of damaged files."""

from __future__ import annotations

import functools
import itertools
import json
import struct
import zlib

import numpy as np
import pytest

from engine import ovoxel
from engine.errors import EngineInputError
from engine.ovoxel import Material, OVoxel, TexturedMesh, read_vxz, write_vxz
from engine.ovoxel import vxz as vxz_module
from tests.ovoxel_shapes import torus

RES = 64
BOUND = 0.5 / 255 + 1e-6  # round to nearest uint8, plus float32 slack


@functools.cache
def torus_asset() -> OVoxel:
    v, f = torus(nu=96, nv=32)
    material = TexturedMesh(
        [Material(base_color_factor=(0.2, 0.4, 0.6, 1.0), metallic_factor=0.3, roughness_factor=0.7)],
        vertex_colors=np.abs(v) * 2,
    )
    return ovoxel.from_mesh(v, f, RES, material=material)


def split(data: bytes) -> tuple[dict, bytes]:
    start = struct.unpack(">I", data[4:8])[0]
    return json.loads(data[8:start]), data[start:]


def join(header: dict, blob: bytes, version: int = 0) -> bytes:
    text = json.dumps(header).encode()
    return b"VXZ" + bytes([version]) + struct.pack(">I", 8 + len(text)) + text + blob


def assert_round_trip(back: OVoxel, vox: OVoxel):
    np.testing.assert_array_equal(back.coords, vox.coords)
    np.testing.assert_array_equal(back.flags, vox.flags)
    assert back.coords.dtype == np.int32 and back.offsets.dtype == np.float32 and back.flags.dtype == bool
    assert np.abs(back.offsets - np.clip(vox.offsets, 0, 1)).max() <= BOUND
    assert np.abs(back.attrs - np.clip(vox.attrs, 0, 1)).max() <= BOUND
    assert back.layout == vox.layout and back.resolution == vox.resolution and back.aabb == vox.aabb


# --- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compression, filter, interleave",
    list(
        itertools.product(("none", "deflate", "lzma", "zstd"), ("none", "parent", "neighbor"), ("none", "as_is", "all"))
    ),
)
def test_round_trip_every_option(tmp_path, compression, filter, interleave):
    vox = torus_asset()
    path = tmp_path / "torus.vxz"
    write_vxz(vox, path, compression=compression, filter=filter, interleave=interleave)
    assert_round_trip(read_vxz(path), vox)
    header, blob = split(path.read_bytes())
    level = {"none": 0, "deflate": 9, "lzma": 6, "zstd": 22}[compression]
    assert (header["compression"], header["filter"], header["attr_interleave"]) == (compression, filter, interleave)
    assert header["compression_level"] == level and header["compressed_size"] == len(blob)
    assert header["attr"] == [["vertices", 3], ["intersected", 1], ["base_color", 3], ["metallic", 1],
                              ["roughness", 1], ["alpha", 1]]  # fmt: skip
    streams = {
        "none": ["vertices_0", "vertices_1", "vertices_2", "intersected_0", "base_color_0", "base_color_1",
                 "base_color_2", "metallic_0", "roughness_0", "alpha_0"],
        "as_is": ["vertices", "intersected", "base_color", "metallic", "roughness", "alpha"],
        "all": ["attr"],
    }[interleave]  # fmt: skip
    assert [list(c) for c in header["chunks"]] == [["idx", "svo", *streams, "ptr"]]


@pytest.mark.parametrize("filter", ["none", "parent", "neighbor"])
def test_many_chunks_round_trip(tmp_path, filter):
    """chunk_size 8 cuts the torus into dozens of chunks; each chunk filters on its own local grid."""
    vox = torus_asset()
    path = tmp_path / "chunks.vxz"
    write_vxz(vox, path, compression="deflate", filter=filter, chunk_size=8)
    header, _ = split(path.read_bytes())
    idx = [tuple(c["idx"]) for c in header["chunks"]]
    expected = sorted({tuple(c) for c in (vox.coords // 8).tolist()})
    assert idx == expected and len(idx) > 20, "chunks are listed in (x, y, z) order of their index"
    assert_round_trip(read_vxz(path), vox)


def test_save_load_dispatch_on_suffix_and_rewrite_is_byte_identical(tmp_path):
    vox = torus_asset()
    ovoxel.save(vox, tmp_path / "a.vxz", filter="parent")
    assert (tmp_path / "a.vxz").read_bytes()[:4] == b"VXZ\x00"
    back = ovoxel.load(tmp_path / "a.vxz")
    assert_round_trip(back, vox)
    ovoxel.save(back, tmp_path / "b.vxz", filter="parent")
    assert (tmp_path / "b.vxz").read_bytes() == (tmp_path / "a.vxz").read_bytes(), "quantisation is idempotent"
    ovoxel.save(vox, tmp_path / "a.npz")
    np.testing.assert_array_equal(ovoxel.load(tmp_path / "a.npz").offsets, vox.offsets)  # .npz stays exact
    with pytest.raises(EngineInputError, match=".vxz files only"):
        ovoxel.save(vox, tmp_path / "c.npz", filter="parent")


def test_quantisation_rounds_to_nearest(tmp_path):
    q = np.array([0, 7, 128, 254, 255])
    off = np.stack([(q + 0.49) / 255, (q - 0.49).clip(0) / 255, q / 255], 1).clip(0, 1).astype(np.float32)
    coords = np.stack([np.arange(5), np.zeros(5), np.zeros(5)], 1).astype(np.int32)
    vox = OVoxel(coords, off, np.zeros((5, 3), bool), 8)
    write_vxz(vox, tmp_path / "q.vxz", compression="none")
    header, blob = split((tmp_path / "q.vxz").read_bytes())
    a, b = header["chunks"][0]["vertices"]
    np.testing.assert_array_equal(np.frombuffer(blob[a : a + b], np.uint8).reshape(5, 3), np.stack([q, q, q], 1))
    assert read_vxz(tmp_path / "q.vxz").attrs is None


def test_empty_ovoxel_round_trips(tmp_path):
    empty = OVoxel(np.zeros((0, 3), np.int32), np.zeros((0, 3), np.float32), np.zeros((0, 3), bool), 16)
    write_vxz(empty, tmp_path / "e.vxz")
    back = read_vxz(tmp_path / "e.vxz")
    assert back.num_voxels == 0 and back.resolution == 16 and back.attrs is None


# --- byte layout, worked out by hand ------------------------------------------------------------------

# One chunk of 4^3 (octree depth 2). Morton code = spread(x)*4 + spread(y)*2 + spread(z):
#   (0,0,0) -> 0, (0,0,1) -> 1, (1,0,0) -> 4, (1,0,1) -> 5, (0,2,0) -> 16, (3,2,1) -> 36+16+1 = 53.
# Root digits (code >> 3): 0, 0, 0, 0, 2, 6 -> mask 0b01000101 = 0x45. Then, depth first:
#   node 0 holds digits 0, 1, 4, 5 -> 0x33; node 2 holds 0 -> 0x01; node 6 holds 53 & 7 = 5 -> 0x20.
MORTON_COORDS = [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 2, 0), (3, 2, 1)]
SVO = bytes([0x45, 0x33, 0x01, 0x20])
METALLIC = [10, 200, 5, 250, 7, 99]  # per voxel, Morton order
FLAGS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0), (1, 0, 1)]
PACKED = [1, 2, 4, 7, 0, 5]
# parent filter: row 0 = first voxel; the root's children (first voxels 10, 7, 99) give rows 1-2;
# node 0's children (10, 200, 5, 250) give rows 3-5; single-child nodes give none. uint8 wraps.
PARENT = [10, (7 - 10) % 256, 99 - 7, 200 - 10, (5 - 200) % 256, 250 - 5]
# neighbour filter: (0,0,1) - z (0,0,0); (1,0,0) - x (0,0,0); (1,0,1) has x, z and xz neighbours
# and the xz one wins; (0,2,0) and (3,2,1) have none.
NEIGHBOR = [10, 200 - 10, (5 - 10) % 256, 250 - 10, 7, 99]


def hand_asset() -> OVoxel:
    order = sorted(range(6), key=lambda i: MORTON_COORDS[i])  # OVoxel rows are (x, y, z) sorted
    k = np.array(order)
    offsets = np.stack([k, 2 * k, 255 - k], 1).astype(np.float32) / 255
    attrs = np.array(METALLIC, np.float32)[k, None] / 255
    return OVoxel(
        coords=np.array(MORTON_COORDS, np.int32)[k],
        offsets=offsets,
        flags=np.array(FLAGS, bool)[k],
        resolution=4,
        attrs=attrs,
        layout={"metallic": slice(0, 1)},
    )


def test_hand_computed_layout(tmp_path):
    path = tmp_path / "hand.vxz"
    write_vxz(hand_asset(), path, compression="none", chunk_size=4)
    data = path.read_bytes()
    header, blob = split(data)
    assert data[:4] == b"VXZ\x00" and struct.unpack(">I", data[4:8])[0] == 8 + len(json.dumps(header))
    k = np.arange(6)
    vertices = np.stack([k, 2 * k, 255 - k], 1).astype(np.uint8).tobytes()
    assert blob == SVO + vertices + bytes(PACKED) + bytes(METALLIC)
    assert header == {
        "num_voxel": 6,
        "chunk_size": 4,
        "filter": "none",
        "compression": "none",
        "compression_level": 0,
        "raw_size": 6 * 3 * 4 + 6 * 5,
        "compressed_size": len(blob),
        "compress_ratio": (6 * 12 + 30) / len(blob),
        "attr_interleave": "as_is",
        "attr": [["vertices", 3], ["intersected", 1], ["metallic", 1]],
        "chunks": [{"idx": [0, 0, 0], "svo": [0, 4], "vertices": [4, 18], "intersected": [22, 6],
                    "metallic": [28, 6], "ptr": [0, 34]}],
        "ovoxel": {"resolution": 4, "aabb": [[-0.5] * 3, [0.5] * 3], "dropped_faces": 0},
    }  # fmt: skip
    back = read_vxz(path)
    np.testing.assert_array_equal(back.coords, hand_asset().coords)
    np.testing.assert_array_equal(back.attrs, hand_asset().attrs)


@pytest.mark.parametrize("filter, expected", [("parent", PARENT), ("neighbor", NEIGHBOR)])
def test_hand_computed_filters(tmp_path, filter, expected):
    path = tmp_path / "hand.vxz"
    write_vxz(hand_asset(), path, compression="none", chunk_size=4, filter=filter)
    header, blob = split(path.read_bytes())
    a, b = header["chunks"][0]["metallic"]
    assert list(blob[a : a + b]) == expected
    np.testing.assert_array_equal(read_vxz(path).attrs, hand_asset().attrs)


def test_hand_computed_depth_three_is_depth_first(tmp_path):
    """Chunk 8 (depth 3): Morton digits (0,0,0) (0,0,1) (0,1,0) (1,0,0) (1,2,0) = voxels (0,0,0),
    (0,0,1), (0,0,2), (0,0,4), (0,2,4). Nodes depth first: root {0,1} = 0x03, A {0,1} = 0x03,
    A0 {0,1} = 0x03, A1 {0} = 0x01, B {0,2} = 0x05, B0 = 0x01, B2 = 0x01 (breadth first would differ).
    Parent rows follow the same order: root (B - A), A (A1 - A0), A0 (v1 - v0), B (B2 - B0)."""
    coords = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 4], [0, 2, 4]], np.int32)
    a = np.array([3, 1, 250, 40, 20])
    vox = OVoxel(coords, np.zeros((5, 3), np.float32), np.zeros((5, 3), bool), 8, attrs=a[:, None] / 255.0,
                 layout={"alpha": slice(0, 1)})  # fmt: skip
    path = tmp_path / "d3.vxz"
    write_vxz(vox, path, compression="none", chunk_size=8, filter="parent")
    header, blob = split(path.read_bytes())
    assert blob[:7] == bytes([0x03, 0x03, 0x03, 0x01, 0x05, 0x01, 0x01])
    lo, n = header["chunks"][0]["alpha"]
    assert list(blob[lo : lo + n]) == [3, 40 - 3, 250 - 3, (1 - 3) % 256, (20 - 40) % 256]
    np.testing.assert_array_equal(np.rint(read_vxz(path).attrs[:, 0] * 255), a)


def test_chunks_hold_local_coords(tmp_path):
    """Chunk size 2: (3,0,0), (0,0,0), (0,3,0) fall in chunks (1,0,0), (0,0,0), (0,1,0); each octree
    is one root byte for the local coords (1,0,0) -> bit 4, (0,0,0) -> bit 0, (0,1,0) -> bit 2."""
    coords = np.array([[0, 0, 0], [0, 3, 0], [3, 0, 0]], np.int32)
    vox = OVoxel(coords, np.full((3, 3), 0.5, np.float32), np.zeros((3, 3), bool), 4)
    write_vxz(vox, tmp_path / "c.vxz", compression="none", chunk_size=2)
    header, blob = split((tmp_path / "c.vxz").read_bytes())
    assert [c["idx"] for c in header["chunks"]] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert [blob[c["ptr"][0]] for c in header["chunks"]] == [0x01, 0x04, 0x10]
    np.testing.assert_array_equal(read_vxz(tmp_path / "c.vxz").coords, coords)


def official_style_file() -> bytes:
    """What the o_voxel tools write: no resolution, 'dual_vertices', extra attributes, raw deflate,
    attr entries as [name, channels]; chunk order does not matter to a reader."""

    def deflate(data: bytes) -> bytes:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        return z.compress(data) + z.flush()

    chunks, blob = [], b""
    for idx, svo, dv, inter, emissive in [
        ([1, 0, 0], bytes([0x10]), [9, 9, 9], [4], [1, 2, 3]),  # local (1,0,0) -> voxel (3,0,0)
        ([0, 0, 0], bytes([0x81]), [0, 0, 0, 255, 255, 255], [1, 6], [4, 5, 6, 7, 8, 9]),  # (0,0,0), (1,1,1)
    ]:
        parts = {"svo": svo, "dual_vertices": bytes(dv), "intersected": bytes(inter), "emissive": bytes(emissive)}
        info, body = {"idx": idx}, b""
        for name, raw in parts.items():
            packed = deflate(raw)
            info[name] = [len(body), len(packed)]
            body += packed
        info["ptr"] = [len(blob), len(body)]
        chunks.append(info)
        blob += body
    header = {"num_voxel": 3, "chunk_size": 2, "filter": "none", "compression": "deflate",
              "compression_level": 9, "raw_size": 57, "compressed_size": len(blob), "compress_ratio": 1.0,
              "attr_interleave": "as_is", "attr": [["dual_vertices", 3], ["intersected", 1], ["emissive", 3]],
              "chunks": chunks}  # fmt: skip
    return join(header, blob)


def test_reads_official_style_file(tmp_path):
    path = tmp_path / "official.vxz"
    path.write_bytes(official_style_file())
    with pytest.raises(EngineInputError, match="pass resolution="):
        read_vxz(path)
    vox = ovoxel.load(path, resolution=512)
    np.testing.assert_array_equal(vox.coords, [[0, 0, 0], [1, 1, 1], [3, 0, 0]])
    np.testing.assert_array_equal(vox.offsets * 255, [[0, 0, 0], [255, 255, 255], [9, 9, 9]])
    np.testing.assert_array_equal(vox.flags, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(np.rint(vox.attrs * 255), [[4, 5, 6], [7, 8, 9], [1, 2, 3]])
    assert vox.layout == {"emissive": slice(0, 3)} and vox.aabb == ovoxel.asset.UNIT_BOX


# --- refusals -----------------------------------------------------------------------------------------


def _rewrite(data: bytes, edit) -> bytes:
    header, blob = split(data)
    blob = edit(header, blob)
    return join(header, blob)


def _float_metallic(header, blob):
    """Replace the metallic stream by float32 values (4 bytes a voxel)."""
    chunk = header["chunks"][0]
    a, b = chunk["metallic"]
    wide = np.frombuffer(blob[a : a + b], np.uint8).astype(np.float32).tobytes()
    chunk["metallic"] = [a, len(wide)]
    chunk["ptr"][1] += len(wide) - b
    return blob[:a] + wide + blob[a + b :]


def _edit(key, value):
    """Set one header field."""

    def edit(header, blob):
        header[key] = value
        return blob

    return edit


CORRUPTIONS = {
    "magic": (lambda d: b"PK\x03\x04" + d[4:], "not a .vxz file"),
    "version": (lambda d: d[:3] + b"\x01" + d[4:], "version 1; this reader knows version 0"),
    "truncated": (lambda d: d[:-10], "points outside its data"),
    "short": (lambda d: d[:6], "shorter than the 8-byte preamble"),
    "json": (lambda d: d[:8] + b"X" + d[9:], "not JSON"),
    "num_voxel": (lambda d: _rewrite(d, _edit("num_voxel", 7)), "num_voxel 7"),
    "channels": (lambda d: _rewrite(d, _edit("attr", [["vertices", 3], ["intersected", 1], ["metallic", 2]])), "uint8"),
    "float attrs": (lambda d: _rewrite(d, _float_metallic), "24 bytes for 6 voxels x 1 channels"),
    "filter": (lambda d: _rewrite(d, _edit("filter", "median")), "unknown filter 'median'"),
    "chunk_size": (lambda d: _rewrite(d, _edit("chunk_size", 3)), "not a power of two"),
    "empty node": (lambda d: _rewrite(d, lambda header, blob: b"\x00" + blob[1:]), "without children"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damaged_files_are_refused(tmp_path, name):
    good = tmp_path / "good.vxz"
    write_vxz(hand_asset(), good, compression="none", chunk_size=4)
    corrupt, message = CORRUPTIONS[name]
    bad = tmp_path / "bad.vxz"
    bad.write_bytes(corrupt(good.read_bytes()))
    with pytest.raises(EngineInputError, match=message):
        read_vxz(bad)


def test_truncated_compressed_stream_is_refused(tmp_path):
    path = tmp_path / "t.vxz"
    write_vxz(hand_asset(), path, compression="lzma", chunk_size=4)

    def shorten(header, blob):
        a, b = header["chunks"][0]["metallic"]
        header["chunks"][0]["metallic"] = [a, b - 3]
        return blob

    path.write_bytes(_rewrite(path.read_bytes(), shorten))
    with pytest.raises(EngineInputError, match="lzma stream"):
        read_vxz(path)


def test_write_refusals(tmp_path):
    vox = hand_asset()
    with pytest.raises(EngineInputError, match="compression must be one of"):
        write_vxz(vox, tmp_path / "x.vxz", compression="brotli")
    with pytest.raises(EngineInputError, match="chunk_size must be a power of two"):
        write_vxz(vox, tmp_path / "x.vxz", chunk_size=100)
    with pytest.raises(EngineInputError, match="lzma level"):
        write_vxz(vox, tmp_path / "x.vxz", level=12)
    outside = OVoxel(vox.coords, vox.offsets * 1.5 - 0.25, vox.flags, 4)
    with pytest.raises(EngineInputError, match="offsets in \\[0, 1\\]"):
        write_vxz(outside, tmp_path / "x.vxz")
    unnamed = OVoxel(vox.coords, vox.offsets, vox.flags, 4, attrs=np.zeros((6, 2), np.float32), layout={})
    with pytest.raises(EngineInputError, match="must name every one of the 2 attribute columns"):
        write_vxz(unnamed, tmp_path / "x.vxz")
    assert not list(tmp_path.iterdir())


def test_resolution_on_read_must_agree_with_the_file(tmp_path):
    write_vxz(hand_asset(), tmp_path / "h.vxz")
    assert read_vxz(tmp_path / "h.vxz", resolution=4).resolution == 4
    with pytest.raises(EngineInputError, match="records resolution 4 but 8 was passed"):
        read_vxz(tmp_path / "h.vxz", resolution=8)


def test_missing_zstd_module_says_what_to_install(tmp_path, monkeypatch):
    real = vxz_module.importlib.import_module

    def no_zstd(name):
        if name in ("compression.zstd", "zstandard"):
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(vxz_module.importlib, "import_module", no_zstd)
    with pytest.raises(EngineInputError, match="pip install zstandard"):
        write_vxz(hand_asset(), tmp_path / "z.vxz", compression="zstd")
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.vxz"
    write_vxz(hand_asset(), path)
    before = path.read_bytes()

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vxz_module.os, "replace", refuse)
    with pytest.raises(EngineInputError, match="No space left"):
        write_vxz(torus_asset(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keep.vxz"]
