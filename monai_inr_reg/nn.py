"""``nn.Module`` s built from tiny-cuda-nn style config dicts: the hash-grid encoding and coordinate nets.

Backends of :class:`HashGridEncoding` (chosen per call, ``backend="auto"``):

- ``"tcnn"``: tiny-cuda-nn's ``HashGrid`` on CUDA when ``tinycudann`` imports (fixed at
  construction, needs ``device="cuda"``; its grid is offset by half a cell from ours, see
  :mod:`monai_inr_reg.core.encoding`);
- ``"kernel"``: the compiled C++ CPU kernel (:mod:`monai_inr_reg._ext`) for CPU inputs when it
  builds (``MONAI_INR_REG_NO_EXT=1`` disables it);
- ``"torch"``: the pure-PyTorch path (:func:`~monai_inr_reg.core.encoding.hash_grid_encode`).

All give the same values and gradients (to the tables and to the input points) up to rounding.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from .core.encoding import hash_grid_encode, hash_grid_spec, init_hash_grid_params
from .core.mlp import mlp_forward, mlp_spec

__all__ = ["HashGridEncoding", "CoordinateNet"]

logger = logging.getLogger(__name__)

_BACKENDS = ("auto", "torch", "kernel", "tcnn")


def _make_tcnn_encoding(n_input_dims: int, config: dict):
    """tiny-cuda-nn encoding from our config dict, or ``None`` when ``tinycudann`` does not import.

    ``finest_resolution`` is translated to ``per_level_scale`` (tiny-cuda-nn does not know it).
    Untestable here (no CUDA): kept to this one function.
    """
    try:
        import tinycudann as tcnn
    except ImportError:  # also covers a broken CUDA install
        return None
    spec = hash_grid_spec(n_input_dims, config)
    tcnn_config = {k: v for k, v in config.items() if k != "finest_resolution"}
    tcnn_config.update(otype="HashGrid", per_level_scale=spec.per_level_scale)
    logger.info("HashGridEncoding: using tinycudann HashGrid on CUDA (%s)", tcnn_config)
    return tcnn.Encoding(n_input_dims, tcnn_config, dtype=torch.float32)


class HashGridEncoding(nn.Module):
    """Multiresolution hash-grid encoding of points in ``[0, 1]^D``.

    Args:
        n_input_dims: D, 2 or 3.
        config: tiny-cuda-nn ``HashGrid`` dict (see :func:`~monai_inr_reg.core.encoding.hash_grid_spec`).
        backend: "auto" (tcnn on CUDA if available, else the compiled kernel for CPU inputs if it
            builds, else pure PyTorch), "torch", "kernel" (CPU inputs; raises RuntimeError at the first
            forward if it does not build; non-CPU inputs use pure PyTorch) or "tcnn" (needs CUDA).
        generator: RNG for the uniform(-1e-4, 1e-4) table init (reproducible per pair).
        device: where the tables live.

    Attributes:
        n_output_dims: ``L * F``.
        n_levels: L.
        spec: the validated :class:`~monai_inr_reg.core.encoding.HashGridSpec`.
    """

    def __init__(self, n_input_dims: int, config: dict | None = None, *, backend: str = "auto",
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        if backend not in _BACKENDS:
            raise ValueError(f"HashGridEncoding: 'backend' must be one of {_BACKENDS}, got {backend!r}")
        config = dict(config or {})
        self.spec = hash_grid_spec(n_input_dims, config)
        self.n_input_dims = n_input_dims
        self.n_output_dims = self.spec.n_output_dims
        self.n_levels = self.spec.n_levels
        self.backend = backend
        self.tcnn = None
        on_cuda = device is not None and torch.device(device).type == "cuda"
        if backend == "tcnn" or (backend == "auto" and on_cuda):
            self.tcnn = _make_tcnn_encoding(n_input_dims, config) if on_cuda else None
            if self.tcnn is None and backend == "tcnn":
                raise ImportError("HashGridEncoding: backend='tcnn' needs a CUDA device and tinycudann "
                                  "(pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch)")
            if self.tcnn is None:
                logger.info("HashGridEncoding: tinycudann not available; using the PyTorch hash grid on %s", device)
        if self.tcnn is None:
            self.params = nn.Parameter(init_hash_grid_params(self.spec, generator=generator, device=device))

    def forward(self, points_unit: torch.Tensor, level_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``points_unit`` ``(P, D)`` in ``[0, 1]^D`` -> ``(P, L * F)`` features (level-major).

        ``level_weights`` ``(L,)`` multiplies each level's features (coarse-to-fine schedule).
        """
        if self.tcnn is not None:
            out = self.tcnn(points_unit.clamp(0.0, 1.0)).float()
            if level_weights is not None:
                out = (out.view(out.shape[0], self.n_levels, -1) * level_weights.view(1, -1, 1)).view(out.shape[0], -1)
            return out
        if self.backend != "torch" and points_unit.device.type == "cpu":
            from . import _ext

            if self.backend == "kernel" or _ext.kernel_available():
                return _ext.hash_grid_encode_kernel(points_unit, self.params, self.spec, level_weights)
        return hash_grid_encode(points_unit, self.params, self.spec, level_weights)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"n_input_dims={s.n_dims}, n_levels={s.n_levels}, n_features={s.n_features}, "
                f"log2_hashmap_size={s.log2_hashmap_size}, resolutions={s.resolutions[0]}..{s.resolutions[-1]}, "
                f"dense_levels={s.n_dense}, backend={self.backend!r}")


