// Hash-grid encoding (Instant-NGP) on the CPU: forward and backward (to the tables and to the points).
//
// Same maths and parameter layout as monai_inr_reg/core/encoding.py (read its module docstring):
// level l has R_l cells per unit, vertices at i / R_l; dense levels store (F, size_l) channel first,
// hashed levels (T, F) row-major, hash (i0 * 1 ^ i1 * 2654435761 ^ i2 * 805459861) mod T.
// Points are clamped to [0, 1]^D; clamped coordinates get zero gradient (torch.clamp semantics).
//
// Registered as torch custom ops (torch.ops.monai_inr_reg.hash_grid_fwd / hash_grid_bwd) without
// pybind11, so the build only needs ATen headers; autograd is wired in monai_inr_reg/_ext.py.
// Parallelism: forward over points; backward over levels (each level's table is written by one
// task only, so no atomics), with one coordinate-gradient buffer per task, summed at the end.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr uint32_t kPrimes[3] = {1u, 2654435761u, 805459861u};
constexpr int kMaxFeatures = 64;

struct Level {
  int64_t res;       // cells per unit
  bool dense;        // dense index or hash
  int64_t offset;    // first scalar of the level in params
  int64_t size;      // stored vertices
  int64_t fstride;   // distance between features of one vertex
  int64_t vstride;   // distance between consecutive vertex rows
};

std::vector<Level> read_levels(const at::Tensor& levels, int64_t n_features) {
  TORCH_CHECK(levels.dim() == 2 && levels.size(1) == 4 && levels.scalar_type() == at::kLong,
              "hash_grid: 'levels' must be an (L, 4) int64 tensor");
  auto lv = levels.contiguous();
  const int64_t* p = lv.data_ptr<int64_t>();
  std::vector<Level> out(lv.size(0));
  for (int64_t l = 0; l < lv.size(0); ++l) {
    Level& L = out[l];
    L.res = p[4 * l];
    L.dense = p[4 * l + 1] != 0;
    L.offset = p[4 * l + 2];
    L.size = p[4 * l + 3];
    L.fstride = L.dense ? L.size : 1;
    L.vstride = L.dense ? 1 : n_features;
  }
  return out;
}

// Cell, fractional position and the 2^D corner rows/weights of one point at one level.
template <typename T, int D>
struct Corners {
  int64_t row[1 << D];  // scalar index of feature 0 of each corner
  T weight[1 << D];
  T w0[D], w1[D];       // 1-D weights: 1 - frac, frac
  bool inside[D];       // coordinate not clamped: gradient passes

  inline void compute(const T* x, const Level& L, uint32_t mask) {
    int64_t cell[D];
    const T res = static_cast<T>(L.res);
#pragma GCC unroll 3
    for (int d = 0; d < D; ++d) {
      const T xd = x[d];
      inside[d] = (xd >= T(0)) && (xd <= T(1));
      const bool nan = !(xd == xd);
      const T pos = (nan ? T(0) : (xd < T(0) ? T(0) : (xd > T(1) ? T(1) : xd))) * res;
      int64_t c = static_cast<int64_t>(pos);  // pos >= 0: truncation is floor, no libm call
      if (c > L.res - 1) c = L.res - 1;
      cell[d] = c;
      w1[d] = nan ? xd : pos - static_cast<T>(c);  // a NaN coordinate gives NaN features, as in PyTorch
      w0[d] = T(1) - w1[d];
    }
    // d-linear weights as an outer product: corner c has bit d set = upper vertex along axis d
    weight[0] = w0[0];
    weight[1] = w1[0];
#pragma GCC unroll 2
    for (int d = 1; d < D; ++d) {
      const int n = 1 << d;
      for (int c = 0; c < n; ++c) {
        weight[c + n] = weight[c] * w1[d];
        weight[c] *= w0[d];
      }
    }
    if (L.dense) {
      const int64_t s1 = L.res + 1;
      int64_t base = cell[0] + cell[1] * s1;
      if constexpr (D == 3) base += cell[2] * s1 * s1;
      base += L.offset;  // dense rows: vstride 1
#pragma GCC unroll 8
      for (int c = 0; c < (1 << D); ++c) {
        int64_t off = (c & 1) + ((c >> 1) & 1) * s1;
        if constexpr (D == 3) off += ((c >> 2) & 1) * s1 * s1;
        row[c] = base + off;
      }
    } else {
      uint32_t h[D][2];
      for (int d = 0; d < D; ++d) {
        h[d][0] = static_cast<uint32_t>(cell[d]) * kPrimes[d];
        h[d][1] = static_cast<uint32_t>(cell[d] + 1) * kPrimes[d];
      }
#pragma GCC unroll 8
      for (int c = 0; c < (1 << D); ++c) {
        uint32_t hc = h[0][c & 1] ^ h[1][(c >> 1) & 1];
        if constexpr (D == 3) hc ^= h[2][(c >> 2) & 1];
        row[c] = L.offset + static_cast<int64_t>(hc & mask) * L.vstride;
      }
    }
  }

