"""The submanifold sparse conv against a dense conv3d referee, its caching and errors; S2C/C2S resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.errors import EngineInputError
from engine.sparse import SparseTensor, sorted_order
from engine.sparse import conv as conv_module
from engine.sparse.conv import SparseSubMConv3d, neighbour_table, set_sparse_conv_backend
from engine.sparse.resample import (
    channel_to_spatial,
    channel_to_spatial_map,
    spatial_to_channel,
    spatial_to_channel_map,
)


def random_voxels(seed: int, res: int = 12, counts=(300, 200)) -> torch.Tensor:
    """Sorted int32 coords of several batch items that share many (x, y, z) positions."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for b, n in enumerate(counts):
        flat = torch.randperm(res**3, generator=g)[:n].sort().values
        xyz = torch.stack([flat // (res * res), flat // res % res, flat % res], dim=1)
        items.append(torch.cat([torch.full((n, 1), b), xyz], dim=1))
    return torch.cat(items).int()


def dense_reference(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3d (padding 1) on the densified tensor, read back at the active sites."""
    c = x.coords.long()
    shape = [int(c[:, 0].max()) + 1, x.feats.shape[1], *(int(v) + 1 for v in c[:, 1:].max(dim=0).values)]
    dense = torch.zeros(shape, dtype=torch.float64)
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = x.feats.double()
    w = weight.double().permute(0, 4, 1, 2, 3)  # (Co, Ci, Kx, Ky, Kz)
    out = F.conv3d(dense, w, None if bias is None else bias.double(), padding=1)
    return out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]  # [N, Co]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_conv3d_on_random_batched_voxels(seed, bias):
    torch.manual_seed(seed)
    coords = random_voxels(seed)
    x = SparseTensor(torch.randn(coords.shape[0], 5), coords)
    conv = SparseSubMConv3d(5, 7, bias=bias)
    with torch.no_grad():
        out = conv(x)
    assert out.coords is x.coords and out.feats.dtype == torch.float32
    ref = dense_reference(x, conv.weight, conv.bias)
    torch.testing.assert_close(out.feats.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tap", [0, 5, 13, 21, 26])
def test_each_tap_reads_the_neighbour_at_its_offset(tap):
    """A kernel with one identity tap copies the feats of the voxel at (x+a-1, y+b-1, z+c-1) of the same item."""
    coords = random_voxels(3, res=6, counts=(120, 90))
    feats = torch.randn(coords.shape[0], 4)
    conv = SparseSubMConv3d(4, 4, bias=False)
    a, b, c = tap // 9, tap // 3 % 3, tap % 3
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, a, b, c, :] = torch.eye(4)
        out = conv(SparseTensor(feats, coords)).feats
    where = {tuple(r): i for i, r in enumerate(coords.tolist())}
    for i, (bi, xi, yi, zi) in enumerate(coords.tolist()):
        j = where.get((bi, xi + a - 1, yi + b - 1, zi + c - 1))
        expected = feats[j] if j is not None else torch.zeros(4)
        assert torch.equal(out[i], expected), f"voxel {i}, tap {tap}"


def test_gpu_form_im2col_agrees_with_cpu_form_pairs():
    torch.manual_seed(0)
    coords = random_voxels(4)
    x = SparseTensor(torch.randn(coords.shape[0], 6), coords)
    w, b = torch.randn(3, 3, 3, 3, 6), torch.randn(3)
    torch.testing.assert_close(conv_module._conv_im2col(x, w, b), conv_module._conv_pairs(x, w, b))


def test_half_input_gives_half_output_close_to_fp32():
    torch.manual_seed(0)
    coords = random_voxels(5)
    x = SparseTensor(torch.randn(coords.shape[0], 8), coords)
    conv = SparseSubMConv3d(8, 8)
    with torch.no_grad():
        ref = conv(x).feats
        conv.half()
        out = conv(x.type(torch.float16)).feats
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)


def test_neighbour_table_is_built_once_per_coordinate_set(monkeypatch):
    calls = []

    def counting(coords):
        calls.append(coords.shape[0])
        return neighbour_table(coords)

    monkeypatch.setattr(conv_module, "neighbour_table", counting)
    coords = random_voxels(6)
    x = SparseTensor(torch.randn(coords.shape[0], 4), coords)
    first, second = SparseSubMConv3d(4, 4), SparseSubMConv3d(4, 4)
    with torch.no_grad():
        h = second(first(x))  # shares x's cache through replace()
        second(h.replace(h.feats * 2))
        assert calls == [coords.shape[0]]
        second(SparseTensor(h.feats, coords.clone()))  # same values, new tensor: a new table
    assert calls == [coords.shape[0]] * 2


def test_neighbour_table_marks_missing_neighbours_and_is_symmetric():
    coords = random_voxels(7, res=5, counts=(40, 30))
    table = neighbour_table(coords)
    assert table.shape == (coords.shape[0], 27) and table.dtype == torch.int64
    assert torch.equal(table[:, 13], torch.arange(coords.shape[0]))
    rows, taps = torch.nonzero(table >= 0, as_tuple=True)
    assert torch.equal(table[table[rows, taps], 26 - taps], rows)  # j is i's tap v <=> i is j's tap 26-v
    assert not bool((coords[table[rows, taps], 0] != coords[rows, 0]).any())  # never across batch items


def test_empty_tensor_convolves_to_empty():
    x = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32))
    with torch.no_grad():
        out = SparseSubMConv3d(3, 5)(x)
    assert out.feats.shape == (0, 5)


def test_bad_inputs_raise_engine_input_errors():
    coords = random_voxels(8)
    x = SparseTensor(torch.randn(coords.shape[0], 4), coords)
    with pytest.raises(EngineInputError, match="expects 6 input channels, got 4"):
        SparseSubMConv3d(6, 6)(x)
    with pytest.raises(EngineInputError, match="int32"):
        SparseTensor(torch.randn(coords.shape[0], 4), coords.long())
    with pytest.raises(EngineInputError, match="must lie in"):
        SparseTensor(torch.randn(1, 4), torch.tensor([[0, -1, 0, 0]], dtype=torch.int32))
    conv = set_sparse_conv_backend(torch.nn.Sequential(SparseSubMConv3d(4, 4)), "spconv")[0]
    assert conv.backend == "spconv"
    with pytest.raises(EngineInputError, match="CUDA only"):
        conv(x)
    with pytest.raises(EngineInputError, match="unknown sparse conv backend"):
        set_sparse_conv_backend(conv, "flex_gemm")


def test_module_owns_exactly_the_canonical_weight_and_bias():
    conv = SparseSubMConv3d(4, 9)
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {"weight": (9, 3, 3, 3, 4), "bias": (9,)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the spconv backend is CUDA-only")
def test_spconv_backend_matches_torch_backend_on_cuda():
    torch.manual_seed(0)
    coords = random_voxels(9).cuda()
    x = SparseTensor(torch.randn(coords.shape[0], 16, device="cuda"), coords)
    conv = SparseSubMConv3d(16, 16).cuda()
    with torch.no_grad():
        ref = conv(x).feats
        out = set_sparse_conv_backend(conv, "spconv")(x).feats
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# -- spatial <-> channel ---------------------------------------------------------------------------
def test_spatial_to_channel_packs_children_by_slot_with_sorted_parents():
    coords = random_voxels(10, res=8)
    feats = torch.randn(coords.shape[0], 3)
    coarse = spatial_to_channel(SparseTensor(feats, coords))
    assert torch.equal(sorted_order(coarse.coords), torch.arange(coarse.coords.shape[0]))
    packed = coarse.feats.reshape(-1, 8, 3)
    where = {tuple(r): i for i, r in enumerate(coarse.coords.tolist())}
    seen = torch.zeros(packed.shape[:2], dtype=torch.bool)
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        p, s = where[(b, x // 2, y // 2, z // 2)], x % 2 + 2 * (y % 2) + 4 * (z % 2)
        assert torch.equal(packed[p, s], feats[i])
        seen[p, s] = True
    assert not bool(packed[~seen].any()), "absent children must be zeros"


def test_channel_to_spatial_uses_the_cached_mapping_and_round_trips_exactly():
    coords = random_voxels(11, res=8)
    x = SparseTensor(torch.randn(coords.shape[0], 3), coords)
    coarse = spatial_to_channel(x)
    back = channel_to_spatial(coarse.replace(coarse.feats), torch.zeros(coarse.coords.shape[0], 8, dtype=torch.bool))
    assert torch.equal(back.coords, x.coords) and torch.equal(back.feats, x.feats)
    assert back.cache is x.cache  # the fine level's neighbour tables are reused
    assert spatial_to_channel_map(x) is spatial_to_channel_map(x.replace(x.feats))


def test_channel_to_spatial_from_a_mask_emits_parent_major_slot_minor_children():
    parents = torch.tensor([[0, 3, 1, 2], [0, 0, 0, 0], [1, 3, 1, 2]], dtype=torch.int32)  # not sorted on purpose
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, [7, 1]] = True
    mask[2, [0, 6]] = True  # parent 1 has no children: it vanishes
    feats = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 16)  # 8 slots x 2 channels
    fine = channel_to_spatial(SparseTensor(feats, parents), mask)
    expected = [[0, 7, 2, 4], [0, 7, 3, 5], [1, 6, 2, 4], [1, 6, 3, 5]]
    assert fine.coords.tolist() == expected
    assert fine.feats.tolist() == [feats[0, 2:4].tolist(), feats[0, 14:16].tolist(), feats[2, 0:2].tolist(),
                                   feats[2, 12:14].tolist()]  # fmt: skip


def test_mask_round_trip_reproduces_the_voxel_set_and_subdivision():
    coords = random_voxels(12, res=8)
    x = SparseTensor(torch.randn(coords.shape[0], 2), coords)
    down = spatial_to_channel_map(x)
    coarse = SparseTensor(down.to_channels(x).feats, down.coarse_coords)  # fresh cache: no mapping
    up = channel_to_spatial_map(coarse, down.subdivision())
    fine = up.to_spatial(coarse)
    order = sorted_order(fine.coords)
    assert torch.equal(fine.coords[order], x.coords) and torch.equal(fine.feats[order], x.feats)


def test_channel_to_spatial_without_mapping_or_mask_explains_itself():
    coords = random_voxels(13)
    x = SparseTensor(torch.randn(coords.shape[0], 16), coords)
    with pytest.raises(EngineInputError, match="subdivision mask"):
        channel_to_spatial(x)
    with pytest.raises(EngineInputError, match="bool"):
        channel_to_spatial(x, torch.ones(coords.shape[0], 8))
