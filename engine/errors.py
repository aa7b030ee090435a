"""Errors the engine raises, with messages written for the person who has to act on them."""


class EngineError(Exception):
    """Base class: anything the add-on may catch and show to the user."""


class EngineInputError(EngineError, ValueError):
    """The caller handed the engine something it cannot work with (bad tensor, mesh, image, setting)."""


class WeightsError(EngineError):
    """Weights are missing, of the wrong format, or do not match the model they are loaded into."""


class Cancelled(EngineError):
    """The user asked to stop; raised between sampler steps, never mid-kernel."""