  // gradient of sum_c v[c] * weight[c] with respect to the fractional position, per axis
  inline void frac_gradient(const T* v, T* g) const {
    const T* a = w0;
    const T* b = w1;
    if constexpr (D == 2) {
      g[0] = a[1] * (v[1] - v[0]) + b[1] * (v[3] - v[2]);
      g[1] = a[0] * (v[2] - v[0]) + b[0] * (v[3] - v[1]);
    } else {
      g[0] = a[1] * a[2] * (v[1] - v[0]) + b[1] * a[2] * (v[3] - v[2]) + a[1] * b[2] * (v[5] - v[4]) + b[1] * b[2] * (v[7] - v[6]);
      g[1] = a[0] * a[2] * (v[2] - v[0]) + b[0] * a[2] * (v[3] - v[1]) + a[0] * b[2] * (v[6] - v[4]) + b[0] * b[2] * (v[7] - v[5]);
      g[2] = a[0] * a[1] * (v[4] - v[0]) + b[0] * a[1] * (v[5] - v[1]) + a[0] * b[1] * (v[6] - v[2]) + b[0] * b[1] * (v[7] - v[3]);
    }
  }
};

constexpr int64_t kBlock = 256;          // forward: a block's output rows stay in L1 across levels
constexpr int64_t kBackwardBlock = 2048; // backward: a block's rows of grad_out stay in L2 across levels
// backward: the active levels are split among this many tasks whatever the thread count, so the
// point gradients are summed in one order and a result does not depend on the number of threads
constexpr int64_t kBackwardTasks = 4;

// Runs of consecutive levels (in the given order) with the same grid: their cell, weights and
// rows differ only by the level offset, so they are computed once per point (all levels of the
// near-rigid per_level_scale = 1 net form one run).
std::vector<std::vector<int64_t>> group_levels(const std::vector<int64_t>& order, const std::vector<Level>& levels) {
  std::vector<std::vector<int64_t>> groups;
  for (int64_t l : order) {
    if (!groups.empty()) {
      const Level& a = levels[groups.back().front()];
      const Level& b = levels[l];
      if (a.res == b.res && a.dense == b.dense && a.size == b.size) {
        groups.back().push_back(l);
        continue;
      }
    }
    groups.push_back({l});
  }
  return groups;
}

