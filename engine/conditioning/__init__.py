"""Image conditioning: the preprocessed crop (spec 7.1) and its DINOv3 tokens (spec 7.2).

Importing this package does not import transformers; `load_dinov3` does, on first use.
"""

from engine.conditioning.dinov3 import DinoV3Encoder, ImageEncoder, image_to_tensor, load_dinov3
from engine.conditioning.preprocess import (
    ALPHA_THRESHOLD,
    MAX_SIDE,
    ImageInput,
    load_image,
    preprocess_image,
)

__all__ = [
    "ALPHA_THRESHOLD",
    "MAX_SIDE",
    "DinoV3Encoder",
    "ImageEncoder",
    "ImageInput",
    "image_to_tensor",
    "load_dinov3",
    "load_image",
    "preprocess_image",
]
