"""User-facing errors: each carries a one-line message that says what was wrong and what would be right."""

from __future__ import annotations


class FilterVizError(Exception):
    """Base class of every error a user can cause; the CLI prints its message and exits with status 2."""


class FilterVizWarning(UserWarning):
    """Something a user should know about a result: a dead or stuck unit, a fallback to another model.
    The CLI prints it as one ``filterviz: warning:`` line."""


class UnknownModelError(FilterVizError, KeyError):
    """A model name that filterviz does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownLayerError(FilterVizError, KeyError):
    """A layer name that the model does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class FilterIndexError(FilterVizError, IndexError):
    """A filter (channel) index outside the layer's range."""


class LayoutError(FilterVizError):
    """A layer output whose layout is not known (or not as given), so its channels cannot be read."""


class InputSizeError(FilterVizError, ValueError):
    """An input size at which the layer has no spatial output."""


class WeightsError(FilterVizError):
    """A weights file that is missing, unreadable or does not fit the architecture."""


class WeightsUnavailableError(WeightsError):
    """Pretrained weights that are neither cached nor downloadable right now."""


class MissingExtraError(FilterVizError, ImportError):
    """An optional dependency that a model source needs is not installed."""


class ModelFileError(FilterVizError):
    """A model file that is missing, of an unsupported type, or not what its name says."""


class OutputError(FilterVizError):
    """An output path that cannot be written."""


class MemoryBudgetError(FilterVizError):
    """A run that would need more memory than its budget (estimated before anything runs at its size)."""


class InputFileError(FilterVizError):
    """An input file (an image, a direction vector, a spectrum) that is missing, unreadable, or not what
    filterviz can use."""


class RenderCancelled(FilterVizError):
    """A render stopped before its last step because its ``callback`` returned False."""


class PathError(OutputError):
    """A path that no file can have here: empty, too long, or holding a NUL character."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line of text (shortened to ``limit``), to quote in a one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
