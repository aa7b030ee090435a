"""O-Voxel assets in the official `.vxz` container of the o_voxel tools (spec 5.5).

Layout: b"VXZ", a version byte (0), a big-endian uint32 offset of the binary section, a JSON header,
then one binary block per chunk of `chunk_size`^3 voxels. A chunk holds its voxels' local coords as a
sparse voxel octree (one child-mask byte per node, depth-first, child i = Morton digit i, bit i of the
byte) followed by uint8 attribute streams, each compressed on its own. Inside a chunk, rows follow the
Morton order `spread(x)*4 + spread(y)*2 + spread(z)`; chunks follow their (x, y, z) chunk index.

Mapping to `OVoxel` (as the official data toolkit stores geometry): `vertices` = offsets quantised to
uint8 (3 channels), `intersected` = flags packed as x + 2y + 4z (1 channel), then every named attribute
of `layout` (base_color, metallic, roughness, alpha, ...) quantised to uint8. Quantisation rounds to
nearest, so a round trip moves offsets and attributes by at most 0.5/255 (the official tools truncate,
an error below 1/255, and truncation is not idempotent under float round-off). Coords and flags are exact.
Offsets must lie in [0, 1] (1e-3 slack is clamped); attributes are clamped to [0, 1] like the official
converter.

The official header does not record the grid resolution or the box. `write_vxz` adds them under an
extra header key "ovoxel" (the official reader ignores unknown keys); for files without it, pass
`resolution=` (and `aabb=` if not the unit box) to `read_vxz`.
"""

from __future__ import annotations

import importlib
import json
import lzma
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from engine.errors import EngineInputError
from engine.ovoxel.asset import UNIT_BOX, OVoxel, check_resolution

MAGIC = b"VXZ"
VERSION = 0
COMPRESSIONS = ("none", "deflate", "lzma", "zstd")
FILTERS = ("none", "parent", "neighbor")
INTERLEAVES = ("none", "as_is", "all")
# lzma 6 rather than the official 9: presets 6-9 differ only in dictionary size (8 vs 64 MiB), which
# changes nothing for streams under 8 MiB but costs ~7x the time and ~600 MB per stream at 9
DEFAULT_LEVEL = {"none": 0, "deflate": 9, "lzma": 6, "zstd": 22}
LEVEL_RANGE = {"none": range(0, 1), "deflate": range(0, 10), "lzma": range(0, 10), "zstd": range(1, 23)}
EXTENSION_KEY = "ovoxel"  # our own header entry: resolution, aabb, dropped_faces
OFFSET_KEYS = ("vertices", "dual_vertices")  # data toolkit / o-voxel examples spell it either way
FLAGS_KEY = "intersected"
RESERVED = {"idx", "ptr", "svo", "attr", FLAGS_KEY, *OFFSET_KEYS}
OFFSET_SLACK = 1e-3
MAX_CHUNK = 1024  # 30-bit Morton codes: 10 bits per axis
# neighbour filter: the first present voxel in this list is the reference (the official priority)
NEIGHBOURS = ((-1, -1, -1), (0, -1, -1), (-1, 0, -1), (-1, -1, 0), (0, 0, -1), (0, -1, 0), (-1, 0, 0))
SET_BITS = tuple(tuple(b for b in range(8) if m >> b & 1) for m in range(256))


class _Corrupt(ValueError):
    """Internal: the bytes contradict the format; read_vxz turns it into an EngineInputError."""


# --- Morton codes and the sparse voxel octree ---------------------------------------------------------


def morton_encode(coords: np.ndarray) -> np.ndarray:
    """int64 [N] codes of int [N, 3] coords in [0, 1024): x bits at 3b+2, y at 3b+1, z at 3b."""
    c = np.asarray(coords, dtype=np.int64)
    code = np.zeros(c.shape[0], dtype=np.int64)
    for b in range(10):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            code |= ((c[:, axis] >> b) & 1) << (3 * b + shift)
    return code