template <typename T, int D, int FT>
void forward_impl(const T* X, const T* params, const T* weights, T* out, int64_t n_points,
                  const std::vector<Level>& levels, int64_t n_features_rt, uint32_t mask) {
  const int64_t F = FT > 0 ? FT : n_features_rt;
  const int64_t n_levels = static_cast<int64_t>(levels.size());
  const int64_t width = n_levels * F;
  std::vector<int64_t> order(n_levels);
  for (int64_t l = 0; l < n_levels; ++l) order[l] = l;
  const auto groups = group_levels(order, levels);
  at::parallel_for(0, n_points, kBlock, [&](int64_t begin, int64_t end) {
    Corners<T, D> cs;
    T acc[FT > 0 ? FT : kMaxFeatures];
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const int64_t b1 = std::min(end, b0 + kBlock);
      for (const auto& group : groups) {
        const Level& L0 = levels[group.front()];
        bool any = false;
        for (int64_t l : group) any = any || weights[l] != T(0);
        if (!any) {
          for (int64_t p = b0; p < b1; ++p)
            for (int64_t l : group)
              for (int64_t f = 0; f < F; ++f) out[p * width + l * F + f] = T(0);
          continue;
        }
        for (int64_t p = b0; p < b1; ++p) {
          cs.compute(X + p * D, L0, mask);
          for (int64_t l : group) {
            const T wl = weights[l];
            if (wl == T(0)) {
              for (int64_t f = 0; f < F; ++f) out[p * width + l * F + f] = T(0);
              continue;
            }
            const T* base = params + (levels[l].offset - L0.offset);
            for (int64_t f = 0; f < F; ++f) acc[f] = T(0);
#pragma GCC unroll 8
            for (int c = 0; c < (1 << D); ++c) {
              const T* row = base + cs.row[c];
              const T w = cs.weight[c];
              for (int64_t f = 0; f < F; ++f) acc[f] += w * row[f * L0.fstride];
            }
            for (int64_t f = 0; f < F; ++f) out[p * width + l * F + f] = acc[f] * wl;
          }
        }
      }
    }
  });
}

// Backward of one run of levels over points [b0, b1): table gradients (this task is their only
// writer) and the coordinate gradient accumulated into gx. DENSE is a template parameter so that
// hashed levels get a compile-time feature stride of 1 (measured: backward 10 % faster; the same
// treatment of the forward pass gained nothing and changed its rounding, so it is left as it was).
template <typename T, int D, int FT, bool DENSE>
inline void backward_group(const T* G, const T* X, const T* params, const T* weights, T* grad_params, T* gx,
                           int64_t b0, int64_t b1, const std::vector<int64_t>& group, const std::vector<Level>& levels,
                           const Level& L0, int64_t F, int64_t width, uint32_t mask) {
  Corners<T, D> cs;
  T g[FT > 0 ? FT : kMaxFeatures];
  const T res = static_cast<T>(L0.res);
  const int64_t fstride = DENSE ? L0.fstride : 1;
  for (int64_t p = b0; p < b1; ++p) {
    bool located = false;
    T v[1 << D];
    for (int c = 0; c < (1 << D); ++c) v[c] = T(0);
    for (int64_t l : group) {
      const T wl = weights[l];
      bool any = false;
      for (int64_t f = 0; f < F; ++f) {
        g[f] = G[p * width + l * F + f] * wl;
        any = any || g[f] != T(0);
      }
      if (!any) continue;
      if (!located) {
        cs.compute(X + p * D, L0, mask);
        located = true;
      }
      const int64_t delta = levels[l].offset - L0.offset;
#pragma GCC unroll 8
      for (int c = 0; c < (1 << D); ++c) {
        const int64_t r = cs.row[c] + delta;
        if (grad_params) {
          const T w = cs.weight[c];
          for (int64_t f = 0; f < F; ++f) grad_params[r + f * fstride] += w * g[f];
        }
        if (gx) {
          T acc = T(0);
          for (int64_t f = 0; f < F; ++f) acc += g[f] * params[r + f * fstride];
          v[c] += acc;
        }
      }
    }
    if (gx && located) {
      T gfrac[D];
      cs.frac_gradient(v, gfrac);
      for (int d = 0; d < D; ++d)
        if (cs.inside[d]) gx[p * D + d] += gfrac[d] * res;
    }
  }
}

