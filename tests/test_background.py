"""Background removal: BiRefNet's structure against the published key list, its parts against
reference formulas, the matte policy, and strict safetensors-only loading.

No real weights are needed (a matte-quality check with the published weights is documented in
docs/background_removal.md); a reduced-width model of the same structure runs on the CPU.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from engine.background import BackgroundRemover, apply_matte, ensure_alpha, needs_matte
from engine.background import deform_conv as dc
from engine.background.birefnet import BiRefNet, BiRefNetParams, image_tiles
from engine.background.remover import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BiRefNetRemover,
    matte_image,
    preprocess,
)
from engine.background.swin import SwinBlock, relative_position_index, shift_mask
from engine.errors import EngineError, EngineInputError, WeightsError

KEYS_TSV = Path(__file__).resolve().parents[2] / "shared" / "spec" / "birefnet_keys.tsv"
TINY = BiRefNetParams(
    embed_dim=16,
    depths=(2, 2, 2, 2),
    num_heads=(1, 1, 2, 2),
    window=4,
    dec_channels=8,
    aspp_channels=8,
    ipt_channels=8,
    gdt_channels=4,
)
TINY_RES = 64


@pytest.fixture(scope="module")
def tiny_model() -> BiRefNet:
    torch.manual_seed(0)
    model = BiRefNet(TINY).eval()
    with torch.no_grad():  # BatchNorm statistics away from the (0, 1) defaults, so they matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


# -- (a) structure ------------------------------------------------------------------------------------


def _published_keys() -> dict[str, dict[str, str]]:
    if not KEYS_TSV.is_file():
        pytest.skip(f"the published key list is not at {KEYS_TSV}")
    with KEYS_TSV.open() as f:
        return {row["key"]: row for row in csv.DictReader(f, delimiter="\t")}


def test_full_model_on_meta_matches_every_published_key_shape_and_dtype():
    published = _published_keys()
    with torch.device("meta"):
        model = BiRefNet()
    state = model.state_dict()
    assert all(t.is_meta for t in state.values()), "building on meta must allocate nothing"
    assert set(state) == set(published), (sorted(set(published) - set(state)), sorted(set(state) - set(published)))
    for key, tensor in state.items():
        shape = "x".join(str(d) for d in tensor.shape) or "scalar"
        dtype = str(tensor.dtype).removeprefix("torch.")
        assert (shape, dtype) == (published[key]["shape"], published[key]["module_dtype"]), key
    param_rows = sum(
        math.prod(int(d) for d in row["shape"].split("x")) for row in published.values() if row["kind"] == "param"
    )
    assert sum(p.numel() for p in model.parameters()) == param_rows == 220_176_498
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers == {k for k, row in published.items() if row["kind"] == "buffer"}


def test_relative_position_index_is_the_swin_formula():
    for window in (3, 12):
        n = window * window
        expected = torch.empty(n, n, dtype=torch.int64)
        for i in range(n):
            for j in range(n):
                (ri, ci), (rj, cj) = divmod(i, window), divmod(j, window)
                expected[i, j] = (ri - rj + window - 1) * (2 * window - 1) + (ci - cj + window - 1)
        assert torch.equal(relative_position_index(window), expected)


def _block_reference(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """A Swin block token by token, with shifted windows stated directly: windows offset by `shift`,
    cut off (not wrapped) at the padded border; attention only inside a window, no mask needed."""
    _, h, w, c = x.shape
    ws, s, heads = block.window, block.shift, block.attn.heads
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    y = torch.zeros(hp, wp, c, dtype=x.dtype)
    y[:h, :w] = block.norm1(x)[0]
    q, k, v = block.attn.qkv(y).view(hp, wp, 3, heads, c // heads).unbind(2)  # [Hp, Wp, heads, d]
    table = block.attn.relative_position_bias_table
    out = torch.zeros(h, w, c, dtype=x.dtype)
    for a in range(h):
        for b in range(w):
            keys = [
                (a2, b2)
                for a2 in range(hp)
                for b2 in range(wp)
                if (a2 - s) // ws == (a - s) // ws and (b2 - s) // ws == (b - s) // ws
            ]
            rows = torch.tensor([a2 for a2, _ in keys])
            cols = torch.tensor([b2 for _, b2 in keys])
            bias = table[(a - rows + ws - 1) * (2 * ws - 1) + (b - cols + ws - 1)]  # [n, heads]
            logits = (q[a, b][None] * k[rows, cols]).sum(-1) / math.sqrt(c // heads) + bias  # [n, heads]
            out[a, b] = (logits.softmax(0)[..., None] * v[rows, cols]).sum(0).reshape(c)
    x = x + block.attn.proj(out)[None]
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_token_by_token_windows(shift):
    torch.manual_seed(1)
    block = SwinBlock(dim=8, heads=2, window=4, shift=shift, mlp_ratio=2.0).double()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(1, 7, 6, 8, dtype=torch.float64)  # padded to 8 x 8: four windows, pad tokens take part
    mask = shift_mask(8, 8, 4, 2, x.device, x.dtype)
    torch.testing.assert_close(block(x, mask), _block_reference(block, x), atol=1e-10, rtol=1e-10)


def test_image_tiles_are_contiguous_blocks_stacked_on_channels():
    image = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    tiles = image_tiles(image, torch.Size((2, 3)))  # 4 x 4 grid of 2 x 3 tiles
    assert tiles.shape == (2, 48, 2, 3)
    for c in range(3):
        for gy in range(4):
            for gx in range(4):
                expected = image[:, c, gy * 2 : gy * 2 + 2, gx * 3 : gx * 3 + 3]
                assert torch.equal(tiles[:, c * 16 + gy * 4 + gx], expected)


# -- (b) reduced-width model, image -> alpha ------------------------------------------------------


def test_reduced_model_logits_shape_and_batch_independence(tiny_model):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        both = tiny_model(x)
        second = tiny_model(x[1:])
    assert both.shape == (2, 1, 64, 96)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-3), "different images must give different logits"


def test_preprocess_resizes_and_normalises_with_imagenet_constants():
    image = Image.new("RGB", (30, 20), (255, 0, 128))
    x = preprocess(image, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    for channel, value in enumerate((255, 0, 128)):
        expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(x[0, channel], torch.full((64, 64), expected), atol=1e-6, rtol=0)


def test_matte_truncates_like_to_pil_image_and_resizes_back():
    probability = torch.tensor([[0.5, 1.0], [0.0, 0.999]])
    assert np.asarray(matte_image(probability, (2, 2))).tolist() == [[127, 255], [0, 254]]
    big = matte_image(torch.full((64, 64), 0.75), (37, 50))
    assert big.mode == "L" and big.size == (37, 50) and big.getextrema() == (191, 191)


def test_reduced_model_turns_an_image_into_an_alpha_matte_of_its_size(tiny_model):
    remover = BiRefNetRemover(tiny_model, device="cpu", resolution=TINY_RES)
    assert remover.dtype == torch.float32
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8))
    probability = remover.probability(image)
    assert probability.shape == (TINY_RES, TINY_RES)
    assert 0.0 < float(probability.min()) and float(probability.max()) < 1.0
    assert float(probability.std()) > 0
    matte = remover.remove(image)
    assert matte.mode == "L" and matte.size == image.size
    assert np.array_equal(np.asarray(matte), np.asarray(matte_image(probability, image.size)))


# -- (c) deformable convolution ----------------------------------------------------------------------


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    """torchvision's sampling: 0 beyond (-1, size) on either axis, neighbours outside count as 0."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * img[yy, xx]
    return total


