"""Coordinate MLP as pure tensor functions, configured with tiny-cuda-nn's ``network`` dict.

A network dict (``otype`` "FullyFusedMLP" | "CutlassMLP" | "MLP", ``activation``,
``output_activation``, ``n_neurons``, ``n_hidden_layers``) describes ``n_hidden_layers`` hidden
layers of width ``n_neurons`` followed by a linear output layer, i.e. ``n_hidden_layers + 1``
affine maps. Unlike tiny-cuda-nn's fused MLPs, ours have biases (the motion net's zero-initialised
output layer then starts exactly at zero displacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .reduce import linear

__all__ = ["MLPSpec", "mlp_spec", "mlp_forward", "ACTIVATIONS", "VALID_NETWORK_KEYS"]

ACTIVATIONS = {
    "None": lambda t: t,
    "ReLU": F.relu,
    "LeakyReLU": lambda t: F.leaky_relu(t, 0.01),
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softplus": F.softplus,
    "Exponential": torch.exp,
    "Sine": torch.sin,
}

_OTYPES = ("FullyFusedMLP", "CutlassMLP", "MLP")
_DEFAULTS = {
    "otype": "FullyFusedMLP",
    "activation": "ReLU",
    "output_activation": "None",
    "n_neurons": 64,
    "n_hidden_layers": 2,
}
VALID_NETWORK_KEYS = tuple(_DEFAULTS)


@dataclass(frozen=True)
class MLPSpec:
    """Validated MLP layout: ``widths`` lists every layer's input then the output width."""

    activation: str
    output_activation: str
    n_neurons: int
    n_hidden_layers: int
    widths: tuple[int, ...]


def mlp_spec(n_input_dims: int, n_output_dims: int, config: dict | None = None) -> MLPSpec:
    """Validate a tiny-cuda-nn network dict.

    Raises:
        ValueError: unknown keys (the message lists the valid ones), unknown otype/activation,
            non-positive sizes.
    """
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise TypeError(f"mlp_spec(): 'config' must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"mlp_spec(): unknown network keys {unknown}; valid keys are {list(VALID_NETWORK_KEYS)}")
    cfg = {**_DEFAULTS, **config}
    if cfg["otype"] not in _OTYPES:
        raise ValueError(f"mlp_spec(): network 'otype' must be one of {list(_OTYPES)}, got {cfg['otype']!r}")
    for key in ("activation", "output_activation"):
        if cfg[key] not in ACTIVATIONS:
            raise ValueError(f"mlp_spec(): network '{key}' must be one of {list(ACTIVATIONS)}, got {cfg[key]!r}")
    for key, lo in (("n_neurons", 1), ("n_hidden_layers", 0)):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"mlp_spec(): network '{key}' must be an integer >= {lo}, got {value!r}")
    for name, value in (("n_input_dims", n_input_dims), ("n_output_dims", n_output_dims)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"mlp_spec(): '{name}' must be a positive integer, got {value!r}")
    widths = (n_input_dims,) + (cfg["n_neurons"],) * cfg["n_hidden_layers"] + (n_output_dims,)
    return MLPSpec(cfg["activation"], cfg["output_activation"], cfg["n_neurons"], cfg["n_hidden_layers"], widths)


def mlp_forward(features: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                spec: MLPSpec) -> torch.Tensor:
    """Apply the MLP.

    Args:
        features: ``(P, widths[0])`` inputs (e.g. hash-grid features).
        weights: per layer ``(widths[i + 1], widths[i])`` (``nn.Linear`` layout).
        biases: per layer ``(widths[i + 1],)``.
        spec: from :func:`mlp_spec`.

    Returns:
        ``(P, widths[-1])``.
    """
    hidden, last = ACTIVATIONS[spec.activation], ACTIVATIONS[spec.output_activation]
    h = features
    n = len(weights)
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = linear(h, w, b)  # gradients summed over the points in an order independent of the thread count
        if i < n - 1 and spec.activation == "ReLU":
            h = F.relu_(h)  # in place: linear's backward does not need its output; saves a (P, width) buffer
        else:
            h = hidden(h) if i < n - 1 else last(h)
    return h
