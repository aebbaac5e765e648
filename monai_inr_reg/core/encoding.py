"""Multiresolution hash-grid encoding (Instant-NGP) as pure tensor functions, and level weights.

Configuration uses tiny-cuda-nn's names (a ``HashGrid`` encoding dict), so the same dict goes
to ``tinycudann`` on CUDA (see :mod:`monai_inr_reg.nn`) and to this PyTorch path elsewhere.

Resolution convention (ours; tiny-cuda-nn's grids are offset by half a cell, so its tables are
not interchangeable with ours -- irrelevant here, every net is fitted from scratch):

- Inputs are points in ``[0, 1]^D`` (``points_unit``, shape ``(P, D)``, D = 2 or 3); points
  outside are clamped to the box, so they read the box face's value and get zero coordinate
  gradient (as ``torch.clamp`` does).
- Level ``l`` (``0 <= l < L``) has ``R_l = floor(base_resolution * per_level_scale ** l)`` cells
  per unit along every axis. Its vertices sit at ``x = i / R_l`` for integer ``i = 0 .. R_l``, so
  the first and last vertices lie exactly on the box faces 0 and 1 (``grid_sample`` with
  ``align_corners=True``). A point's feature is the d-linear interpolation of its cell's
  ``2^D`` vertex features.
- A level whose ``(R_l + 1)^D`` vertices fit in ``T = 2^log2_hashmap_size`` entries is stored
  densely (vertex ``(i_0, .., i_{D-1})`` at ``i_0 + i_1 (R_l + 1) + i_2 (R_l + 1)^2``) and
  evaluated with ``grid_sample``; finer levels store ``T`` entries indexed by Instant-NGP's hash
  ``(i_0 * 1 ^ i_1 * 2654435761 ^ i_2 * 805459861) mod T``.

Parameters are one flat tensor ``params`` of shape ``(n_params,)`` (like tiny-cuda-nn). Level
``l`` occupies ``params[offset_l : offset_l + size_l * F]``; dense levels are laid out channel
first ``(F, size_l)`` (a free view for ``grid_sample``), hashed levels row-major ``(T, F)``
(one contiguous row per vertex for the gathers and the compiled kernel).

Output features are level-major: column ``l * F + f`` is feature ``f`` of level ``l``, shape
``(P, L * F)``, optionally multiplied by per-level weights ``(L,)`` (coarse-to-fine schedule,
:func:`level_weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "HashGridSpec",
    "hash_grid_spec",
    "init_hash_grid_params",
    "hash_grid_encode",
    "hash_grid_encode_reference",
    "level_tables",
    "level_weights",
    "HASH_PRIMES",
]

HASH_PRIMES = (1, 2654435761, 805459861)

_DEFAULTS = {
    "otype": "HashGrid",
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": 2.0,
    "finest_resolution": None,
    "interpolation": "Linear",
}
VALID_ENCODING_KEYS = tuple(_DEFAULTS)


@dataclass(frozen=True)
class HashGridSpec:
    """Validated, derived layout of a hash-grid encoding (hashable; used as a cache key).

    Attributes:
        n_dims: D, 2 or 3.
        n_levels: L.
        n_features: F, features per level.
        log2_hashmap_size: T = 2 ** log2_hashmap_size entries per hashed level.
        base_resolution: cells per unit of level 0.
        per_level_scale: resolution growth factor between levels (>= 1).
        resolutions: ``R_l`` cells per unit for each level.
        dense: whether each level is stored densely (``(R_l + 1)^D <= T``).
        sizes: stored vertices per level (``(R_l + 1)^D`` dense, ``T`` hashed).
        offsets: start of each level in the flat ``params`` (in scalars, not vertices).
        n_params: total number of scalars.
    """

    n_dims: int
    n_levels: int
    n_features: int
    log2_hashmap_size: int
    base_resolution: int
    per_level_scale: float
    resolutions: tuple[int, ...]
    dense: tuple[bool, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    n_params: int

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features

    @property
    def hashmap_size(self) -> int:
        return 1 << self.log2_hashmap_size

    @property
    def n_dense(self) -> int:
        """Dense levels come first (resolutions never decrease)."""
        return sum(self.dense)


def _int_arg(config: dict, key: str, lo: int, hi: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise TypeError(f"hash_grid_spec(): encoding '{key}' must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"hash_grid_spec(): encoding '{key}' must be in [{lo}, {hi}], got {value!r}")
    return int(value)


def hash_grid_spec(n_input_dims: int, config: dict | None = None) -> HashGridSpec:
    """Validate a tiny-cuda-nn ``HashGrid`` config dict and derive the level layout.

    Args:
        n_input_dims: D, 2 or 3.
        config: keys ``otype`` ("HashGrid"), ``n_levels``, ``n_features_per_level``,
            ``log2_hashmap_size``, ``base_resolution``, and either ``per_level_scale`` or
            ``finest_resolution`` (then ``per_level_scale = (finest / base) ** (1 / (L - 1))``;
            ``finest == base`` gives scale 1, all levels at the coarsest resolution: the
            near-rigid motion net), optional ``interpolation`` ("Linear"). Missing keys take
            tiny-cuda-nn's defaults.

    Raises:
        ValueError: unknown keys (the message lists the valid ones), bad values.
        TypeError: non-dict config or non-integer counts.
    """
    if n_input_dims not in (2, 3):
        raise ValueError(f"hash_grid_spec(): 'n_input_dims' must be 2 or 3, got {n_input_dims!r}")
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise TypeError(f"hash_grid_spec(): 'config' must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"hash_grid_spec(): unknown encoding keys {unknown}; valid keys are {list(VALID_ENCODING_KEYS)}")
    if "per_level_scale" in config and config.get("finest_resolution") is not None:
        raise ValueError("hash_grid_spec(): give either 'per_level_scale' or 'finest_resolution', not both")
    cfg = {**_DEFAULTS, **config}
    if cfg["otype"] != "HashGrid":
        raise ValueError(f"hash_grid_spec(): encoding 'otype' must be 'HashGrid', got {cfg['otype']!r}")
    if cfg["interpolation"] != "Linear":
        raise ValueError(f"hash_grid_spec(): encoding 'interpolation' must be 'Linear', got {cfg['interpolation']!r}")
    n_levels = _int_arg(cfg, "n_levels", 1, 64)
    n_features = _int_arg(cfg, "n_features_per_level", 1, 64)
    log2_t = _int_arg(cfg, "log2_hashmap_size", 1, 31)
    base = _int_arg(cfg, "base_resolution", 1, 1 << 20)
    if cfg["finest_resolution"] is not None:
        finest = _int_arg(cfg, "finest_resolution", 1, 1 << 20)
        if finest < base:
            raise ValueError(f"hash_grid_spec(): 'finest_resolution' ({finest}) must be >= 'base_resolution' ({base})")
        if n_levels == 1 and finest != base:
            raise ValueError(f"hash_grid_spec(): with n_levels=1, 'finest_resolution' ({finest}) must equal 'base_resolution' ({base})")
        scale = 1.0 if n_levels == 1 else (finest / base) ** (1.0 / (n_levels - 1))
    else:
        scale = cfg["per_level_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1.0:
            raise ValueError(f"hash_grid_spec(): 'per_level_scale' must be a finite number >= 1, got {scale!r}")
        scale = float(scale)
    table = 1 << log2_t
    resolutions, dense, sizes, offsets = [], [], [], []
    offset = 0
    for level in range(n_levels):
        # tiny relative guard so that (finest/base)^(1/(L-1)) lands exactly on `finest` at the top
        res = max(1, int(math.floor(base * scale**level * (1.0 + 1e-9))))
        n_vertices = (res + 1) ** n_input_dims
        is_dense = n_vertices <= table
        resolutions.append(res)
        dense.append(is_dense)
        sizes.append(n_vertices if is_dense else table)
        offsets.append(offset)
        offset += sizes[-1] * n_features
    return HashGridSpec(n_input_dims, n_levels, n_features, log2_t, base, scale, tuple(resolutions),
                        tuple(dense), tuple(sizes), tuple(offsets), offset)


def init_hash_grid_params(spec: HashGridSpec, *, generator: torch.Generator | None = None,
                          dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Flat parameters ``(n_params,)`` drawn uniform(-1e-4, 1e-4), as tiny-cuda-nn initialises them."""
    params = torch.empty(spec.n_params, dtype=dtype, device=device)
    return params.uniform_(-1e-4, 1e-4, generator=generator)