def morton_decode(codes: np.ndarray) -> np.ndarray:
    """int32 [N, 3] coords of int [N] codes (inverse of morton_encode)."""
    codes = np.asarray(codes, dtype=np.int64)
    out = np.zeros((codes.shape[0], 3), dtype=np.int64)
    for b in range(10):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            out[:, axis] |= ((codes >> (3 * b + shift)) & 1) << b
    return out.astype(np.int32)


def svo_encode(codes: np.ndarray, depth: int) -> bytes:
    """Octree bytes of strictly increasing Morton codes < 8**depth: nodes in depth-first pre-order,
    each node one byte with bit i set when child i (the next 3-bit Morton digit) is occupied."""
    masks, firsts, levels = [], [], []
    for level in range(depth):
        node = codes >> (3 * (depth - level))  # node key at this level, per voxel
        digit = (codes >> (3 * (depth - level - 1))) & 7
        start = np.flatnonzero(np.r_[True, node[1:] != node[:-1]])  # first voxel of each node
        masks.append(np.bitwise_or.reduceat(np.left_shift(1, digit).astype(np.uint8), start))
        firsts.append(start)
        levels.append(np.full(start.size, level))
    # pre-order: a node is emitted when its first voxel is reached, ancestors before descendants
    order = np.lexsort((np.concatenate(levels), np.concatenate(firsts)))
    return np.concatenate(masks)[order].tobytes()


