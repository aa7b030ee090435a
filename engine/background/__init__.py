"""Background removal: the remover interface the pipeline uses, and the policy for when to call it.

TRELLIS.2 conditions on the object alone, so every input needs an alpha matte. An image that carries
its own (some alpha < 255) keeps it and never reaches a remover (spec 7.1); any other image is sent to
the remover, and a matte that finds no object (or no background) stops the run with a message that
says what to do. The BiRefNet remover lives in `engine.background.remover`, imported on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from PIL import Image

from engine.errors import EngineError, EngineInputError

# Alpha above this counts as the object: the threshold of the crop that follows (0.8 * 255, spec 7.1).
FOREGROUND_LEVEL = 204


class BackgroundRemover(ABC):
    """Anything that turns an RGB image into an alpha matte of the same size."""

    name: str = "background remover"

    @abstractmethod
    def remove(self, image: Image.Image) -> Image.Image:
        """Return an "L" matte of `image.size` (255 = object, 0 = background)."""


def _alpha(image: Image.Image) -> Image.Image | None:
    """The image's own alpha channel ("L"), or None when it has no transparency at all."""
    if image.mode == "RGBA":
        return image.getchannel("A")
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def needs_matte(image: Image.Image) -> bool:
    """False when the image already carries a matte: an alpha channel with some value below 255.

    Beyond the official check (RGBA only), "LA", "PA", premultiplied and palette images with a
    transparent colour count too: they would otherwise lose their alpha to a remover.
    """
    alpha = _alpha(image)
    return alpha is None or alpha.getextrema()[0] == 255


def apply_matte(image: Image.Image, matte: Image.Image) -> Image.Image:
    """The image's colours with `matte` as alpha, as an RGBA image."""
    if matte.mode != "L" or matte.size != image.size:
        raise EngineError(f"a matte must be an 'L' image of size {image.size}, got mode {matte.mode} {matte.size}")
    rgba = image.convert("RGB").convert("RGBA")
    rgba.putalpha(matte)
    return rgba


def check_matte(matte: Image.Image, remover_name: str) -> None:
    """Raise EngineInputError when the matte holds no object, or nothing but the object."""
    low, high = matte.getextrema()
    advice = (
        "Supply an image with transparency (an alpha channel around the object), or pick another background remover."
    )
    if high <= FOREGROUND_LEVEL:
        raise EngineInputError(f"{remover_name} found no object in this image (the matte is empty). {advice}")
    if low > FOREGROUND_LEVEL:
        raise EngineInputError(
            f"{remover_name} found no background in this image (the whole frame was kept as the object). {advice}"
        )


def ensure_alpha(image: Image.Image, remover: BackgroundRemover | None) -> Image.Image:
    """An RGBA image whose alpha isolates the object: the image's own alpha if it has one, else the remover's."""
    if not needs_matte(image):
        return image.convert("RGBA")
    if remover is None:
        raise EngineInputError(
            "This image has no transparency and background removal is off: supply an image with transparency "
            "(an alpha channel around the object), or enable background removal (BiRefNet, MIT licence) "
            "so the object is cut out automatically."
        )
    rgb = image.convert("RGB")
    name = getattr(remover, "name", type(remover).__name__)
    matte = remover.remove(rgb)
    if not isinstance(matte, Image.Image) or matte.mode != "L" or matte.size != rgb.size:
        got = f"a {matte.mode} matte of size {matte.size}" if isinstance(matte, Image.Image) else type(matte).__name__
        raise EngineError(f"{name} returned {got}, not an 'L' matte of {rgb.size}")
    check_matte(matte, name)
    return apply_matte(rgb, matte)


__all__ = [
    "FOREGROUND_LEVEL",
    "BackgroundRemover",
    "apply_matte",
    "check_matte",
    "ensure_alpha",
    "needs_matte",
]