template <typename T, int D, int FT>
void backward_impl(const T* G, const T* X, const T* params, const T* weights, T* grad_params, T* grad_points,
                   int64_t n_points, const std::vector<Level>& levels, int64_t n_features_rt, uint32_t mask) {
  const int64_t F = FT > 0 ? FT : n_features_rt;
  const int64_t n_levels = static_cast<int64_t>(levels.size());
  const int64_t width = n_levels * F;
  std::vector<int64_t> active;
  for (int64_t l = 0; l < n_levels; ++l)
    if (weights[l] != T(0)) active.push_back(l);
  const int64_t n_active = static_cast<int64_t>(active.size());
  if (n_active == 0) return;
  const int64_t n_tasks = std::min<int64_t>(kBackwardTasks, n_active);
  // each task owns every n_tasks-th active level (coarse, cache-friendly levels and fine, hashed
  // ones mix in each task) and is the only writer of those levels' table gradients
  std::vector<std::vector<std::vector<int64_t>>> task_groups(n_tasks);
  for (int64_t t = 0; t < n_tasks; ++t) {
    std::vector<int64_t> mine;
    for (int64_t i = t; i < n_active; i += n_tasks) mine.push_back(active[i]);
    task_groups[t] = group_levels(mine, levels);
  }
  // task 0 accumulates straight into grad_points; the others into their own zeroed buffers
  std::vector<T> buffers(grad_points ? (n_tasks - 1) * n_points * D : 0, T(0));
  at::parallel_for(0, n_tasks, 1, [&](int64_t tbegin, int64_t tend) {
    for (int64_t task = tbegin; task < tend; ++task) {
      T* gx = grad_points ? (task == 0 ? grad_points : buffers.data() + (task - 1) * n_points * D) : nullptr;
      // blocks of points, then this task's levels; a block's rows of G stay in cache
      for (int64_t b0 = 0; b0 < n_points; b0 += kBackwardBlock) {
        const int64_t b1 = std::min(n_points, b0 + kBackwardBlock);
        for (const auto& group : task_groups[task]) {
          const Level& L0 = levels[group.front()];
          if (L0.dense)
            backward_group<T, D, FT, true>(G, X, params, weights, grad_params, gx, b0, b1, group, levels, L0, F, width, mask);
          else
            backward_group<T, D, FT, false>(G, X, params, weights, grad_params, gx, b0, b1, group, levels, L0, F, width, mask);
        }
      }
    }
  });
  if (grad_points && n_tasks > 1) {
    at::parallel_for(0, n_points * D, 16384, [&](int64_t b, int64_t e) {
      for (int64_t t = 1; t < n_tasks; ++t) {
        const T* buf = buffers.data() + (t - 1) * n_points * D;
        for (int64_t i = b; i < e; ++i) grad_points[i] += buf[i];
      }
    });
  }
}

void check_layout(const std::vector<Level>& levels, const at::Tensor& params, int64_t n_features,
                  int64_t log2_hashmap_size, int64_t dims) {
  TORCH_CHECK(log2_hashmap_size >= 1 && log2_hashmap_size <= 31, "hash_grid: log2_hashmap_size out of range");
  for (const Level& L : levels) {
    int64_t vertices = 1;
    for (int64_t d = 0; d < dims; ++d) vertices *= L.res + 1;
    const int64_t expected = L.dense ? vertices : (int64_t(1) << log2_hashmap_size);
    TORCH_CHECK(L.res >= 1 && L.offset >= 0 && L.size == expected && L.offset + L.size * n_features <= params.numel(),
                "hash_grid: level layout does not match 'params' (res ", L.res, ", offset ", L.offset, ", size ", L.size, ")");
  }
}

void check_inputs(const at::Tensor& points, const at::Tensor& params, const at::Tensor& weights,
                  int64_t n_levels) {
  TORCH_CHECK(points.device().is_cpu() && params.device().is_cpu(), "hash_grid: CPU tensors only");
  TORCH_CHECK(points.dim() == 2 && (points.size(1) == 2 || points.size(1) == 3),
              "hash_grid: 'points' must be (P, 2) or (P, 3)");
  TORCH_CHECK(params.dim() == 1, "hash_grid: 'params' must be 1-D");
  TORCH_CHECK(points.scalar_type() == params.scalar_type() && weights.scalar_type() == params.scalar_type(),
              "hash_grid: points, params and weights must share a dtype");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == n_levels, "hash_grid: 'weights' must be (L,)");
}