def svo_decode(svo: bytes, depth: int) -> np.ndarray:
    """Strictly increasing int64 Morton codes stored in octree bytes (inverse of svo_encode)."""
    if not svo:
        raise _Corrupt("an empty octree")
    if b"\x00" in svo:
        raise _Corrupt("an octree node without children")
    prefixes, masks = [], []
    stack = [(0, 0)]  # (level, key of the node) still to read, next on top
    pos, last = 0, depth - 1
    while stack:
        level, key = stack.pop()
        if pos >= len(svo):
            raise _Corrupt("an octree that ends early")
        node = svo[pos]
        pos += 1
        if level == last:
            prefixes.append(key)
            masks.append(node)
        else:
            stack.extend((level + 1, key << 3 | b) for b in reversed(SET_BITS[node]))
    if pos != len(svo):
        raise _Corrupt(f"{len(svo) - pos} bytes after the end of the octree")
    bits = np.unpackbits(np.array(masks, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool)
    return ((np.array(prefixes, dtype=np.int64)[:, None] << 3) + np.arange(8))[bits]  # [N], row-major = sorted


# --- attribute filters (deltas that compress better; uint8 arithmetic wraps mod 256) -----------------


def _octree_links(codes: np.ndarray, depth: int) -> list[tuple[np.ndarray, ...]]:
    """Per octree level, for the children of that level's nodes: first voxel of each child [K], the
    voxel -> child index [N], the first child of each child's parent [K], and the parent-filter delta
    row of each child (-1 for a first child). Rows: 0 holds the first voxel; each node, in pre-order,
    owns (children - 1) consecutive rows, row k = child k+1 minus child k (a node's value is its first
    voxel's)."""
    links, firsts, levels, counts = [], [], [], []
    for level in range(depth):
        parent = codes >> (3 * (depth - level))
        child = codes >> (3 * (depth - level - 1))
        new_child = np.r_[True, child[1:] != child[:-1]]
        cfirst = np.flatnonzero(new_child)  # [K]
        pkey = parent[cfirst]
        new_parent = np.r_[True, pkey[1:] != pkey[:-1]]
        gstart = np.flatnonzero(new_parent)  # [P] index into cfirst of each parent's first child
        group = np.cumsum(new_parent) - 1  # [K] parent of each child
        links.append((cfirst, np.cumsum(new_child) - 1, gstart[group], group))
        firsts.append(cfirst[gstart])
        levels.append(np.full(gstart.size, level))
        counts.append(np.diff(np.r_[gstart, cfirst.size]))
    count = np.concatenate(counts)
    order = np.lexsort((np.concatenate(levels), np.concatenate(firsts)))
    base = np.empty_like(count)
    base[order] = 1 + np.cumsum(count[order] - 1) - (count[order] - 1)
    out, at = [], 0
    for (cfirst, of_voxel, sibling0, group), n in zip(links, counts, strict=True):
        rank = np.arange(cfirst.size) - sibling0
        rows = np.where(rank > 0, base[at + group] + rank - 1, -1)
        out.append((cfirst, of_voxel, sibling0, rows))
        at += n.size
    return out


def parent_filter(codes: np.ndarray, depth: int, attr: np.ndarray) -> np.ndarray:
    """uint8 [N, C] deltas of uint8 [N, C] attributes in Morton order, against earlier siblings."""
    delta = np.empty_like(attr)
    delta[:1] = attr[:1]
    for cfirst, _, _, rows in _octree_links(codes, depth):
        k = np.flatnonzero(rows >= 0)
        delta[rows[k]] = attr[cfirst[k]] - attr[cfirst[k - 1]]
    return delta


def parent_unfilter(codes: np.ndarray, depth: int, delta: np.ndarray) -> np.ndarray:
    """Inverse of parent_filter: a voxel is the first voxel plus, on every level, its ancestor's
    running sum of sibling deltas."""
    value = np.broadcast_to(delta[:1].astype(np.int64), delta.shape).copy()
    for cfirst, of_voxel, sibling0, rows in _octree_links(codes, depth):
        step = np.zeros((cfirst.size, delta.shape[1]), dtype=np.int64)
        k = np.flatnonzero(rows >= 0)
        step[k] = delta[rows[k]]
        run = np.cumsum(step, axis=0)
        value += (run - run[sibling0])[of_voxel]  # first children carry a zero step
    return (value & 255).astype(np.uint8)


def _neighbour_links(local: np.ndarray, chunk_size: int) -> np.ndarray:
    """int64 [N] row of each voxel's reference neighbour in the chunk (-1: none)."""
    c = local.astype(np.int64)
    key = (c[:, 2] * chunk_size + c[:, 1]) * chunk_size + c[:, 0]
    order = np.argsort(key)
    sorted_key = key[order]
    ref = np.full(key.size, -1, dtype=np.int64)
    for d in NEIGHBOURS:
        n = c + d
        inside = (n >= 0).all(axis=1)
        nkey = (n[:, 2] * chunk_size + n[:, 1]) * chunk_size + n[:, 0]
        pos = np.searchsorted(sorted_key, nkey).clip(max=key.size - 1)
        hit = inside & (sorted_key[pos] == nkey) & (ref < 0)
        ref[hit] = order[pos[hit]]
    return ref


def neighbor_filter(local: np.ndarray, chunk_size: int, attr: np.ndarray) -> np.ndarray:
    """uint8 [N, C] deltas against the first present of the lower neighbours in NEIGHBOURS."""
    ref = _neighbour_links(local, chunk_size)
    delta = attr.copy()
    has = ref >= 0
    delta[has] = attr[has] - attr[ref[has]]
    return delta


def neighbor_unfilter(local: np.ndarray, chunk_size: int, delta: np.ndarray) -> np.ndarray:
    """Inverse of neighbor_filter: sums deltas along each reference chain by pointer jumping
    (references always point to a lower linear index, so chains end)."""
    ref = _neighbour_links(local, chunk_size)
    total = delta.astype(np.int64)
    while (live := ref >= 0).any():
        total[live] += total[ref[live]]
        ref[live] = ref[ref[live]]
    return (total & 255).astype(np.uint8)


# --- compression ------------------------------------------------------------------------------------


def _zstd():
    """(compress(data, level), decompress(data)) from the standard library (3.14+) or `zstandard`."""
    try:
        std = importlib.import_module("compression.zstd")
        return (lambda data, level: std.compress(data, level=level)), std.decompress
    except ImportError:
        pass
    try:
        zstandard = importlib.import_module("zstandard")
    except ImportError:
        raise EngineInputError(
            "zstd compression needs the 'zstandard' package (Python < 3.14): pip install zstandard; "
            "or use compression='lzma' or 'deflate'"
        ) from None

    def compress(data, level):
        return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)

    def decompress(data):
        return zstandard.ZstdDecompressor().decompress(data)

    return compress, decompress


