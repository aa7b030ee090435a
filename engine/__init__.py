"""blender-trellis2 engine: TRELLIS.2 image-to-3D in pure Python + PyTorch (never imports bpy).

Importing this package is cheap and has no side effects beyond a NullHandler on the `engine` logger.
"""

import logging

from engine.errors import Cancelled, EngineError, EngineInputError, WeightsError
from engine.runtime import Runtime

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["Cancelled", "EngineError", "EngineInputError", "Runtime", "WeightsError"]
