"""Image preprocessing (spec 7.1) on synthetic images, bad inputs, and DINOv3 features (spec 7.2)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.conditioning import load_dinov3, load_image, preprocess_image
from engine.conditioning.dinov3 import image_to_tensor
from engine.conditioning.preprocess import alpha_crop_box, cap_size
from engine.errors import EngineError, EngineInputError, WeightsError


class StubRemover:
    """Background remover double: a fixed matte (a centred box), counting calls."""

    name = "stub remover"

    def __init__(self, box_fraction: float = 0.5, value: int = 255):
        self.calls, self.box_fraction, self.value = [], box_fraction, value

    def remove(self, image: Image.Image) -> Image.Image:
        self.calls.append((image.mode, image.size))
        w, h = image.size
        matte = np.zeros((h, w), np.uint8)
        bw, bh = int(w * self.box_fraction) // 2, int(h * self.box_fraction) // 2
        matte[h // 2 - bh : h // 2 + bh, w // 2 - bw : w // 2 + bw] = self.value
        return Image.fromarray(matte, "L")


def rgba(width: int, height: int, alpha: np.ndarray | None = None, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 0 if alpha is None else alpha
    return Image.fromarray(pixels, "RGBA")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def png_16bit(array: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL writes 16-bit only for greyscale)."""
    h, w = array.shape[:2]
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# ----------------------------------------------------------------------------------------------- numerics


def test_crop_box_threshold_is_strictly_above_204_and_inclusive():
    alpha = np.zeros((120, 200), np.uint8)
    alpha[20:51, 30:70] = 255  # rows 20..50, cols 30..69
    alpha[40, 90] = 205  # counts (> 204): x1 = 90
    alpha[40, 150] = 204  # does not count
    alpha[110, 10] = 204
    assert alpha_crop_box(alpha) == (30.0, 5.0, 90.0, 65.0)  # size 60, centre (60, 35)


def test_preprocess_crops_centres_and_premultiplies():
    alpha = np.zeros((120, 200), np.uint8)
    alpha[20:51, 30:70] = 255
    alpha[40, 90] = 205
    alpha[60, 35] = 128  # below the object, inside the crop
    image = rgba(200, 120, alpha)
    out = preprocess_image(image)
    assert (out.mode, out.size) == ("RGB", (60, 60))
    src = np.asarray(image).astype(np.int64)
    got = np.asarray(out).astype(np.int64)
    # crop box (30, 5, 90, 65): output (x, y) is input (x + 30, y + 5)
    np.testing.assert_array_equal(got[15:46, 0:40], src[20:51, 30:70, :3])  # opaque: colours unchanged
    assert np.all(got[:15] == 0) and np.all(got[46:55] == 0)  # transparent rows are black
    np.testing.assert_array_equal(got[55, 5], src[60, 35, :3] * 128 // 255)  # premultiplied, truncated


def test_premultiply_truncates_instead_of_rounding():
    pixels = np.zeros((9, 9, 4), np.uint8)
    pixels[2:7, 2:7, 3] = 255  # cols/rows 2..6: size 4, centre 4 -> box (2, 2, 6, 6)
    pixels[3, 3] = (200, 0, 10, 200)  # 200*200/255 = 156.9 and 10*200/255 = 7.8: truncated, not rounded
    out = np.asarray(preprocess_image(Image.fromarray(pixels, "RGBA")))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[1, 1], (156, 0, 7))


def test_half_pixel_centre_rounds_half_to_even():
    alpha = np.zeros((100, 100), np.uint8)
    alpha[40:60, 31:91] = 255  # cols 31..90: centre 60.5, size 59, half 29 -> box x 31.5 .. 89.5
    image = rgba(100, 100, alpha, seed=3)
    box = alpha_crop_box(alpha)
    assert box[0] == 31.5 and box[2] == 89.5
    out = np.asarray(preprocess_image(image))
    assert out.shape[:2] == (58, 58)  # round(31.5) = 32, round(89.5) = 90 (Python's half-to-even)
    src = np.asarray(image)
    np.testing.assert_array_equal(out[40 - round(box[1]), 0], src[40, 32, :3])


def test_size_cap_truncates_and_uses_lanczos():
    image = rgba(2000, 1001, np.full((1001, 2000), 255, np.uint8))
    capped = cap_size(image)
    assert capped.size == (1024, 512)  # 1001 * 0.512 = 512.5 -> 512 (truncation, not rounding)
    np.testing.assert_array_equal(np.asarray(capped), np.asarray(image.resize((1024, 512), Image.Resampling.LANCZOS)))
    small = rgba(1024, 300)
    assert cap_size(small) is small