def _deform_reference(inp, offset, weight, bias, stride, padding, dilation, mask) -> torch.Tensor:
    """The DCNv2 formula, one output pixel at a time."""
    inp, offset, weight = inp.numpy(), offset.numpy(), weight.numpy()
    mask = None if mask is None else mask.numpy()
    b, c, h, w = inp.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = offset.shape[-2:]
    groups, offset_groups = c // cg, offset.shape[1] // (2 * kh * kw)
    out = np.zeros((b, o, ho, wo))
    for n in range(b):
        for oc in range(o):
            group = oc // (o // groups)
            for y in range(ho):
                for x in range(wo):
                    total = 0.0 if bias is None else float(bias[oc])
                    for ci in range(cg):
                        channel = group * cg + ci
                        og = channel // (c // offset_groups)
                        for i in range(kh):
                            for j in range(kw):
                                t = i * kw + j
                                dy = offset[n, og * 2 * kh * kw + 2 * t, y, x]
                                dx = offset[n, og * 2 * kh * kw + 2 * t + 1, y, x]
                                m = 1.0 if mask is None else mask[n, og * kh * kw + t, y, x]
                                value = _bilinear(inp[n, channel], y * sh - ph + i * dh + dy, x * sw - pw + j * dw + dx)
                                total += weight[oc, ci, i, j] * m * value
                    out[n, oc, y, x] = total
    return torch.from_numpy(out)


