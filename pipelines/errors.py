"""One exception hierarchy for everything that can go wrong in the engine.

`server/` maps these to HTTP status codes in one place; the CLI maps them to
a one-line message and a non-zero exit.
"""


class SegswapError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidInput(SegswapError):
    """The caller's input cannot be used (bad image, empty mask, bad value).

    `field` names the request field at fault, when there is one.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def describe(self, label: str | None = None) -> str:
        """The message prefixed by the field, named as the caller names it (`field 'x'`, `--x`)."""
        if self.field is None:
            return str(self)
        return f"{label or self.field}: {self}"


class WeightsError(SegswapError):
    """Model weights are missing, incomplete, corrupt or cannot be fetched."""


class EngineUnavailable(SegswapError):
    """The requested engine cannot run here (no weights, no device)."""


class Stopped(SegswapError):
    """The caller asked the work to stop before it ended (its deadline passed, its client left)."""
