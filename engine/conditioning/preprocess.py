"""Image preprocessing: from whatever the user gave to the square, premultiplied-on-black crop (spec 7.1).

`preprocess_image` mirrors the official `Trellis2ImageTo3DPipeline.preprocess_image` step by step:
alpha is used when the image is RGBA with some alpha < 255; the longest side is capped at 1024 with
LANCZOS (new size by int truncation, before background removal); otherwise the background remover
supplies the matte; the crop is the inclusive bbox of alpha > 0.8 * 255, centred, `size // 2` either
side, with PIL rounding the float box (Python `round`); the result is RGB * alpha in float32, truncated
back to uint8. The official code crashes on inputs it does not expect; here every one of them is an
`EngineInputError` that says what to do, or one of the documented conversions in `as_rgb_or_rgba`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.background import BackgroundRemover, ensure_alpha, needs_matte
from engine.errors import EngineInputError

MAX_SIDE = 1024  # longest side after the cap, before background removal
ALPHA_THRESHOLD = 0.8 * 255  # pixels with alpha above this make the crop box (alpha >= 205)
# PIL refuses to decode more than twice its MAX_IMAGE_PIXELS (a decompression-bomb guard); in-memory
# images get the same limit so that the behaviour does not depend on where the image came from.
MAX_PIXELS = 2 * 89_478_485

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias)


def load_image(source: ImageInput) -> Image.Image:
    """Decode a file path, encoded bytes, a uint8 array or a PIL image, fully, into memory.

    Files get their EXIF orientation applied (what every viewer shows); a PIL image is used as given.
    """
    if isinstance(source, Image.Image):
        return _decode(lambda: source, "the image")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, bytes | bytearray):
        return ImageOps.exif_transpose(_decode(lambda: Image.open(io.BytesIO(source)), "the image data"))
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        if not path.is_file():
            raise EngineInputError(f"image file not found: {path}")
        return ImageOps.exif_transpose(_decode(lambda: Image.open(path), str(path)))
    raise EngineInputError(f"cannot read an image from a {type(source).__name__}; pass a file path or a PIL image")


def _decode(open_image, what: str) -> Image.Image:
    try:
        image = open_image()
        _check_size(image, what)
        image.load()
    except Image.DecompressionBombError as exc:
        raise EngineInputError(f"{what} is too large to process safely ({exc}); downscale it first") from exc
    except (UnidentifiedImageError, SyntaxError) as exc:
        raise EngineInputError(f"{what} is not an image file PIL can read ({exc}); save it as PNG or JPEG") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise EngineInputError(f"{what} is damaged or truncated ({exc}); re-export it and try again") from exc
    return image


def _check_size(image: Image.Image, what: str) -> None:
    w, h = image.size
    if w <= 0 or h <= 0:
        raise EngineInputError(f"{what} is empty ({w}x{h} pixels)")
    if w * h > MAX_PIXELS:
        raise EngineInputError(
            f"{what} is {w}x{h} = {w * h / 1e6:.0f} megapixels, more than the {MAX_PIXELS / 1e6:.0f} megapixels "
            "that are decoded safely; downscale it first (it is reduced to 1024 pixels anyway)"
        )


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise EngineInputError(f"an image array must be uint8 (0-255), got {array.dtype}; scale and cast it first")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise EngineInputError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise EngineInputError(f"the image array is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    return Image.fromarray(np.ascontiguousarray(array))


def as_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Every PIL mode reduced to "RGB" or "RGBA" (the two the official code is written for).

    Documented conversions beyond the official code (which would lose the transparency of these or crash):
    * "LA", "La", "PA", "RGBa" and palette/grey/RGB images with a transparent colour -> RGBA;
    * 16-bit greyscale ("I;16*", and "I" with values above 255) -> its high byte, as PIL does for
      16-bit colour PNGs; "1", "L", "CMYK", "YCbCr", "LAB", "HSV" -> RGB with PIL's conversion;
    * floating-point images ("F") are refused: their range is unknown.
    """
    _check_size(image, "the image")
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image if "transparency" not in image.info or mode == "RGBA" else image.convert("RGBA")
    if mode.startswith("I"):
        values = np.asarray(image).astype(np.int64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = np.clip(values, 0, 65535) >> 8
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        raise EngineInputError("floating-point images are not supported; save the image as an 8- or 16-bit PNG")
    if mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise EngineInputError(f"images in PIL mode {mode!r} are not supported ({exc}); save it as PNG") from exc


def cap_size(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Longest side at most `max_side`, LANCZOS, new size by int truncation (the official expression)."""
    scale = min(1, max_side / max(image.size))
    if scale < 1:
        image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def alpha_crop_box(alpha: np.ndarray, remover_name: str | None = None) -> tuple[float, float, float, float]:
    """The official crop box: bbox of alpha > 0.8*255 (inclusive), centred, `size // 2` each side.

    The box may hold .5 values; `Image.crop` rounds them with Python's `round` (half to even).
    """
    rows, cols = np.nonzero(alpha > ALPHA_THRESHOLD)
    if rows.size == 0:
        peak = int(alpha.max(initial=0))
        what = "fully transparent" if peak == 0 else f"nowhere more than 80% opaque (highest alpha {peak} of 255)"
        if remover_name is not None:
            raise EngineInputError(
                f"{remover_name} found no object in this image (its mask is {what}). Use a picture where the object "
                "stands out from the background, or supply an image with transparency around the object."
            )
        raise EngineInputError(
            f"the image's alpha channel is {what}, so there is no object to crop to. Make the object opaque "
            "(alpha above 204), or remove the alpha channel so that background removal makes the mask."
        )
    x0, x1, y0, y1 = int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())
    size = max(x1 - x0, y1 - y0)
    if size // 2 == 0:
        raise EngineInputError(
            f"the object is only {size + 1} pixel(s) across after the {MAX_SIDE}-pixel cap; use a larger picture"
        )
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = size // 2
    return (cx - half, cy - half, cx + half, cy + half)


def premultiply(rgba: Image.Image) -> Image.Image:
    """RGB * alpha on black: float32 with /255, then truncated to uint8 (`astype`), as the official code."""
    pixels = np.asarray(rgba, dtype=np.uint8).astype(np.float32) / 255  # [H, W, 4]
    rgb = pixels[:, :, :3] * pixels[:, :, 3:4]
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def preprocess_image(image: ImageInput, remover: BackgroundRemover | None = None) -> Image.Image:
    """The conditioning image: square, object centred, premultiplied on black, at most 1024 px (spec 7.1)."""
    image = as_rgb_or_rgba(load_image(image))
    own_alpha = not needs_matte(image)  # decided on the input, before the cap, as the official code does
    image = cap_size(image)
    rgba = ensure_alpha(image, None if own_alpha else remover)
    remover_name = None if own_alpha else getattr(remover, "name", type(remover).__name__)
    box = alpha_crop_box(np.asarray(rgba.getchannel("A")), remover_name)
    return premultiply(rgba.crop(box))