DEFORM_CASES = {
    # name: (B, C, H, W, O, kernel, stride, padding, dilation, groups, offset_groups, bias, mask)
    "3x3_mask": (2, 3, 5, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False, True),
    "1x1_deformable": (1, 4, 4, 5, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, False, True),
    "groups_offset_groups_stride_dilation": (2, 4, 7, 6, 6, (3, 2), (2, 1), (1, 2), (2, 1), 2, 2, True, True),
    "no_mask_single_row": (1, 2, 1, 6, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, False),
}


def _deform_inputs(case, seed=4):
    b, c, h, w, o, (kh, kw), stride, padding, dilation, groups, offset_groups, with_bias, with_mask = case
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    inp = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    offset = 2.5 * torch.randn(b, 2 * offset_groups * kh * kw, ho, wo, generator=g, dtype=torch.float64)
    offset[:, :2] = torch.tensor([-1.0, float(w)], dtype=torch.float64)[None, :, None, None]  # exact edges
    weight = torch.randn(o, c // groups, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(o, generator=g, dtype=torch.float64) if with_bias else None
    mask = 2 * torch.rand(b, offset_groups * kh * kw, ho, wo, generator=g, dtype=torch.float64) if with_mask else None
    return inp, offset, weight, bias, stride, padding, dilation, mask


@pytest.mark.parametrize("name", sorted(DEFORM_CASES))
def test_deform_conv_matches_the_formula_pixel_by_pixel(name):
    args = _deform_inputs(DEFORM_CASES[name])
    expected = _deform_reference(*args)
    torch.testing.assert_close(dc.deform_conv2d_torch(*args), expected, atol=1e-10, rtol=1e-10)


def test_deform_conv_tap_chunks_give_the_same_result(monkeypatch):
    args = _deform_inputs(DEFORM_CASES["groups_offset_groups_stride_dilation"])
    whole = dc.deform_conv2d_torch(*args)
    monkeypatch.setattr(dc, "_COLUMN_BUDGET", 1)  # one tap per chunk
    torch.testing.assert_close(dc.deform_conv2d_torch(*args), whole, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_deform_conv_with_zero_offsets_and_unit_mask_is_conv2d(groups):
    g = torch.Generator().manual_seed(5)
    inp = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    expected = F.conv2d(inp, weight, bias, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=groups)
    offset = torch.zeros(2, 18, *expected.shape[-2:], dtype=torch.float64)
    mask = torch.ones(2, 9, *expected.shape[-2:], dtype=torch.float64)
    actual = dc.deform_conv2d_torch(inp, offset, weight, bias, (2, 1), (1, 2), (1, 2), mask)
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=1e-12)


def test_torchvision_fast_path_matches_plain_pytorch():
    kernel = dc.torchvision_kernel()
    if kernel is None:
        pytest.skip("torchvision does not import beside this torch build; the plain-PyTorch path is the one in use")
    for case in DEFORM_CASES.values():
        args = _deform_inputs(case)
        torch.testing.assert_close(kernel(*args), dc.deform_conv2d_torch(*args), atol=1e-10, rtol=1e-10)


# -- (d) matte policy -----------------------------------------------------------------------------


class CountingRemover(BackgroundRemover):
    name = "counting remover"

    def __init__(self, level: int | None = None) -> None:
        self.calls = 0
        self.level = level

    def remove(self, image: Image.Image) -> Image.Image:
        self.calls += 1
        if self.level is not None:
            return Image.new("L", image.size, self.level)
        matte = Image.new("L", image.size, 0)
        matte.paste(255, (image.width // 4, image.height // 4, image.width // 2, image.height // 2))
        return matte


def _rgba(alpha_low: int) -> Image.Image:
    image = Image.new("RGBA", (16, 12), (200, 100, 50, 255))
    image.putpixel((3, 4), (10, 20, 30, alpha_low))
    return image


@pytest.mark.parametrize(
    "image",
    [_rgba(0), _rgba(254), _rgba(0).convert("LA"), _rgba(0).convert("PA")],
    ids=["rgba", "rgba_254", "la", "pa"],
)
def test_an_image_with_its_own_alpha_never_reaches_the_remover(image):
    remover = CountingRemover()
    assert not needs_matte(image)
    result = ensure_alpha(image, remover)
    assert remover.calls == 0
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(image.convert("RGBA").getchannel("A")))


@pytest.mark.parametrize("image", [_rgba(255), _rgba(255).convert("RGB"), _rgba(255).convert("L")], ids=str)
def test_an_image_without_real_alpha_gets_the_removers_matte(image):
    remover = CountingRemover()
    assert needs_matte(image)
    result = ensure_alpha(image, remover)
    assert remover.calls == 1
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(remover.remove(image)))
    assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(image.convert("RGB")))