def test_alpha_decision_is_made_before_the_cap_and_removal_runs_after_it():
    opaque = rgba(1500, 900, np.full((900, 1500), 255, np.uint8))  # RGBA but every alpha 255: no alpha
    remover = StubRemover()
    out = preprocess_image(opaque, remover)
    assert remover.calls == [("RGB", (1024, 614))]  # removal sees the capped RGB image
    assert out.size[0] == out.size[1] and out.mode == "RGB"


def test_image_without_alpha_needs_a_remover():
    with pytest.raises(EngineInputError, match="no transparency.*background removal"):
        preprocess_image(Image.new("RGB", (64, 64), (10, 20, 30)))


def test_remover_matte_becomes_the_alpha():
    image = Image.fromarray(np.full((64, 64, 3), 200, np.uint8), "RGB")
    out = np.asarray(preprocess_image(image, StubRemover(0.5)))
    assert out.shape == (30, 30, 3)  # matte rows/cols 16..47 -> size 31 -> half 15
    assert np.all(out == 200)


def test_remover_returning_a_wrong_matte_is_an_engine_error():
    class Bad:
        def remove(self, image):
            return Image.new("L", (3, 3))

    with pytest.raises(EngineError, match="Bad returned"):
        preprocess_image(Image.new("RGB", (64, 64)), Bad())


def test_remover_that_finds_no_object():
    with pytest.raises(EngineInputError, match="stub remover found no object"):
        preprocess_image(Image.new("RGB", (64, 64)), StubRemover(value=150))


# ----------------------------------------------------------------------------------------------- bad input


def test_corrupt_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(EngineInputError, match="not an image file"):
        preprocess_image(junk)
    data = png_bytes(rgba(64, 64, np.full((64, 64), 128, np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineInputError, match="damaged or truncated"):
        preprocess_image(cut)
    with pytest.raises(EngineInputError, match="not found"):
        preprocess_image(tmp_path / "missing.png")


def test_empty_images():
    with pytest.raises(EngineInputError, match=r"empty \(0x0"):
        preprocess_image(Image.new("RGBA", (0, 0)))
    with pytest.raises(EngineInputError, match="empty"):
        preprocess_image(np.zeros((0, 5, 4), np.uint8))


def test_sixteen_bit_pngs():
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    image = load_image(png_16bit(grey, color_type=0))
    assert image.mode.startswith("I")
    out = np.asarray(preprocess_image(image, StubRemover(0.5)))  # matte rows/cols 16..47: box (16.5 .. 46.5) -> 30 px
    assert out.shape == (30, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], (grey >> 8)[16:46, 16:46])  # the high byte

    colour = np.zeros((32, 32, 4), np.uint16)
    colour[8:24, 8:24] = (65535, 32896, 0, 65535)  # opaque square in a transparent frame: own alpha, no remover
    out = np.asarray(preprocess_image(load_image(png_16bit(colour, color_type=6))))
    assert out.shape == (14, 14, 3)
    np.testing.assert_array_equal(out[7, 7], (255, 128, 0))


def test_greyscale_palette_and_cmyk_inputs():
    grey = Image.fromarray(np.full((40, 40), 90, np.uint8), "L")
    remover = StubRemover()
    out = preprocess_image(grey, remover)
    assert remover.calls == [("RGB", (40, 40))] and np.all(np.asarray(out) == 90)

    grey_alpha = Image.merge("LA", (grey, Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 10), "L")))
    assert preprocess_image(grey_alpha).size == (18, 18)  # its own alpha: no remover needed

    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    palette.paste(1, (10, 10, 30, 30))
    palette.info["transparency"] = 0
    out = np.asarray(preprocess_image(load_image(png_bytes(palette))))
    assert out.shape == (18, 18, 3) and np.all(out == (250, 10, 10))
    palette.info.pop("transparency")
    with pytest.raises(EngineInputError, match="no transparency"):
        preprocess_image(load_image(png_bytes(palette)))

    cmyk = Image.new("CMYK", (48, 48), (0, 255, 255, 0))  # red
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    out = np.asarray(preprocess_image(buf.getvalue(), StubRemover()))
    assert out.shape[2] == 3 and out[..., 0].min() > 200 and out[..., 1:].max() < 60


