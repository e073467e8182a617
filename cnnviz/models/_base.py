"""Shared pieces of the case-study models: input checking, argument validation, counting.

Every model in :mod:`cnnviz.models` mixes in :class:`InputCheckMixin`, so a wrong input fails at
the first line of ``forward`` with a message that states the expected shape, instead of a shape
mismatch deep inside a ``Linear`` layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cnnviz._checks import check_count

__all__ = [
    "InputCheckMixin",
    "check_choice",
    "check_positive_float",
    "check_positive_int",
    "check_probability",
    "count_parameters",
]


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Count the scalar parameters of ``module`` (shared parameters counted once).

    Args:
        module: Any ``nn.Module``.
        trainable_only: Count only parameters with ``requires_grad=True``.

    Returns:
        The number of scalar parameters.

    Raises:
        TypeError: If ``module`` is not an ``nn.Module``.

    Example:
        >>> count_parameters(torch.nn.Linear(4, 2))
        10
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"`module` must be a torch.nn.Module; got {type(module).__name__}. "
            "Pass the model itself, e.g. count_parameters(model)."
        )
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise naming ``name``.

    Raises:
        TypeError: If ``value`` is not an integer (``bool`` is rejected).
        ValueError: If ``value`` < 1.
    """
    return int(check_count(owner, name, value))


def check_positive_float(owner: str, name: str, value: Any) -> float:
    """Return ``value`` as float if it is a real number > 0, else raise naming ``name``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If ``value`` <= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: `{name}` must be a number; got {type(value).__name__} {value!r}."
        )
    if not value > 0:
        raise ValueError(f"{owner}: `{name}` must be > 0; got {value}.")
    return float(value)


def check_probability(owner: str, name: str, value: Any) -> float:
    """Return ``value`` as float if it is a number in [0, 1), else raise naming ``name``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If ``value`` is outside [0, 1).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: `{name}` must be a number; got {type(value).__name__} {value!r}."
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: `{name}` must be in [0, 1); got {value}.")
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise listing them.

    Raises:
        ValueError: If ``value`` is not one of ``choices``.
    """
    options = tuple(choices)
    if isinstance(value, bool) or value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ValueError(f"{owner}: `{name}` must be one of {listed}; got {value!r}.")
    return value


def _format_shape(dims: Iterable[Any]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


class InputCheckMixin:
    """Validate a model's input at the top of ``forward``.

    Subclasses (always together with ``nn.Module``) set, in ``__init__``:

    * ``model_name`` -- registry name used in messages, e.g. ``"lenet5"``;
    * ``expected_input_shape`` -- the input shape without the batch dimension for which the model
      was built, e.g. ``(1, 32, 32)``; other code (report, receptive fields, probe checks) reads it;
    * ``min_input_size`` -- ``None`` when the spatial size must match exactly (models with a
      fixed-size classifier), or the smallest accepted height/width (global-pool models);
    * ``supported_input_sizes`` -- the ``input_size`` values the constructor accepts (for hints).

    The check is skipped while ``torch.fx`` or ``torch.jit`` traces the model, so feature
    extractors built with ``torchvision.models.feature_extraction`` keep working.
    """

    model_name: str
    expected_input_shape: tuple[int, ...]
    min_input_size: int | None
    supported_input_sizes: tuple[int, ...]

    def _skip_input_check(self, x: Any) -> bool:
        return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.jit.is_scripting()

    def _hint(self) -> str:
        sizes = ", ".join(str(s) for s in self.supported_input_sizes)
        return (
            " Resize or convert the input, or build the model for it with matching "
            f"`in_channels` and `input_size` (supported input_size values: {sizes})."
        )

    def check_input(self, x: Any) -> None:
        """Raise if ``x`` is not an image batch this model accepts.

        Args:
            x: The batch passed to ``forward``, shape ``(N, C, H, W)``.

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: If its rank, channels or spatial size do not fit; the message states the
                expected shape.
        """
        if self._skip_input_check(x):
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{self.model_name} expects a torch.Tensor input; got {type(x).__name__}."
            )
        channels, height, width = self.expected_input_shape
        got = _format_shape(x.shape)
        if self.min_input_size is None:
            if x.dim() != 4 or tuple(x.shape[1:]) != (channels, height, width):
                raise ValueError(
                    f"{self.model_name} expects input of shape (N, {channels}, {height}, {width})"
                    f"; got {got}." + self._hint()
                )
            return
        low = self.min_input_size
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] < low or x.shape[3] < low:
            raise ValueError(
                f"{self.model_name} expects input of shape (N, {channels}, H, W) with H, W >= "
                f"{low} (built for (N, {channels}, {height}, {width})); got {got}." + self._hint()
            )