def test_rgb_without_a_remover_says_what_to_do():
    with pytest.raises(EngineInputError, match="supply an image with transparency.*enable background removal"):
        ensure_alpha(Image.new("RGB", (8, 8)), None)


@pytest.mark.parametrize(("level", "what"), [(0, "no object"), (204, "no object"), (255, "no background")])
def test_an_empty_or_full_matte_is_a_clear_error(level, what):
    remover = CountingRemover(level)
    with pytest.raises(EngineInputError, match=f"{what}.*Supply an image with transparency.*another background"):
        ensure_alpha(Image.new("RGB", (8, 8)), remover)


def test_apply_matte_refuses_a_matte_of_another_size():
    with pytest.raises(EngineError, match="size"):
        apply_matte(Image.new("RGB", (8, 8)), Image.new("L", (8, 9)))


# -- (e) loading ------------------------------------------------------------------------------------


def _save_published_style(state: dict[str, torch.Tensor], folder: Path) -> Path:
    """Like the ZhengPeng7 file: floats in fp16, int64 buffers kept, no key prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_weights_load_strictly_from_a_local_folder(tiny_model, tmp_path):
    folder = _save_published_style(tiny_model.state_dict(), tmp_path / "birefnet")
    remover = BiRefNetRemover.from_pretrained(folder, device="cpu", params=TINY, resolution=TINY_RES)
    loaded = remover.model.state_dict()
    assert set(loaded) == set(tiny_model.state_dict())
    for key, value in tiny_model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert loaded[key].dtype == value.dtype, key  # fp16 file -> fp32 model on the CPU
        assert torch.equal(loaded[key], expected), key
    image = Image.new("RGB", (20, 10), (30, 160, 90))
    assert remover.remove(image).size == (20, 10)
    assert "birefnet" in remover.name


def test_weights_with_a_missing_or_foreign_key_are_refused(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    state.pop("decoder.gdt_convs_pred_2.0.bias")  # a training-only head must still be there
    state["module.extra"] = torch.zeros(1)
    folder = _save_published_style(state, tmp_path / "broken")
    with pytest.raises(WeightsError, match=r"(?s)missing keys: decoder.gdt_convs_pred_2.0.bias.*unexpected keys"):
        BiRefNetRemover.from_pretrained(folder, params=TINY, resolution=TINY_RES)


def test_weights_of_another_width_are_refused(tiny_model, tmp_path):
    folder = _save_published_style(tiny_model.state_dict(), tmp_path / "tiny")
    wider = BiRefNetParams(**{**TINY.__dict__, "dec_channels": 16})
    with pytest.raises(WeightsError, match="shape"):
        BiRefNetRemover.from_pretrained(folder, params=wider, resolution=TINY_RES)


def test_a_corrupted_window_index_is_refused(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    key = "bb.layers.1.blocks.1.attn.relative_position_index"
    state[key] = state[key].flip(0)
    folder = _save_published_style(state, tmp_path / "flipped")
    with pytest.raises(WeightsError, match="relative_position_index"):
        BiRefNetRemover.from_pretrained(folder, params=TINY, resolution=TINY_RES)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(WeightsError, match="pickle"):
        BiRefNetRemover.from_pretrained(tmp_path, params=TINY)
    with pytest.raises(WeightsError, match="never pickles"):
        BiRefNetRemover.from_pretrained(tmp_path / "pytorch_model.bin", params=TINY)


def test_missing_weights_offline_say_what_to_do(tmp_path):
    with pytest.raises(WeightsError, match="not on this computer.*supply an image with transparency"):
        BiRefNetRemover.from_pretrained("ZhengPeng7/BiRefNet", local_files_only=True, cache_dir=tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        BiRefNetRemover.from_pretrained(tmp_path / "no" / "such" / "folder")


def test_a_gated_repo_without_access_says_accept_the_licence(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError

    def gated(repo_id, filename, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)  # its constructor wants an HTTP response object
        Exception.__init__(error, f"401: {repo_id} is gated")
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(WeightsError, match=r"gated.*https://huggingface.co/briaai/RMBG-2.0.*accept its licence.*token"):
        BiRefNetRemover.from_pretrained("briaai/RMBG-2.0")