def level_tables(params: torch.Tensor, spec: HashGridSpec) -> list[torch.Tensor]:
    """Per-level views of ``params`` as ``(size_l, F)`` tables (row = vertex); dense ones transposed views."""
    out = []
    for level in range(spec.n_levels):
        n, f, start = spec.sizes[level], spec.n_features, spec.offsets[level]
        chunk = params[start : start + n * f]
        out.append(chunk.view(f, n).T if spec.dense[level] else chunk.view(n, f))
    return out


def level_weights(alpha: float, n_levels: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Coarse-to-fine weights ``(L,)``: ``w_k = (1 - cos(pi * clamp(alpha - k, 0, 1))) / 2``.

    ``alpha = 0`` switches every level off (the encoding outputs zeros); ``alpha >= L`` gives all
    ones; level ``k`` fades in as ``alpha`` goes from ``k`` to ``k + 1``.
    """
    # Python floats, one tensor at the end: called every iteration, where each torch op costs microseconds
    w = [(1.0 - math.cos(math.pi * min(max(float(alpha) - k, 0.0), 1.0))) / 2.0 for k in range(n_levels)]
    return torch.tensor(w, dtype=dtype, device=device)


def _check_inputs(points_unit: torch.Tensor, params: torch.Tensor, spec: HashGridSpec, weights, caller: str):
    if points_unit.ndim != 2 or points_unit.shape[1] != spec.n_dims:
        raise ValueError(f"{caller}(): 'points_unit' must have shape (P, {spec.n_dims}), got {tuple(points_unit.shape)}")
    if params.shape != (spec.n_params,):
        raise ValueError(f"{caller}(): 'params' must have shape ({spec.n_params},), got {tuple(params.shape)}")
    if weights is not None and tuple(weights.shape) != (spec.n_levels,):
        raise ValueError(f"{caller}(): 'level_weights' must have shape ({spec.n_levels},), got {tuple(weights.shape)}")


def _hash(ix: torch.Tensor, mask: int) -> torch.Tensor:
    """Instant-NGP spatial hash of integer vertices ``(..., D)`` (int64) -> ``(...)`` in [0, mask]."""
    h = ix[..., 0] * HASH_PRIMES[0]
    for d in range(1, ix.shape[-1]):
        h = h ^ (ix[..., d] * HASH_PRIMES[d])  # int64 products < 2^63: the low bits equal uint32 maths
    return h & mask


def _corner_offsets(n_dims: int, device) -> torch.Tensor:
    """``(2^D, D)`` int64 0/1 corner offsets; corner c has bit d = offset along axis d."""
    c = torch.arange(1 << n_dims, device=device)
    return torch.stack([(c >> d) & 1 for d in range(n_dims)], dim=1)


def hash_grid_encode_reference(points_unit: torch.Tensor, params: torch.Tensor, spec: HashGridSpec,
                               level_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Slow, plain reference: every level by explicit gathers (same maths as :func:`hash_grid_encode`).

    Args:
        points_unit: ``(P, D)`` points in ``[0, 1]^D`` (clamped).
        params: ``(n_params,)`` flat tables.
        spec: from :func:`hash_grid_spec`.
        level_weights: optional ``(L,)`` weights.

    Returns:
        ``(P, L * F)`` features, level-major, in ``params``' dtype.
    """
    _check_inputs(points_unit, params, spec, level_weights, "hash_grid_encode_reference")
    x = points_unit.to(params.dtype).clamp(0.0, 1.0)
    offsets = _corner_offsets(spec.n_dims, x.device)
    feats = []
    for level, table in enumerate(level_tables(params, spec)):
        res = spec.resolutions[level]
        pos = x * res
        cell = torch.floor(pos).clamp(max=res - 1).detach()
        frac = pos - cell
        out = 0.0
        for c in range(1 << spec.n_dims):
            corner = cell.long() + offsets[c]
            w = torch.ones_like(frac[:, 0])
            for d in range(spec.n_dims):
                w = w * (frac[:, d] if offsets[c, d] else 1.0 - frac[:, d])
            if spec.dense[level]:
                strides = torch.tensor([(res + 1) ** d for d in range(spec.n_dims)], device=x.device)
                index = (corner * strides).sum(1)
            else:
                index = _hash(corner, spec.hashmap_size - 1)
            out = out + w[:, None] * table[index]
        if level_weights is not None:
            out = out * level_weights[level].to(out.dtype)
        feats.append(out)
    return torch.cat(feats, dim=1)


@dataclass(frozen=True)
class _Plan:
    """Static evaluation plan for a spec: groups of equal dense levels, then the hashed block."""

    dense_groups: tuple[tuple[int, int], ...]  # (first level, number of levels) with equal resolution
    first_hashed: int


@lru_cache(maxsize=64)
def _plan(spec: HashGridSpec) -> _Plan:
    groups = []
    for level in range(spec.n_dense):
        if groups and spec.resolutions[groups[-1][0]] == spec.resolutions[level]:
            groups[-1][1] += 1
        else:
            groups.append([level, 1])
    return _Plan(tuple((a, b) for a, b in groups), spec.n_dense)


@lru_cache(maxsize=64)
def _hashed_constants(spec: HashGridSpec, device: torch.device, dtype: torch.dtype):
    """Per-call constants of the hashed block, built once per (spec, device, dtype)."""
    first, d = spec.n_dense, spec.n_dims
    res = torch.tensor(spec.resolutions[first:], dtype=dtype, device=device).view(-1, 1, 1)
    # row of each hashed level's first vertex in the (Lh * T, F) block, shaped to broadcast over corners
    base = (torch.arange(spec.n_levels - first, device=device) * spec.hashmap_size).view((-1, 1) + (1,) * d)
    pair = torch.tensor([0, 1], device=device)
    primes = torch.tensor(HASH_PRIMES[:d], device=device).view(d, 1)
    return res, base, pair, primes


def _dense_features(x: torch.Tensor, params: torch.Tensor, spec: HashGridSpec, first: int, count: int,
                    grid: torch.Tensor) -> torch.Tensor:
    """Features ``(count * F, P)`` of ``count`` equal-resolution dense levels via one ``grid_sample``."""
    res, f = spec.resolutions[first], spec.n_features
    start = spec.offsets[first]
    n = spec.sizes[first]
    shape = (1, count * f) + (res + 1,) * spec.n_dims
    volume = params[start : start + count * f * n].view(shape)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(count * f, -1)


def _hashed_features(x: torch.Tensor, params: torch.Tensor, spec: HashGridSpec, levels: list[int] | None) -> torch.Tensor:
    """Features ``(P, Lh * F)`` of the hashed levels (all of them, or the listed subset).

    One gather of all ``2^D`` corners of all hashed levels, then d-linear interpolation as ``D``
    successive ``lerp`` s (x first); the hash is built per axis and combined by broadcasting.
    """
    res, base, pair, primes = _hashed_constants(spec, x.device, x.dtype)
    if levels is not None:
        sel = torch.tensor([lv - spec.n_dense for lv in levels], device=x.device)
        res, base = res[sel], base[sel]
    n_lev, n_points, d, f = res.shape[0], x.shape[0], spec.n_dims, spec.n_features
    pos = x[None] * res  # (Lh, P, D)
    with torch.no_grad():
        cell = torch.minimum(torch.floor(pos), res - 1)
        axis = (cell.long().unsqueeze(-1) + pair) * primes  # (Lh, P, D, 2): hash term of each axis
        if d == 2:  # corner axes (y, x): x varies fastest
            index = axis[..., 1, :, None] ^ axis[..., 0, None, :]
        else:  # (z, y, x)
            index = axis[..., 2, :, None, None] ^ axis[..., 1, None, :, None] ^ axis[..., 0, None, None, :]
        index &= spec.hashmap_size - 1  # low bits of the int64 products equal tiny-cuda-nn's uint32 maths
        index += base
    frac = pos - cell  # (Lh, P, D); the gradient to the points flows through here
    block = params[spec.offsets[spec.n_dense] :].view(-1, f)
    v = block.index_select(0, index.view(-1)).view((n_lev, n_points) + (2,) * d + (f,))
    for axis_d in range(d):  # interpolate along x, then y, then z
        w = frac[..., axis_d].view((n_lev, n_points) + (1,) * (d - axis_d))
        v = torch.lerp(v[..., 0, :], v[..., 1, :], w)
    return v.permute(1, 0, 2).reshape(n_points, n_lev * f)


def hash_grid_encode(points_unit: torch.Tensor, params: torch.Tensor, spec: HashGridSpec,
                     level_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Encode points with the hash grid (fast pure-PyTorch path).

    Dense levels go through ``grid_sample`` (levels of equal resolution share one call), hashed
    levels through one fused gather. Differentiable with respect to ``params``, ``points_unit``
    and ``level_weights`` (first order only: ``grid_sample`` has no double backward; use
    :func:`hash_grid_encode_reference` if you need second derivatives). Levels whose weight is
    exactly 0 (in a weight tensor that does not require grad) are skipped: their output is 0.

    Args:
        points_unit: ``(P, D)`` points in ``[0, 1]^D``, cast to ``params``' dtype; outside points
            are clamped to the box (zero coordinate gradient there).
        params: ``(n_params,)`` flat tables (see the module docstring for the layout).
        spec: from :func:`hash_grid_spec`.
        level_weights: optional ``(L,)`` per-level multipliers (:func:`level_weights`).

    Returns:
        ``(P, L * F)`` features, level-major (column ``l * F + f``).
    """
    _check_inputs(points_unit, params, spec, level_weights, "hash_grid_encode")
    x = points_unit.to(params.dtype).clamp(0.0, 1.0)
    n_points, f = x.shape[0], spec.n_features
    active = None
    if level_weights is not None and not level_weights.requires_grad and level_weights.device.type == "cpu":
        # skip the levels that are off; on a GPU reading the weights would cost a host sync per call
        active = [bool(v) for v in (level_weights != 0).tolist()]
    plan = _plan(spec)
    pieces = []
    if plan.dense_groups:
        grid = (2.0 * x - 1.0).view((1,) + (1,) * (spec.n_dims - 1) + (n_points, spec.n_dims))
        dense = []
        for first, count in plan.dense_groups:
            if active is not None and not any(active[first : first + count]):
                dense.append(x.new_zeros(count * f, n_points))
            else:
                dense.append(_dense_features(x, params, spec, first, count, grid))
        pieces.append(torch.cat(dense, 0).T if len(dense) > 1 else dense[0].T)
    if plan.first_hashed < spec.n_levels:
        hashed_levels = list(range(plan.first_hashed, spec.n_levels))
        if active is not None:
            on = [lv for lv in hashed_levels if active[lv]]
            if len(on) == len(hashed_levels):
                pieces.append(_hashed_features(x, params, spec, None))
            elif not on:
                pieces.append(x.new_zeros(n_points, len(hashed_levels) * f))
            else:
                part = _hashed_features(x, params, spec, on).view(n_points, len(on), f)
                full = x.new_zeros(n_points, len(hashed_levels), f)
                full = full.index_copy(1, torch.tensor([lv - plan.first_hashed for lv in on], device=x.device), part)
                pieces.append(full.view(n_points, -1))
        else:
            pieces.append(_hashed_features(x, params, spec, None))
    out = torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]
    if level_weights is not None:
        out = (out.view(n_points, spec.n_levels, f) * level_weights.to(out.dtype).view(1, -1, 1)).view(n_points, -1)
    return out
