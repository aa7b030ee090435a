"""Shared fixtures: a tiny random TRELLIS.2 checkpoint in the official layout, written once per session."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from engine.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_trellis2"), seed=0)


def draw_object(size: int = 128, colour=(200, 80, 40), shift: int = 0) -> Image.Image:
    """An RGBA picture of one opaque object on a transparent background."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((24 + shift, 16, size - 24 + shift, size - 12), fill=(*colour, 255))
    return image


@pytest.fixture
def object_image() -> Image.Image:
    return draw_object()