template <typename Fn>
void dispatch(int64_t dims, int64_t n_features, Fn&& fn) {
  // fn(std::integral_constant<int, D>, std::integral_constant<int, F>)
  if (dims == 2) {
    if (n_features == 2) fn(std::integral_constant<int, 2>(), std::integral_constant<int, 2>());
    else if (n_features == 4) fn(std::integral_constant<int, 2>(), std::integral_constant<int, 4>());
    else fn(std::integral_constant<int, 2>(), std::integral_constant<int, 0>());
  } else {
    if (n_features == 2) fn(std::integral_constant<int, 3>(), std::integral_constant<int, 2>());
    else if (n_features == 4) fn(std::integral_constant<int, 3>(), std::integral_constant<int, 4>());
    else fn(std::integral_constant<int, 3>(), std::integral_constant<int, 0>());
  }
}

at::Tensor hash_grid_fwd(const at::Tensor& points, const at::Tensor& params, const at::Tensor& levels,
                         const at::Tensor& weights, int64_t n_features, int64_t log2_hashmap_size) {
  TORCH_CHECK(n_features >= 1 && n_features <= kMaxFeatures, "hash_grid: n_features out of range");
  auto lv = read_levels(levels, n_features);
  check_inputs(points, params, weights, static_cast<int64_t>(lv.size()));
  check_layout(lv, params, n_features, log2_hashmap_size, points.size(1));
  auto x = points.contiguous();
  auto p = params.contiguous();
  auto w = weights.contiguous();
  const int64_t n_points = x.size(0);
  auto out = at::empty({n_points, static_cast<int64_t>(lv.size()) * n_features}, x.options());
  const uint32_t mask = static_cast<uint32_t>((uint64_t(1) << log2_hashmap_size) - 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_grid_fwd", [&] {
    dispatch(x.size(1), n_features, [&](auto dd, auto ff) {
      forward_impl<scalar_t, decltype(dd)::value, decltype(ff)::value>(
          x.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          n_points, lv, n_features, mask);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_grid_bwd(const at::Tensor& grad_out, const at::Tensor& points,
                                                 const at::Tensor& params, const at::Tensor& levels,
                                                 const at::Tensor& weights, int64_t n_features,
                                                 int64_t log2_hashmap_size, bool need_params, bool need_points) {
  TORCH_CHECK(n_features >= 1 && n_features <= kMaxFeatures, "hash_grid: n_features out of range");
  auto lv = read_levels(levels, n_features);
  check_inputs(points, params, weights, static_cast<int64_t>(lv.size()));
  check_layout(lv, params, n_features, log2_hashmap_size, points.size(1));
  auto x = points.contiguous();
  auto p = params.contiguous();
  auto w = weights.contiguous();
  const int64_t n_points = x.size(0);
  const int64_t n_levels = static_cast<int64_t>(lv.size());
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == n_points && grad_out.size(1) == n_levels * n_features,
              "hash_grid: 'grad_out' must be (P, L * F)");
  auto g = grad_out.to(x.scalar_type()).contiguous();
  // a gradient that is not needed comes back as an empty (0,) tensor
  auto grad_params = need_params ? at::zeros_like(p) : at::empty({0}, p.options());
  auto grad_points = need_points ? at::zeros_like(x) : at::empty({0}, x.options());
  const uint32_t mask = static_cast<uint32_t>((uint64_t(1) << log2_hashmap_size) - 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_grid_bwd", [&] {
    dispatch(x.size(1), n_features, [&](auto dd, auto ff) {
      backward_impl<scalar_t, decltype(dd)::value, decltype(ff)::value>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
          need_params ? grad_params.data_ptr<scalar_t>() : nullptr,
          need_points ? grad_points.data_ptr<scalar_t>() : nullptr, n_points, lv, n_features, mask);
    });
  });
  return {grad_params, grad_points};
}

}  // namespace

TORCH_LIBRARY(monai_inr_reg, m) {
  m.def("hash_grid_fwd(Tensor points, Tensor params, Tensor levels, Tensor weights, int n_features, "
        "int log2_hashmap_size) -> Tensor");
  m.def("hash_grid_bwd(Tensor grad_out, Tensor points, Tensor params, Tensor levels, Tensor weights, "
        "int n_features, int log2_hashmap_size, bool need_params, bool need_points) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(monai_inr_reg, CPU, m) {
  m.impl("hash_grid_fwd", &hash_grid_fwd);
  m.impl("hash_grid_bwd", &hash_grid_bwd);
}