def test_float_and_odd_inputs_are_refused():
    with pytest.raises(EngineInputError, match="floating-point"):
        preprocess_image(Image.new("F", (8, 8)), StubRemover())
    with pytest.raises(EngineInputError, match="uint8"):
        preprocess_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(EngineInputError, match="cannot read an image from a list"):
        preprocess_image([1, 2, 3])


def test_transparent_and_faint_objects():
    with pytest.raises(EngineInputError, match="fully transparent"):
        preprocess_image(rgba(50, 50, np.zeros((50, 50), np.uint8)))
    with pytest.raises(EngineInputError, match=r"highest alpha 204 of 255"):
        preprocess_image(rgba(50, 50, np.full((50, 50), 204, np.uint8)))
    single = np.zeros((50, 50), np.uint8)
    single[10, 10] = 255
    with pytest.raises(EngineInputError, match="only 1 pixel"):
        preprocess_image(rgba(50, 50, single))


def test_huge_image_is_capped_first():
    """12000 x 12000 (a big photo): PIL decodes up to ~179 MP; it is reduced to 1024 px before removal."""
    remover = StubRemover(0.5)
    out = preprocess_image(Image.new("RGB", (12000, 12000), (200, 100, 50)), remover)
    assert remover.calls == [("RGB", (1024, 1024))]
    assert out.size == (510, 510)  # matte 256..767: size 511, centre 511.5 -> box 256.5 .. 766.5 -> 256 .. 766
    assert np.all(np.asarray(out) == (200, 100, 50))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # a 400-megapixel PNG: refused unread
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(EngineInputError, match="too large"):
        load_image(bomb)


# ----------------------------------------------------------------------------------------------- DINOv3


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory):
    """A random DINOv3 ViT (2 layers, width 32, 4 registers) saved with save_pretrained as safetensors.

    The final norm gets non-trivial affine parameters so that using it instead of the affine-free
    norm changes the features.
    """
    transformers = pytest.importorskip("transformers")
    config = transformers.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_register_tokens=4
    )
    torch.manual_seed(0)
    model = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
            if hasattr(module, "lambda1"):
                module.lambda1.normal_(0.5, 0.2)
    folder = tmp_path_factory.mktemp("dinov3")
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def reference_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """The official input pipeline written out independently: LANCZOS, RGB, /255, ImageNet mean/std."""
    array = np.asarray(image.resize((size, size), Image.LANCZOS).convert("RGB")).astype(np.float32) / 255
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("size", [32, 64])
def test_dinov3_features_are_the_affine_free_norm_of_the_last_hidden_state(tiny_dinov3, size):
    folder, model = tiny_dinov3
    encoder = load_dinov3(folder)
    image = preprocess_image(rgba(90, 70, np.pad(np.full((50, 50), 255, np.uint8), ((10, 10), (20, 20))), seed=5))

    pixels = image_to_tensor(image, size)
    torch.testing.assert_close(pixels, reference_pixels(image, size), rtol=0, atol=0)
    features = encoder.encode(image, size)
    assert features.shape == (1, 1 + 4 + (size // 16) ** 2, 32) == (1, encoder.num_tokens(size), 32)

    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    last = out.hidden_states[-1]  # the last layer's output, before the model's own final norm
    torch.testing.assert_close(model.norm(last), out.last_hidden_state)  # (what that state is in this version)
    expected = F.layer_norm(last, (32,), eps=1e-5)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    assert (features - out.last_hidden_state).abs().max() > 0.1  # the final norm would be a different answer


def test_dinov3_loading_is_strict_and_safetensors_only(tiny_dinov3, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = tiny_dinov3
    state = load_file(str(folder / "model.safetensors"))
    broken = tmp_path / "missing-key"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: v for k, v in state.items() if k != "norm.weight"}, str(broken / "model.safetensors"))
    with pytest.raises(WeightsError, match="missing_keys: norm.weight"):
        load_dinov3(broken)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(WeightsError, match="pytorch_model.bin: pickles are never loaded"):
        load_dinov3(pickled)

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(WeightsError, match="'dinov2' model, not DINOv3"):
        load_dinov3(other)

    with pytest.raises(EngineInputError, match="multiple of 16"):
        load_dinov3(folder).encode(Image.new("RGB", (8, 8)), 520)