def _lzma_filters(level: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": level}]


def _compress(data: bytes, compression: str, level: int) -> bytes:
    if compression == "deflate":
        packer = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate, no zlib header
        return packer.compress(data) + packer.flush()
    if compression == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(level))
    if compression == "zstd":
        return _zstd()[0](data, level)
    return data


def _decompress(data: bytes, compression: str, level: int) -> bytes:
    try:
        if compression == "deflate":
            unpacker = zlib.decompressobj(-15)
            out = unpacker.decompress(data) + unpacker.flush()
            complete = unpacker.eof and not unpacker.unused_data
        elif compression == "lzma":
            unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(level))
            out = unpacker.decompress(data)
            complete = unpacker.eof and not unpacker.unused_data
        elif compression == "zstd":
            out, complete = _zstd()[1](data), True
        else:
            out, complete = data, True
    except (zlib.error, lzma.LZMAError) as exc:
        raise _Corrupt(f"a {compression} stream that does not decompress ({exc})") from exc
    except EngineInputError:
        raise
    except Exception as exc:  # zstd backends raise their own error classes
        raise _Corrupt(f"a {compression} stream that does not decompress ({exc})") from exc
    if not complete:
        raise _Corrupt(f"a truncated {compression} stream")
    return out


# --- writing ----------------------------------------------------------------------------------------