class CoordinateNet(nn.Module):
    """Hash-grid encoding followed by an MLP: points in ``[0, 1]^D`` -> ``n_output_dims`` values.

    Args:
        n_input_dims: D, 2 or 3.
        n_output_dims: output channels (D for a motion net, C for an image net).
        encoding_config: tiny-cuda-nn ``HashGrid`` dict.
        network_config: tiny-cuda-nn network dict (:func:`~monai_inr_reg.core.mlp.mlp_spec`).
        zero_init_output: zero the last layer's weights and bias, so the net starts at exactly 0
            (the motion net starts at the identity).
        backend: encoding backend, see :class:`HashGridEncoding`.
        generator: RNG for every initialisation (tables and MLP), for reproducible runs.
        device: where the parameters live.
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, encoding_config: dict | None = None,
                 network_config: dict | None = None, *, zero_init_output: bool = False, backend: str = "auto",
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        self.encoding = HashGridEncoding(n_input_dims, encoding_config, backend=backend, generator=generator, device=device)
        self.mlp_spec = mlp_spec(self.encoding.n_output_dims, n_output_dims, network_config)
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        self.n_levels = self.encoding.n_levels
        widths = self.mlp_spec.widths
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, drawn from `generator`
            w = torch.empty(fan_out, fan_in, device=device).uniform_(-bound, bound, generator=generator)
            b = torch.empty(fan_out, device=device).uniform_(-bound, bound, generator=generator)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        if zero_init_output:
            with torch.no_grad():
                self.weights[-1].zero_()
                self.biases[-1].zero_()

    def forward(self, points_unit: torch.Tensor, level_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``(P, D)`` points in ``[0, 1]^D`` -> ``(P, n_output_dims)``; ``level_weights`` ``(L,)`` optional.

        The MLP runs in the compiled kernel where the encoding would (CPU, backend not "torch") and
        the kernel computes it (:func:`monai_inr_reg._ext.mlp_kernel_supports`); else in PyTorch."""
        features = self.encoding(points_unit, level_weights)
        weights, biases = list(self.weights), list(self.biases)
        if self.encoding.tcnn is None and self.encoding.backend != "torch" and features.device.type == "cpu":
            from . import _ext

            if _ext.mlp_kernel_supports(features, weights, self.mlp_spec) and (
                    self.encoding.backend == "kernel" or _ext.kernel_available()):
                return _ext.mlp_forward_kernel(features, weights, biases, self.mlp_spec)
        return mlp_forward(features, weights, biases, self.mlp_spec)

    def runs_in_kernel(self, points_unit: torch.Tensor) -> bool:
        """Whether :meth:`forward` computes ``points_unit`` with the compiled encoding and MLP (then
        :func:`monai_inr_reg._ext.image_net_l2_kernel` computes the same net)."""
        if self.encoding.tcnn is not None or self.encoding.backend == "torch" or points_unit.device.type != "cpu":
            return False
        from . import _ext

        features = points_unit.new_empty(0, self.encoding.n_output_dims, dtype=self.encoding.params.dtype)
        return ((self.encoding.backend == "kernel" or _ext.kernel_available())
                and _ext.mlp_kernel_supports(features, list(self.weights), self.mlp_spec))

    def encoding_parameters(self) -> list[nn.Parameter]:
        """The hash tables (give them their own, larger learning rate)."""
        return list(self.encoding.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        """The MLP weights and biases."""
        return list(self.weights) + list(self.biases)