def _quantise(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def _columns(ovoxel: OVoxel) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 [N, C]) in file order: geometry, then the named attributes by column."""
    n = ovoxel.num_voxels
    off = np.asarray(ovoxel.offsets, dtype=np.float32).reshape(n, 3)
    if not np.isfinite(off).all() or off.min(initial=0) < -OFFSET_SLACK or off.max(initial=0) > 1 + OFFSET_SLACK:
        raise EngineInputError(
            f".vxz stores dual-vertex offsets in [0, 1] but this O-Voxel has offsets in "
            f"[{np.nanmin(off)}, {np.nanmax(off)}] (or NaN); save it as .npz to keep them"
        )
    flags = np.asarray(ovoxel.flags, dtype=bool).reshape(n, 3)
    packed = (flags.astype(np.uint8) << np.arange(3, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)[:, None]
    columns = [(OFFSET_KEYS[0], _quantise(off)), (FLAGS_KEY, packed)]
    if ovoxel.attrs is None:
        return columns
    attrs = np.asarray(ovoxel.attrs)
    if attrs.ndim != 2 or attrs.shape[0] != n or not np.issubdtype(attrs.dtype, np.floating):
        raise EngineInputError(f"attrs must be float [N, C] with N = {n}, got {attrs.dtype} {list(attrs.shape)}")
    if not np.isfinite(attrs).all():
        raise EngineInputError("attrs hold NaN or infinite values; .vxz stores values in [0, 1]")
    spans = sorted((s.start or 0, s.stop, name) for name, s in ovoxel.layout.items())
    stops = [0] + [stop for _, stop, _ in spans]
    if [start for start, _, _ in spans] != stops[:-1] or stops[-1] != attrs.shape[1]:
        raise EngineInputError(
            f"layout {ovoxel.layout} must name every one of the {attrs.shape[1]} attribute columns exactly once "
            "(consecutive slices) to be written as .vxz"
        )
    for start, stop, name in spans:
        if not isinstance(name, str) or not name or name in RESERVED:
            raise EngineInputError(f"attribute name {name!r} cannot be stored in .vxz (reserved: {sorted(RESERVED)})")
        columns.append((name, _quantise(attrs[:, start:stop])))
    return columns


def _streams(columns: list[tuple[str, int]], interleave: str) -> list[tuple[str, int, int]]:
    """(stream name, first channel, channels) of each attribute stream of a chunk."""
    out, ch = [], 0
    for name, chs in columns:
        if interleave == "none":
            out += [(f"{name}_{i}", ch + i, 1) for i in range(chs)]
        elif interleave == "as_is":
            out.append((name, ch, chs))
        ch += chs
    if interleave == "all":
        out.append(("attr", 0, ch))
    names = [name for name, _, _ in out]
    if len(set(names)) != len(names) or {"idx", "ptr", "svo"} & set(names):
        raise EngineInputError(f"attribute streams {names} collide; rename the attributes")
    return out


def _option(value, allowed, what):
    if value not in allowed:
        raise EngineInputError(f"{what} must be one of {list(allowed)}, got {value!r}")
    return value


def _chunk_depth(chunk_size) -> int:
    c = chunk_size if isinstance(chunk_size, (int, np.integer)) else -1
    if c < 2 or c > MAX_CHUNK or c & (c - 1):
        raise EngineInputError(f"chunk_size must be a power of two between 2 and {MAX_CHUNK}, got {chunk_size!r}")
    return int(c).bit_length() - 1


def write_vxz(
    ovoxel: OVoxel,
    path,
    *,
    compression: str = "lzma",
    level: int | None = None,
    filter: str = "none",
    chunk_size: int = 256,
    interleave: str = "as_is",
) -> None:
    """Write `ovoxel` as a .vxz file the official o_voxel reader accepts (atomically: temp file, rename).

    compression: none | deflate | lzma | zstd (needs `zstandard` before Python 3.14); level: the codec's
    level (default 9 for deflate, 6 for lzma, 22 for zstd); filter: none | parent | neighbor (attribute
    deltas); interleave: none (a stream per channel) | as_is (per attribute) | all (one stream)."""
    _option(compression, COMPRESSIONS, "compression")
    _option(filter, FILTERS, "filter")
    _option(interleave, INTERLEAVES, "interleave")
    depth = _chunk_depth(chunk_size)
    level = DEFAULT_LEVEL[compression] if level is None else level
    if compression == "none":
        level = 0
    if not isinstance(level, (int, np.integer)) or level not in LEVEL_RANGE[compression]:
        raise EngineInputError(f"{compression} level must be in {LEVEL_RANGE[compression]}, got {level!r}")
    if compression == "zstd":
        _zstd()  # fail before any work when no zstd module is installed
    resolution = check_resolution(ovoxel.resolution)
    coords = np.asarray(ovoxel.coords).reshape(-1, 3).astype(np.int64)
    n = coords.shape[0]
    if n and (coords.min() < 0 or coords.max() >= resolution):
        raise EngineInputError(f"voxel coords must lie in [0, {resolution}) for resolution {resolution}")
    columns = _columns(ovoxel)
    table = np.concatenate([c for _, c in columns], axis=1)  # uint8 [N, C_total]
    streams = _streams([(name, c.shape[1]) for name, c in columns], interleave)

    chunk = coords // chunk_size
    local = coords - chunk * chunk_size
    span = int(resolution // chunk_size) + 1
    chunk_key = (chunk[:, 0] * span + chunk[:, 1]) * span + chunk[:, 2]  # lexicographic chunk order
    code = morton_encode(local)
    order = np.lexsort((code, chunk_key))
    bounds = np.flatnonzero(np.r_[True, chunk_key[order][1:] != chunk_key[order][:-1], True]) if n else [0]

    chunks, blob = [], bytearray()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[a:b]
        attr = table[rows]
        svo = svo_encode(code[rows], depth)
        if filter == "parent":
            attr = parent_filter(code[rows], depth, attr)
        elif filter == "neighbor":
            attr = neighbor_filter(local[rows], chunk_size, attr)
        info = {"idx": chunk[rows[0]].tolist()}
        start = len(blob)
        for name, payload in [("svo", svo)] + [(s, attr[:, c : c + k].tobytes()) for s, c, k in streams]:
            packed = _compress(payload, compression, level)
            info[name] = [len(blob) - start, len(packed)]
            blob += packed
        info["ptr"] = [start, len(blob) - start]
        chunks.append(info)

    raw_size = n * 3 * 4 + table.size
    header = {
        "num_voxel": n,
        "chunk_size": int(chunk_size),
        "filter": filter,
        "compression": compression,
        "compression_level": int(level),
        "raw_size": raw_size,
        "compressed_size": len(blob),
        "compress_ratio": raw_size / len(blob) if blob else 0.0,
        "attr_interleave": interleave,
        "attr": [[name, int(c.shape[1])] for name, c in columns],
        "chunks": chunks,
        EXTENSION_KEY: {
            "resolution": resolution,
            "aabb": [[float(x) for x in row] for row in ovoxel.aabb],
            "dropped_faces": int(ovoxel.dropped_faces),
        },
    }
    text = json.dumps(header).encode()
    _write_atomic(Path(path), [MAGIC, bytes([VERSION]), struct.pack(">I", 8 + len(text)), text, bytes(blob)])


def _write_atomic(path: Path, parts: list[bytes]) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EngineInputError(f"cannot write {path} ({exc}); check the folder exists and is writable") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise EngineInputError(f"cannot write {path} ({exc}); check the disk space and permissions") from exc
        raise


# --- reading ----------------------------------------------------------------------------------------


def _span(entry, size: int, what: str) -> tuple[int, int]:
    ok = isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, int) and v >= 0 for v in entry)
    if not ok or entry[0] + entry[1] > size:
        raise _Corrupt(f"{what} points outside its data ({entry!r}, {size} bytes available)")
    return entry[0], entry[0] + entry[1]


def _parse_header(data: bytes) -> tuple[dict, bytes]:
    if len(data) < 8:
        raise _Corrupt("a file shorter than the 8-byte preamble")
    start = struct.unpack(">I", data[4:8])[0]
    if start < 8 or start > len(data):
        raise _Corrupt(f"a header that claims {start} bytes but the file has {len(data)}")
    try:
        header = json.loads(data[8:start].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Corrupt(f"a header that is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _Corrupt("a header that is not a JSON object")
    for key in ("num_voxel", "chunk_size", "filter", "compression", "attr_interleave", "attr", "chunks"):
        if key not in header:
            raise _Corrupt(f"a header without {key!r}")
    checks = {"filter": FILTERS, "compression": COMPRESSIONS, "attr_interleave": INTERLEAVES}
    for key, allowed in checks.items():
        if header[key] not in allowed:
            raise _Corrupt(f"an unknown {key} {header[key]!r} (known: {list(allowed)})")
    if not isinstance(header["num_voxel"], int) or header["num_voxel"] < 0:
        raise _Corrupt(f"a bad num_voxel {header['num_voxel']!r}")
    if not isinstance(header["chunks"], list):
        raise _Corrupt("a chunk list that is not a list")
    level = header.get("compression_level")
    level = DEFAULT_LEVEL[header["compression"]] if level is None else level
    if header["compression"] == "lzma" and (not isinstance(level, int) or level not in LEVEL_RANGE["lzma"]):
        raise _Corrupt(f"an lzma level {level!r} outside 0..9")
    header["compression_level"] = level
    columns = []
    for entry in header["attr"] if isinstance(header["attr"], list) else [None]:
        if isinstance(entry, dict):  # the layout the official docstring describes
            entry = [entry.get("name"), entry.get("chs")]
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise _Corrupt(f"an attribute entry {entry!r} that is not [name, channels]")
        if not isinstance(entry[1], int) or entry[1] < 1:
            raise _Corrupt(f"attribute {entry[0]!r} with {entry[1]!r} channels")
        columns.append((entry[0], entry[1]))
    header["attr"] = columns
    return header, data[start:]


def _read_chunk(info, blob: bytes, header: dict, depth: int, streams) -> tuple[np.ndarray, np.ndarray]:
    """Global int64 coords [n, 3] and uint8 attributes [n, C] of one chunk, in Morton order."""
    if not isinstance(info, dict):
        raise _Corrupt("a chunk entry that is not an object")
    a, b = _span(info.get("ptr"), len(blob), "a chunk")
    data = blob[a:b]
    idx = info.get("idx")
    if not (isinstance(idx, list) and len(idx) == 3 and all(isinstance(v, int) and v >= 0 for v in idx)):
        raise _Corrupt(f"a chunk index {idx!r} that is not three non-negative ints")

    def stream(name):
        if name not in info:
            raise _Corrupt(f"chunk {idx} without its {name!r} stream")
        lo, hi = _span(info[name], len(data), f"stream {name!r} of chunk {idx}")
        return _decompress(data[lo:hi], header["compression"], header["compression_level"])

    chunk_size = header["chunk_size"]
    codes = svo_decode(stream("svo"), depth)
    n = codes.size
    width = sum(k for _, _, k in streams)
    attr = np.empty((n, width), dtype=np.uint8)
    for name, ch, k in streams:
        payload = stream(name)
        if len(payload) != n * k:
            raise _Corrupt(
                f"stream {name!r} of chunk {idx} holds {len(payload)} bytes for {n} voxels x {k} channels "
                "(attributes must be uint8 with the channel counts of the header)"
            )
        attr[:, ch : ch + k] = np.frombuffer(payload, dtype=np.uint8).reshape(n, k)
    local = morton_decode(codes)
    if header["filter"] == "parent":
        attr = parent_unfilter(codes, depth, attr)
    elif header["filter"] == "neighbor":
        attr = neighbor_unfilter(local, chunk_size, attr)
    return local.astype(np.int64) + np.asarray(idx, dtype=np.int64) * chunk_size, attr


def read_vxz(path, *, resolution: int | None = None, aabb=None) -> OVoxel:
    """Read a .vxz file (ours or the official o_voxel tools') as an OVoxel, rows sorted by (x, y, z).

    `resolution`/`aabb` are needed only for files that do not record them (official ones): the box
    defaults to the unit box. Given for a file that records other values, they are an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineInputError(f"cannot read {path} ({exc})") from exc
    if data[:3] != MAGIC:
        raise EngineInputError(f"{path} is not a .vxz file (it does not start with b'VXZ')")
    if len(data) > 3 and data[3] != VERSION:
        raise EngineInputError(
            f"{path} is .vxz version {data[3]}; this reader knows version {VERSION} only "
            "(re-export it with the o_voxel tools' write_vxz, or save as .npz)"
        )
    try:
        header, blob = _parse_header(data)
        ovoxel = _decode(header, blob, resolution, aabb)
    except _Corrupt as exc:
        raise EngineInputError(f"{path} is damaged or not a valid .vxz file: it has {exc}; re-export it") from exc
    except EngineInputError as exc:
        raise EngineInputError(f"{path}: {exc}") from exc
    return ovoxel


def _decode(header: dict, blob: bytes, resolution, aabb) -> OVoxel:
    chunk_size = header["chunk_size"]
    if not isinstance(chunk_size, int) or chunk_size < 2 or chunk_size > MAX_CHUNK or chunk_size & (chunk_size - 1):
        raise _Corrupt(f"a chunk_size {chunk_size!r} that is not a power of two in 2..{MAX_CHUNK}")
    depth = chunk_size.bit_length() - 1
    if header["compression"] == "zstd":
        _zstd()
    columns = header["attr"]
    try:
        streams = _streams(columns, header["attr_interleave"])
    except EngineInputError as exc:
        raise _Corrupt(str(exc)) from exc
    parts = [_read_chunk(info, blob, header, depth, streams) for info in header["chunks"]]
    width = sum(k for _, k in columns)
    coords = np.concatenate([c for c, _ in parts]) if parts else np.zeros((0, 3), dtype=np.int64)
    table = np.concatenate([t for _, t in parts]) if parts else np.zeros((0, width), dtype=np.uint8)
    if coords.shape[0] != header["num_voxel"]:
        raise _Corrupt(f"{coords.shape[0]} voxels in its chunks but num_voxel {header['num_voxel']} in the header")
    order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))
    coords, table = coords[order], table[order]
    if (coords[1:] == coords[:-1]).all(axis=1).any():
        raise _Corrupt("the same voxel in two chunks")

    ext = header.get(EXTENSION_KEY) if isinstance(header.get(EXTENSION_KEY), dict) else {}
    resolution = _agree("resolution", resolution, ext.get("resolution"))
    if resolution is None:
        raise EngineInputError(
            "this .vxz does not record its grid resolution (files of the official o_voxel tools do not); "
            "pass resolution= (the R the voxels were made at, e.g. 512 or 1024 for TRELLIS.2 data)"
        )
    resolution = check_resolution(resolution)
    if coords.size and coords.max() >= resolution:
        raise EngineInputError(f"voxel coords reach {coords.max()}, outside the grid of resolution {resolution}")
    box = _agree("aabb", None if aabb is None else _box(aabb), None if "aabb" not in ext else _box(ext["aabb"]))
    dropped = ext.get("dropped_faces", 0)

    channel, found = {}, 0
    for name, k in columns:
        channel[name] = slice(found, found + k)
        found += k
    offset_key = next((k for k in OFFSET_KEYS if k in channel), None)
    if offset_key is None or FLAGS_KEY not in channel:
        raise EngineInputError(
            f"this .vxz has no geometry (attributes {list(channel)}; an O-Voxel needs 'vertices' and "
            "'intersected'): it may be a material-only file; read it with the o_voxel tools instead"
        )
    if table[:, channel[offset_key]].shape[1] != 3 or table[:, channel[FLAGS_KEY]].shape[1] != 1:
        raise _Corrupt(f"geometry with {channel[offset_key]} / {channel[FLAGS_KEY]} channels instead of 3 / 1")
    packed = table[:, channel[FLAGS_KEY].start]
    if (packed > 7).any():
        raise _Corrupt("'intersected' values above 7 (three flag bits)")
    names = [name for name, _ in columns if name not in (offset_key, FLAGS_KEY)]
    attrs, layout, at = None, {}, 0
    if names:
        attrs = np.concatenate([table[:, channel[k]] for k in names], axis=1).astype(np.float32) / np.float32(255)
        for name in names:
            k = channel[name].stop - channel[name].start
            layout[name] = slice(at, at + k)
            at += k
    return OVoxel(
        coords=coords.astype(np.int32),
        offsets=table[:, channel[offset_key]].astype(np.float32) / np.float32(255),
        flags=((packed[:, None] >> np.arange(3, dtype=np.uint8)) & 1).astype(bool),
        resolution=resolution,
        aabb=box if box is not None else UNIT_BOX,
        attrs=attrs,
        layout=layout,
        dropped_faces=dropped if isinstance(dropped, int) else 0,
    )


def _box(aabb) -> tuple:
    """The box as float32 values in Python floats (how OVoxel keeps it), so given and recorded compare."""
    box = np.asarray(aabb, dtype=np.float32)
    if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[1] > box[0]).all():
        raise EngineInputError(f"aabb must be [[min x, y, z], [max x, y, z]] with max > min, got {aabb!r}")
    return tuple(tuple(float(v) for v in row) for row in box)


def _agree(what: str, given, recorded):
    if given is not None and recorded is not None and given != recorded:
        raise EngineInputError(f"the file records {what} {recorded!r} but {given!r} was passed; leave it out")
    return recorded if given is None else given
