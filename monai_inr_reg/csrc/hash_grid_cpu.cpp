// Hash-grid encoding (Instant-NGP) on the CPU: forward and backward (to the tables and to the points).
// Below it, the coordinate MLP, the linear sampling of an image, the similarity terms and the affine map of
// points (each with its own header comment).
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
#include <limits>
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


// ---------------------------------------------------------------------------------------------
// Coordinate MLP (ReLU hidden layers, linear output), forward and backward, fused over tiles of
// kLanes points: a tile's activations stay in L1 from the input to the output and back, where
// separate matrix products would stream (P, width) buffers through memory once per operation.
// Same maths as monai_inr_reg/core/mlp.py (nn.Linear layout: W (out, in), b (out,)).
// Determinism: the weight gradients are summed per block of kMlpBlock points (tiles in order,
// the lanes added pairwise at the block's end), and the blocks' sums added pairwise in a fixed
// tree, so the result depends on the number of points alone, not on the thread count.

constexpr int kLanes = 8;              // points per tile: one AVX2 vector per feature (16: 3-9x slower, not one vector)
constexpr int64_t kMlpBlock = 512;     // points per weight-gradient partial sum
// one feature of a tile's kLanes points (GCC / Clang vector extension: the compiler emits the
// widest vectors the target has; the same loops written over an index were not vectorised)
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

struct MlpLayout {
  std::vector<const float*> w, b;
  std::vector<int64_t> in, out, w_offset, b_offset;  // offsets of each layer's gradient in a flat buffer
  int64_t n_params = 0, max_width = 0;
  int n = 0;
};

// Makes the weights and biases contiguous in place (the layout points into them).
MlpLayout mlp_layout(const at::Tensor& x, std::vector<at::Tensor>& weights, std::vector<at::Tensor>& biases) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2, "mlp: 'x' must be a (P, K) CPU float32 tensor");
  TORCH_CHECK(!weights.empty() && weights.size() == biases.size(), "mlp: one bias per weight, at least one layer");
  for (auto& w : weights) w = w.contiguous();
  for (auto& b : biases) b = b.contiguous();
  MlpLayout L;
  L.n = static_cast<int>(weights.size());
  int64_t width = x.size(1);
  L.max_width = width;
  for (int i = 0; i < L.n; ++i) {
    const at::Tensor& w = weights[i];
    const at::Tensor& b = biases[i];
    TORCH_CHECK(w.device().is_cpu() && b.device().is_cpu() && w.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat,
                "mlp: weights and biases must be CPU float32");
    TORCH_CHECK(w.dim() == 2 && w.size(1) == width && w.is_contiguous() && b.dim() == 1 && b.size(0) == w.size(0) && b.is_contiguous(),
                "mlp: layer ", i, " must have a contiguous weight (out, ", width, ") and bias (out,)");
    L.w.push_back(w.data_ptr<float>());
    L.b.push_back(b.data_ptr<float>());
    L.in.push_back(width);
    L.out.push_back(w.size(0));
    width = w.size(0);
    L.max_width = std::max(L.max_width, width);
  }
  for (int i = 0; i < L.n; ++i) {
    L.w_offset.push_back(L.n_params);
    L.n_params += L.out[i] * L.in[i];
  }
  for (int i = 0; i < L.n; ++i) {
    L.b_offset.push_back(L.n_params);
    L.n_params += L.out[i];
  }
  return L;
}

// Per-thread tiles: acts[0] the input (K features), acts[i + 1] layer i's output.
struct MlpTiles {
  std::vector<Lanes> buffer;
  std::vector<Lanes*> acts;
  explicit MlpTiles(const MlpLayout& L) : buffer((L.n + 1) * L.max_width), acts(L.n + 1) {
    for (int i = 0; i <= L.n; ++i) acts[i] = buffer.data() + i * L.max_width;
  }
};

// Loads rows [p0, p0 + n) of x (P, K) into a tile of K features; missing lanes are zero.
inline void load_tile(const float* x, int64_t K, int64_t p0, int64_t n, Lanes* tile) {
  float* t = reinterpret_cast<float*>(tile);  // scalar stores: inserting into a vector's lanes one by one is slower
  for (int64_t l = 0; l < n; ++l)
    for (int64_t k = 0; k < K; ++k) t[k * kLanes + l] = x[(p0 + l) * K + k];
  for (int64_t l = n; l < kLanes; ++l)
    for (int64_t k = 0; k < K; ++k) t[k * kLanes + l] = 0.0f;
}

// Stores the first n lanes of a tile of M features as rows [p0, p0 + n) of y (P, M).
inline void store_tile(const Lanes* tile, int64_t M, int64_t p0, int64_t n, float* y) {
  const float* t = reinterpret_cast<const float*>(tile);
  for (int64_t l = 0; l < n; ++l)
    for (int64_t m = 0; m < M; ++m) y[(p0 + l) * M + m] = t[m * kLanes + l];
}

// ReLU; NaN stays NaN, as in torch.relu
inline Lanes relu(Lanes v) { return v < Lanes{} ? Lanes{} : v; }

// JB outputs [j, j + JB) of one layer on one tile: JB independent chains of multiply-adds, each
// output summed over its inputs in order (the same bits whatever JB).
template <int JB>
inline void tile_outputs(const float* W, const float* B, int64_t I, int64_t j, bool hidden, const Lanes* a, Lanes* o) {
  Lanes c[JB];
  for (int jb = 0; jb < JB; ++jb) c[jb] = Lanes{} + B[j + jb];
  const float* w = W + j * I;
  for (int64_t k = 0; k < I; ++k) {
    const Lanes ak = a[k];
    for (int jb = 0; jb < JB; ++jb) c[jb] += w[jb * I + k] * ak;
  }
  for (int jb = 0; jb < JB; ++jb) o[j + jb] = hidden ? relu(c[jb]) : c[jb];
}

// Every layer on one tile; ReLU after all but the last. Eight outputs at a time: eight independent
// chains of multiply-adds (one chain waits on each add's latency; measured 2.5x slower than four,
// four 1.2-1.4x slower than eight on an AMD EPYC).
inline void tile_forward(const MlpLayout& L, Lanes* const* acts) {
  for (int i = 0; i < L.n; ++i) {
    const int64_t I = L.in[i], O = L.out[i];
    const bool hidden = i < L.n - 1;
    int64_t j = 0;
    for (; j + 8 <= O; j += 8) tile_outputs<8>(L.w[i], L.b[i], I, j, hidden, acts[i], acts[i + 1]);
    for (; j + 4 <= O; j += 4) tile_outputs<4>(L.w[i], L.b[i], I, j, hidden, acts[i], acts[i + 1]);
    for (; j < O; ++j) tile_outputs<1>(L.w[i], L.b[i], I, j, hidden, acts[i], acts[i + 1]);
  }
}

// Pairwise sum of the lanes (a fixed order).
inline float lane_sum(Lanes v) {
  for (int half = kLanes / 2; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) v[l] += v[l + half];
  return v[0];
}

constexpr int64_t kTilesPerBlock = kMlpBlock / kLanes;

// Where the backward finds the hidden layers' outputs that mlp_fwd_saving kept: per block of
// kMlpBlock points, hidden layer i (1 .. n - 1, the input of layer i) as the block's tiles one after
// the other, out[i - 1] features apart, at at[i] (in Lanes) from the block's start.
struct HiddenLayout {
  std::vector<int64_t> at;  // (n + 1) entries; 0 and n unused
  int64_t per_block = 0;    // Lanes per block
};

HiddenLayout hidden_layout(const MlpLayout& L) {
  HiddenLayout H;
  H.at.assign(L.n + 1, 0);
  for (int i = 1; i < L.n; ++i) {
    H.at[i] = H.per_block;
    H.per_block += kTilesPerBlock * L.out[i - 1];
  }
  return H;
}

// The forward, and with `hidden` (n_blocks * H.per_block Lanes) the hidden layers' outputs kept there
// for mlp_bwd: the same per-tile arithmetic either way, so the same bits.
void mlp_forward_into(const MlpLayout& L, const float* X, int64_t P, int64_t K, float* Y, Lanes* hidden) {
  const int64_t M = L.out.back();
  const HiddenLayout H = hidden_layout(L);
  at::parallel_for(0, (P + kLanes - 1) / kLanes, kTilesPerBlock, [&](int64_t t0, int64_t t1) {
    MlpTiles tiles(L);
    std::vector<Lanes*> acts(tiles.acts);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = t * kLanes, n = std::min<int64_t>(kLanes, P - p0);
      if (hidden != nullptr) {
        const int64_t blk = t / kTilesPerBlock, tb = t % kTilesPerBlock;
        for (int i = 1; i < L.n; ++i) acts[i] = hidden + blk * H.per_block + H.at[i] + tb * L.out[i - 1];
      }
      load_tile(X, K, p0, n, acts[0]);
      tile_forward(L, acts.data());
      store_tile(acts[L.n], M, p0, n, Y);
    }
  });
}

at::Tensor mlp_fwd(const at::Tensor& x_in, std::vector<at::Tensor> weights, std::vector<at::Tensor> biases) {
  auto x = x_in.contiguous();
  const MlpLayout L = mlp_layout(x, weights, biases);
  const int64_t P = x.size(0), K = x.size(1);
  auto out = at::empty({P, L.out.back()}, x.options());
  mlp_forward_into(L, x.data_ptr<float>(), P, K, out.data_ptr<float>(), nullptr);
  return out;
}

// mlp_fwd, and the hidden layers' outputs for mlp_bwd (which then skips recomputing the forward:
// a third of the backward's arithmetic). Returns (out (P, M), hidden (float32, opaque layout)).
std::tuple<at::Tensor, at::Tensor> mlp_fwd_saving(const at::Tensor& x_in, std::vector<at::Tensor> weights,
                                                  std::vector<at::Tensor> biases) {
  auto x = x_in.contiguous();
  const MlpLayout L = mlp_layout(x, weights, biases);
  const int64_t P = x.size(0), K = x.size(1);
  const int64_t n_blocks = (P + kMlpBlock - 1) / kMlpBlock;
  auto out = at::empty({P, L.out.back()}, x.options());
  auto hidden = at::empty({std::max<int64_t>(n_blocks * hidden_layout(L).per_block * kLanes, 1)}, x.options());
  mlp_forward_into(L, x.data_ptr<float>(), P, K, out.data_ptr<float>(), reinterpret_cast<Lanes*>(hidden.data_ptr<float>()));
  return {out, hidden};
}

// KB entries [k, k + KB) of W^T d for one tile: KB chains of multiply-adds held in registers, each
// summed over the outputs in order (the same bits whatever KB).
template <int KB>
inline void tile_transposed_entries(const float* W, int64_t O, int64_t I, int64_t k, const Lanes* d, Lanes* out) {
  Lanes c[KB] = {};
  for (int64_t j = 0; j < O; ++j) {
    const Lanes dj = d[j];
    const float* wj = W + j * I + k;
    for (int kb = 0; kb < KB; ++kb) c[kb] += wj[kb] * dj;
  }
  for (int kb = 0; kb < KB; ++kb) out[k + kb] = c[kb];
}

// W^T d for one tile: W (O, I) row-major, d O features -> out I features, eight inputs at a time.
inline void tile_transposed_product(const float* W, int64_t O, int64_t I, const Lanes* d, Lanes* out) {
  int64_t k = 0;
  for (; k + 8 <= I; k += 8) tile_transposed_entries<8>(W, O, I, k, d, out);
  for (; k + 4 <= I; k += 4) tile_transposed_entries<4>(W, O, I, k, d, out);
  for (; k < I; ++k) tile_transposed_entries<1>(W, O, I, k, d, out);
}

// out[j * I + k] = sum over the nt tiles t and their lanes of d[t * O + j] * a[t * I + k] (the tiles in
// order, then the lanes pairwise); a JB x KB block of sums stays in registers. Each array holds the
// block's tiles one after the other (O and I features apart).
template <int JB, int KB>
inline void outer_block(const Lanes* d, const Lanes* a, int64_t O, int64_t I, int64_t nt, int64_t j, int64_t k,
                        float* out) {
  Lanes c[JB][KB] = {};
  for (int64_t t = 0; t < nt; ++t) {
    const Lanes* dt = d + t * O + j;
    const Lanes* at = a + t * I + k;
    for (int jb = 0; jb < JB; ++jb)
      for (int kb = 0; kb < KB; ++kb) c[jb][kb] += dt[jb] * at[kb];
  }
  for (int jb = 0; jb < JB; ++jb)
    for (int kb = 0; kb < KB; ++kb) out[(j + jb) * I + k + kb] = lane_sum(c[jb][kb]);
}

inline void block_outer_sums(const Lanes* d, const Lanes* a, int64_t nt, int64_t O, int64_t I, float* out) {
  int64_t j = 0;
  for (; j + 2 <= O; j += 2) {
    int64_t k = 0;
    for (; k + 4 <= I; k += 4) outer_block<2, 4>(d, a, O, I, nt, j, k, out);
    for (; k < I; ++k) outer_block<2, 1>(d, a, O, I, nt, j, k, out);
  }
  for (; j < O; ++j) {
    int64_t k = 0;
    for (; k + 4 <= I; k += 4) outer_block<1, 4>(d, a, O, I, nt, j, k, out);
    for (; k < I; ++k) outer_block<1, 1>(d, a, O, I, nt, j, k, out);
  }
}

// Returns [grad_x (empty when not needed), grad_W0 .. grad_W{n-1}, grad_b0 .. grad_b{n-1}].
// With `hidden` from mlp_fwd_saving on the same inputs, the hidden layers' outputs are read from it
// instead of recomputed (the same bits).
std::vector<at::Tensor> mlp_bwd(const at::Tensor& grad_out_in, const at::Tensor& x_in, std::vector<at::Tensor> weights,
                                std::vector<at::Tensor> biases, bool need_x, const c10::optional<at::Tensor>& hidden_in) {
  auto x = x_in.contiguous();
  const MlpLayout L = mlp_layout(x, weights, biases);
  const int64_t P = x.size(0), K = x.size(1), M = L.out.back();
  auto g = grad_out_in.to(at::kFloat).contiguous();
  TORCH_CHECK(g.dim() == 2 && g.size(0) == P && g.size(1) == M, "mlp: 'grad_out' must be (P, ", M, ")");
  auto grad_x = need_x ? at::empty_like(x) : at::empty({0}, x.options());
  const float* X = x.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  float* GX = need_x ? grad_x.data_ptr<float>() : nullptr;
  const int64_t n_blocks = (P + kMlpBlock - 1) / kMlpBlock;
  const HiddenLayout H = hidden_layout(L);
  Lanes* kept = nullptr;
  if (hidden_in.has_value() && hidden_in->defined()) {
    TORCH_CHECK(hidden_in->scalar_type() == at::kFloat && hidden_in->is_contiguous() &&
                hidden_in->numel() == std::max<int64_t>(n_blocks * H.per_block * kLanes, 1),
                "mlp: 'hidden' must come from mlp_fwd_saving on these inputs");
    kept = reinterpret_cast<Lanes*>(hidden_in->data_ptr<float>());
  }
  // a block's tiles: every layer's input (acts, i = 0 .. n) and the gradient at every layer's output
  // (deltas), each an array of its own holding the block's tiles one after the other
  std::vector<int64_t> act_at(L.n + 1), act_width(L.n + 1), delta_at(L.n);
  int64_t stride = 0;  // features per tile, all arrays together
  for (int i = 0; i <= L.n; ++i) {
    act_at[i] = stride * kTilesPerBlock;
    act_width[i] = i == 0 ? K : L.out[i - 1];
    stride += act_width[i];
  }
  for (int i = 0; i < L.n; ++i) {
    delta_at[i] = stride * kTilesPerBlock;
    stride += L.out[i];
  }
  std::vector<float> partial(std::max<int64_t>(n_blocks, 1) * L.n_params, 0.0f);
  at::parallel_for(0, n_blocks, 1, [&](int64_t blk0, int64_t blk1) {
    // kept per thread between calls: a block's tiles are a few hundred KiB, and a fresh buffer each
    // call (mapped and faulted in anew) cost as much as the arithmetic at 1,024 points
    thread_local std::vector<Lanes> tiles;
    tiles.resize(std::max<size_t>(tiles.size(), static_cast<size_t>(kTilesPerBlock * stride)));
    std::vector<Lanes> grad_input(K);
    std::vector<Lanes*> acts(L.n + 1), block_acts(L.n + 1);  // the block's first tile of each layer's input
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t first = blk * kMlpBlock, end = std::min(P, first + kMlpBlock);
      const int64_t nt = (end - first + kLanes - 1) / kLanes;
      for (int i = 0; i <= L.n; ++i)
        block_acts[i] = kept != nullptr && i >= 1 && i < L.n ? kept + blk * H.per_block + H.at[i] : tiles.data() + act_at[i];
      for (int64_t t = 0; t < nt; ++t) {
        Lanes* tile = tiles.data();
        const int64_t p0 = first + t * kLanes, n = std::min<int64_t>(kLanes, end - p0);
        for (int i = 0; i <= L.n; ++i) acts[i] = block_acts[i] + t * act_width[i];
        auto delta = [&](int i) { return tile + delta_at[i] + t * L.out[i]; };
        load_tile(X, K, p0, n, acts[0]);
        if (kept == nullptr) tile_forward(L, acts.data());
        load_tile(G, M, p0, n, delta(L.n - 1));  // missing lanes: zero gradient
        for (int i = L.n - 1; i >= 1; --i) {
          Lanes* below = delta(i - 1);
          tile_transposed_product(L.w[i], L.out[i], L.in[i], delta(i), below);
          const Lanes* a = acts[i];  // layer i's input: the ReLU output of layer i - 1
          for (int64_t k = 0; k < L.in[i]; ++k) below[k] = a[k] > Lanes{} ? below[k] : Lanes{};
        }
        if (need_x) {
          tile_transposed_product(L.w[0], L.out[0], K, delta(0), grad_input.data());
          store_tile(grad_input.data(), K, p0, n, GX);
        }
      }
      float* mine = partial.data() + blk * L.n_params;
      for (int i = 0; i < L.n; ++i) {
        const Lanes* d = tiles.data() + delta_at[i];
        block_outer_sums(d, block_acts[i], nt, L.out[i], L.in[i], mine + L.w_offset[i]);
        for (int64_t j = 0; j < L.out[i]; ++j) {
          Lanes c = {};
          for (int64_t t = 0; t < nt; ++t) c += d[t * L.out[i] + j];
          mine[L.b_offset[i] + j] = lane_sum(c);
        }
      }
    }
  });
  // the blocks' sums, added pairwise in a tree that depends on n_blocks only
  for (int64_t count = n_blocks; count > 1;) {
    const int64_t half = count / 2;
    for (int64_t b = 0; b < half; ++b) {
      float* dst = partial.data() + b * L.n_params;
      const float* src = partial.data() + (b + half) * L.n_params;
      for (int64_t q = 0; q < L.n_params; ++q) dst[q] += src[q];
    }
    if (count % 2)  // the odd one out moves down, as in core/reduce.py's _pairwise_sum
      std::copy(partial.data() + (count - 1) * L.n_params, partial.data() + count * L.n_params, partial.data() + half * L.n_params);
    count = half + count % 2;
  }
  std::vector<at::Tensor> result{grad_x};
  for (int i = 0; i < L.n; ++i) {
    auto gw = at::empty({L.out[i], L.in[i]}, x.options());
    std::copy(partial.data() + L.w_offset[i], partial.data() + L.w_offset[i] + L.out[i] * L.in[i], gw.data_ptr<float>());
    result.push_back(gw);
  }
  for (int i = 0; i < L.n; ++i) {
    auto gb = at::empty({L.out[i]}, x.options());
    std::copy(partial.data() + L.b_offset[i], partial.data() + L.b_offset[i] + L.out[i], gb.data_ptr<float>());
    result.push_back(gb);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Linear interpolation of an image (C, S_0, .., S_{D-1}) at voxel points (P, D) (array order),
// forward and backward to the points (the image is data: no gradient). Same values as
// torch.nn.functional.grid_sample(align_corners=True) on the normalised points: with zeros
// padding every corner outside the image counts as 0; with border padding the point is clamped
// into the image first (no gradient along a clamped axis); an axis of one voxel is that voxel at
// any coordinate. A non-finite coordinate gives 0 (grid_sample's result there is undefined).
// Each point is independent: the same bits at any thread count.

template <int D>
struct LinearCorners {
  int64_t offset[1 << D];  // voxel offset of each corner (valid or not)
  bool valid[1 << D];
  float weight[1 << D];
  float w0[D], w1[D];
  bool moves[D];           // the coordinate was not clamped: its gradient passes

  // false when no corner is in the image
  inline bool compute(const float* x, const int64_t* size, const int64_t* stride, bool border) {
    int64_t lo[D];
    bool lo_ok[D], hi_ok[D];
    for (int d = 0; d < D; ++d) {
      float xd = x[d];
      if (!std::isfinite(xd)) return false;
      const float last = static_cast<float>(size[d] - 1);
      moves[d] = true;
      if (size[d] == 1) {  // as grid_sample (align_corners=True): an axis of one voxel is that voxel everywhere
        xd = 0.0f;
        moves[d] = false;
      } else if (border) {
        if (xd <= 0.0f || xd >= last) {
          moves[d] = false;  // as grid_sample's border padding: no gradient at or beyond the ends
          xd = xd <= 0.0f ? 0.0f : last;
        }
      } else if (xd <= -1.0f || xd >= last + 1.0f) {
        return false;
      }
      const float f = std::floor(xd);
      lo[d] = static_cast<int64_t>(f);
      w1[d] = xd - f;
      w0[d] = 1.0f - w1[d];
      lo_ok[d] = lo[d] >= 0 && lo[d] <= size[d] - 1;
      hi_ok[d] = lo[d] + 1 >= 0 && lo[d] + 1 <= size[d] - 1;
    }
    for (int c = 0; c < (1 << D); ++c) {
      int64_t off = 0;
      bool ok = true;
      float w = 1.0f;
      for (int d = 0; d < D; ++d) {
        const bool up = (c >> d) & 1;
        off += (lo[d] + up) * stride[d];
        ok = ok && (up ? hi_ok[d] : lo_ok[d]);
        w *= up ? w1[d] : w0[d];
      }
      offset[c] = off;
      valid[c] = ok;
      weight[c] = w;
    }
    return true;
  }

  // out[d] = d/dx_d of sum_c weight[c] * v[c] (v: a value per corner); 0 along an axis that does not move
  inline void gradient(const float* v, float* out) const {
    for (int d = 0; d < D; ++d) {
      out[d] = 0.0f;
      if (!moves[d]) continue;
      float acc = 0.0f;  // d weight[c] / d x_d = +-(product of the other axes' weights)
      for (int c = 0; c < (1 << D); ++c) {
        float w = 1.0f;
        for (int e = 0; e < D; ++e)
          if (e != d) w *= ((c >> e) & 1) ? w1[e] : w0[e];
        acc += ((c >> d) & 1) ? w * v[c] : -w * v[c];
      }
      out[d] = acc;
    }
  }
};

// Calls visit(p, cs, voxels) for every point p of X (P, D) in a parallel loop, cs its corners when
// placed (nullptr for a point with no corner in the image), voxels the image's voxel count.
template <int D, typename Visit>
void for_each_located_point(const int64_t* size, const float* X, int64_t n_points, bool border, Visit&& visit) {
  int64_t stride[D];
  stride[D - 1] = 1;
  for (int d = D - 2; d >= 0; --d) stride[d] = stride[d + 1] * size[d + 1];
  const int64_t voxels = stride[0] * size[0];
  at::parallel_for(0, n_points, 2048, [&](int64_t begin, int64_t end) {
    LinearCorners<D> cs;
    for (int64_t p = begin; p < end; ++p)
      visit(p, cs.compute(X + p * D, size, stride, border) ? &cs : nullptr, voxels);
  });
}

template <int D>
void sample_forward_impl(const float* image, int64_t channels, const int64_t* size, const float* X, float* out,
                         int64_t n_points, bool border) {
  for_each_located_point<D>(size, X, n_points, border, [&](int64_t p, const LinearCorners<D>* cs, int64_t voxels) {
    float* o = out + p * channels;
    for (int64_t ch = 0; ch < channels; ++ch) {
      const float* im = image + ch * voxels;
      float acc = 0.0f;
      if (cs)
        for (int c = 0; c < (1 << D); ++c)
          if (cs->valid[c]) acc += cs->weight[c] * im[cs->offset[c]];
      o[ch] = acc;
    }
  });
}

template <int D>
void sample_backward_impl(const float* image, int64_t channels, const int64_t* size, const float* X, const float* G,
                          float* grad_points, int64_t n_points, bool border) {
  for_each_located_point<D>(size, X, n_points, border, [&](int64_t p, const LinearCorners<D>* cs, int64_t voxels) {
    float* gp = grad_points + p * D;
    for (int d = 0; d < D; ++d) gp[d] = 0.0f;
    if (!cs) return;
    float v[1 << D];  // sum over channels of grad_out times each corner's value
    for (int c = 0; c < (1 << D); ++c) v[c] = 0.0f;
    for (int64_t ch = 0; ch < channels; ++ch) {
      const float g = G[p * channels + ch];
      const float* im = image + ch * voxels;
      for (int c = 0; c < (1 << D); ++c)
        if (cs->valid[c]) v[c] += g * im[cs->offset[c]];
    }
    cs->gradient(v, gp);
  });
}

void check_sample_inputs(const at::Tensor& image, const at::Tensor& points) {
  TORCH_CHECK(image.device().is_cpu() && points.device().is_cpu(), "sample_linear: CPU tensors only");
  TORCH_CHECK(image.scalar_type() == at::kFloat && points.scalar_type() == at::kFloat, "sample_linear: float32 tensors only");
  TORCH_CHECK(points.dim() == 2 && (points.size(1) == 2 || points.size(1) == 3) && image.dim() == points.size(1) + 1,
              "sample_linear: 'image' must be (C, *S) and 'points' (P, D) with D = image.dim() - 1 in {2, 3}");
}

at::Tensor sample_linear_fwd(const at::Tensor& image_in, const at::Tensor& points_in, bool border) {
  check_sample_inputs(image_in, points_in);
  auto image = image_in.contiguous();
  auto points = points_in.contiguous();
  const int64_t D = points.size(1), P = points.size(0), C = image.size(0);
  int64_t size[3];
  for (int64_t d = 0; d < D; ++d) size[d] = image.size(d + 1);
  auto out = at::empty({P, C}, points.options());
  if (D == 2)
    sample_forward_impl<2>(image.data_ptr<float>(), C, size, points.data_ptr<float>(), out.data_ptr<float>(), P, border);
  else
    sample_forward_impl<3>(image.data_ptr<float>(), C, size, points.data_ptr<float>(), out.data_ptr<float>(), P, border);
  return out;
}

at::Tensor sample_linear_bwd(const at::Tensor& grad_out, const at::Tensor& image_in, const at::Tensor& points_in, bool border) {
  check_sample_inputs(image_in, points_in);
  auto image = image_in.contiguous();
  auto points = points_in.contiguous();
  const int64_t D = points.size(1), P = points.size(0), C = image.size(0);
  auto g = grad_out.to(at::kFloat).contiguous();
  TORCH_CHECK(g.dim() == 2 && g.size(0) == P && g.size(1) == C, "sample_linear: 'grad_out' must be (P, C)");
  int64_t size[3];
  for (int64_t d = 0; d < D; ++d) size[d] = image.size(d + 1);
  auto grad_points = at::empty_like(points);
  if (D == 2)
    sample_backward_impl<2>(image.data_ptr<float>(), C, size, points.data_ptr<float>(), g.data_ptr<float>(),
                            grad_points.data_ptr<float>(), P, border);
  else
    sample_backward_impl<3>(image.data_ptr<float>(), C, size, points.data_ptr<float>(), g.data_ptr<float>(),
                            grad_points.data_ptr<float>(), P, border);
  return grad_points;
}

// ---------------------------------------------------------------------------------------------
// The data term of monai_inr_reg.objectives.Similarity for "mutual_information", "mapped_l2" and "local_cc", and
// its gradient with respect to the moved points, in one call (the torch path took about 50 small
// operations a step; monai_inr_reg/core/losses.py holds the same maths and their documentation):
//   1. per point: inside the moving grid ([0, size - 1] on every axis) and `keep`; there, the moving
//      image's linear sample and its spatial gradient (zeros padding, as sample_linear above);
//   2. the statistics of the inside points in float64: the joint hat histogram (mutual information)
//      or the tridiagonal normal equations of the piecewise-linear intensity map (mapped L2);
//      accumulated in chunks of a fixed size and summed in chunk order, so the same bits at any
//      thread count;
//   3. per point: d loss / d moving value, times the spatial gradient.
// "local_cc" (local_cc_term below) uses step 1 for `inside` only, then samples each point's window.
// a = the moving values, b = the fixed values (no gradient), both about [0, 1], on `bins` hat knots.

constexpr int64_t kMetricMutualInformation = 0;
constexpr int64_t kMetricMappedL2 = 1;
constexpr int64_t kMetricLocalCC = 2;
constexpr int64_t kMetricMeanSquares = 3;
constexpr int64_t kChunk = 4096;

struct HatCell {
  int64_t index;  // lower knot, 0 .. bins - 2
  float frac;     // position in the cell, [0, 1]
  bool moves;     // the value was not clamped: its gradient passes (torch.clamp: inclusive)
};

inline HatCell hat_cell(float v, int64_t bins) {
  const float c = std::min(std::max(v, 0.0f), 1.0f);
  const float x = c * static_cast<float>(bins - 1);
  const float lower = std::min(std::floor(x), static_cast<float>(bins - 2));
  return {static_cast<int64_t>(lower), x - lower, v >= 0.0f && v <= 1.0f};
}

template <int D>
void sample_value_and_gradient(const float* image, const int64_t* size, const float* X, const bool* keep,
                               float* value, float* grad, uint8_t* inside, int64_t n_points) {
  for_each_located_point<D>(size, X, n_points, false, [&](int64_t p, const LinearCorners<D>* cs, int64_t) {
    const float* x = X + p * D;
    bool in = cs != nullptr && (keep == nullptr || keep[p]);
    for (int d = 0; d < D && in; ++d) in = x[d] >= 0.0f && x[d] <= static_cast<float>(size[d] - 1);
    inside[p] = in;
    float* g = grad + p * D;
    value[p] = 0.0f;
    for (int d = 0; d < D; ++d) g[d] = 0.0f;
    if (!in) return;
    float v[1 << D];
    float acc = 0.0f;
    for (int c = 0; c < (1 << D); ++c) {
      v[c] = cs->valid[c] ? image[cs->offset[c]] : 0.0f;
      acc += cs->weight[c] * v[c];
    }
    value[p] = acc;
    cs->gradient(v, g);
  });
}

// sum over the inside points of `add(p, buffer)` into a float64 buffer of `width`, in fixed chunks
template <typename Add>
std::vector<double> chunked_sum(int64_t n_points, int64_t width, Add&& add) {
  const int64_t n_chunks = (n_points + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(n_chunks, 1) * width), 0.0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* buffer = partial.data() + c * width;
      for (int64_t p = c * kChunk; p < std::min(n_points, (c + 1) * kChunk); ++p) add(p, buffer);
    }
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t i = 0; i < width; ++i) total[i] += partial[c * width + i];
  return total;
}

// minus the mutual information (nats); da[p] = d loss / d a_p
double mutual_information_term(const float* a, const float* b, const uint8_t* inside, int64_t P, int64_t bins,
                               float* da) {
  const int64_t K = bins;
  auto sums = chunked_sum(P, K * K + 1, [&](int64_t p, double* h) {
    if (!inside[p]) return;
    const HatCell ca = hat_cell(a[p], K), cb = hat_cell(b[p], K);
    const double ua = ca.frac, ub = cb.frac, la = 1.0 - ua, lb = 1.0 - ub;
    double* row = h + ca.index * K + cb.index;
    row[0] += la * lb;
    row[1] += la * ub;
    row[K] += ua * lb;
    row[K + 1] += ua * ub;
    h[K * K] += 1.0;
  });
  const double n = std::max(sums[K * K], 1.0), eps = 1e-10;
  std::vector<double> joint(K * K), pa(K, 0.0), pb(K, 0.0);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      joint[i * K + j] = sums[i * K + j] / n;
      pa[i] += joint[i * K + j];
      pb[j] += joint[i * K + j];
    }
  double mi = 0.0;
  std::vector<double> dmi(K * K);  // d MI / d joint(i, j), through the marginals too
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      const double J = joint[i * K + j];
      const double log_ratio = std::log(J + eps) - std::log(pa[i] + eps) - std::log(pb[j] + eps);
      mi += J * log_ratio;
      dmi[i * K + j] = log_ratio + J / (J + eps) - pa[i] / (pa[i] + eps) - pb[j] / (pb[j] + eps);
    }
  const double scale = -static_cast<double>(K - 1) / n;  // loss = -MI; d frac / d value = K - 1
  at::parallel_for(0, P, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      da[p] = 0.0f;
      if (!inside[p]) continue;
      const HatCell ca = hat_cell(a[p], K), cb = hat_cell(b[p], K);
      if (!ca.moves) continue;
      const double* g = dmi.data() + ca.index * K + cb.index;
      const double ub = cb.frac;
      da[p] = static_cast<float>(scale * ((1.0 - ub) * (g[K] - g[0]) + ub * (g[K + 1] - g[1])));
    }
  });
  return -mi;
}

// mean((s - t)^2) over the points inside (ANTs' MeanSquares); d term / d s_p into ds[p].
double mean_squares_term(const float* s, const float* t, const uint8_t* inside, int64_t P, float* ds) {
  auto sums = chunked_sum(P, 2, [&](int64_t p, double* h) {
    if (!inside[p]) return;
    const double r = static_cast<double>(s[p]) - t[p];
    h[0] += r * r;
    h[1] += 1.0;
  });
  if (sums[1] == 0.0) return std::numeric_limits<double>::quiet_NaN();
  const double scale = 2.0 / sums[1];
  at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      if (inside[p]) ds[p] = static_cast<float>(scale * (static_cast<double>(s[p]) - t[p]));
  });
  return sums[0] / sums[1];
}

// mean(rho((g(s) - t)^2 / var(t))) with g the ridge least-squares piecewise-linear map from the source
// s to the target t (no gradient through g) and rho the identity or, when robust_scale > 0,
// Geman-McClure. Adds weight * d term / d s_p to ds[p] and weight * d term / d t_p to dt[p] (either may
// be nullptr; through var(t) too with variance_gradient).
double mapped_l2_term(const float* s, const float* t, const uint8_t* inside, int64_t P, int64_t bins,
                      double robust_scale, bool variance_gradient, double weight, float* ds, float* dt) {
  const int64_t K = bins;
  // diag (K), off (K), rhs (K), count, sum t
  auto sums = chunked_sum(P, 3 * K + 2, [&](int64_t p, double* h) {
    if (!inside[p]) return;
    const HatCell cs = hat_cell(s[p], K);
    const double u = cs.frac, l = 1.0 - u, target = t[p];
    const int64_t i = cs.index;
    h[i] += l * l;
    h[i + 1] += u * u;
    h[K + i] += l * u;
    h[2 * K + i] += l * target;
    h[2 * K + i + 1] += u * target;
    h[3 * K] += 1.0;
    h[3 * K + 1] += target;
  });
  const double n = sums[3 * K];
  if (n < 2) return std::nan("");  // torch: the variance of fewer than two values
  const double mean_t = sums[3 * K + 1] / n;
  auto ss = chunked_sum(P, 1, [&](int64_t p, double* h) {
    if (inside[p]) h[0] += (t[p] - mean_t) * (t[p] - mean_t);
  });
  const double raw_var = ss[0] / (n - 1.0);
  const double var = std::max(raw_var, 1e-8);
  // the tridiagonal normal equations (Thomas algorithm)
  std::vector<double> diag(sums.begin(), sums.begin() + K), off(sums.begin() + K, sums.begin() + 2 * K),
      coef(sums.begin() + 2 * K, sums.begin() + 3 * K);
  const double ridge = 1e-3 * n / static_cast<double>(K);
  for (auto& d : diag) d += ridge;
  for (int64_t i = 1; i < K; ++i) {
    const double w = off[i - 1] / diag[i - 1];
    diag[i] -= w * off[i - 1];
    coef[i] -= w * coef[i - 1];
  }
  coef[K - 1] /= diag[K - 1];
  for (int64_t i = K - 2; i >= 0; --i) coef[i] = (coef[i] - off[i] * coef[i + 1]) / diag[i];
  const double c2 = robust_scale * robust_scale;
  // per point: the term and d term / d squared-residual-over-var
  std::vector<double> term(static_cast<size_t>(P), 0.0), dterm(static_cast<size_t>(P), 0.0),
      residual(static_cast<size_t>(P), 0.0);
  at::parallel_for(0, P, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (!inside[p]) continue;
      const HatCell cs = hat_cell(s[p], K);
      const double u = cs.frac;
      const double r = coef[cs.index] * (1.0 - u) + coef[cs.index + 1] * u - t[p];
      const double q = r * r / var;
      residual[p] = r;
      term[p] = q;
      dterm[p] = 1.0;
      if (robust_scale > 0) {
        term[p] = c2 * q / (q + c2);
        dterm[p] = c2 * c2 / ((q + c2) * (q + c2));
      }
    }
  });
  // d loss / d var through every term (the variance's own gradient; none where it was clamped)
  double dvar = 0.0;
  if (dt != nullptr && variance_gradient && raw_var > 1e-8) {
    auto acc = chunked_sum(P, 1, [&](int64_t p, double* h) {
      if (inside[p]) h[0] -= dterm[p] * residual[p] * residual[p] / (var * var);
    });
    dvar = acc[0] / n;
  }
  at::parallel_for(0, P, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (!inside[p]) continue;
      const double r = residual[p];
      if (ds != nullptr) {
        const HatCell cs = hat_cell(s[p], K);
        if (cs.moves)
          ds[p] += static_cast<float>(weight * dterm[p] * 2.0 * r / var * (coef[cs.index + 1] - coef[cs.index]) * (K - 1) / n);
      }
      if (dt != nullptr)
        dt[p] += static_cast<float>(weight * (-dterm[p] * 2.0 * r / var / n + dvar * 2.0 * (t[p] - mean_t) / (n - 1.0)));
    }
  });
  auto total = chunked_sum(P, 1, [&](int64_t p, double* h) { h[0] += term[p]; });
  return total[0] / n;
}

// local_cc: minus the mean over the inside points of the windowed correlation coefficient u . f, with f
// the fixed window (K values, zero-mean and unit-norm, given) and u the moving window sampled at the
// moved point plus the window's voxel offsets (zeros padding), minus its mean, over its norm clamped to
// at least kUnitNormFloor (monai_inr_reg/core/losses.py: normalise_rows). Writes d loss / d point to
// grad (P, D) (the motion is taken as a translation over the window) and returns the loss (NaN when no
// point is inside, as the mean of none).
constexpr float kUnitNormFloor = 1e-6f;

// The linear interpolation's corner weights, their slopes d weight[c] / d x_d and the corners' voxel
// offsets from the lower corner, for the in-cell positions w1 = x - floor(x) (w0 = 1 - w1); T: float, or
// Lanes for kLanes points at once (the same operations in the same order).
template <int D, typename T>
inline void corner_weights(const T* w0, const T* w1, const int64_t* stride, T* weight, T (*slope)[1 << D],
                           int64_t* corner) {
  for (int c = 0; c < (1 << D); ++c) {
    T w = w0[0] * 0.0f + 1.0f;
    int64_t off = 0;
    for (int d = 0; d < D; ++d) {
      const bool up = (c >> d) & 1;
      w *= up ? w1[d] : w0[d];
      off += up * stride[d];
    }
    weight[c] = w;
    corner[c] = off;
    for (int d = 0; d < D; ++d) {
      T v = w0[0] * 0.0f + (((c >> d) & 1) ? 1.0f : -1.0f);
      for (int e = 0; e < D; ++e)
        if (e != d) v *= ((c >> e) & 1) ? w1[e] : w0[e];
      slope[d][c] = v;
    }
  }
}

constexpr int64_t window_size(int D, int R) { return D == 0 ? 1 : (2 * R + 1) * window_size(D - 1, R); }

// The window's statistics and gradient for kLanes points at once (one vector lane each), when each of
// them is inside and its window interior (no padding): the scalar code of local_cc_term, the same
// operations in the same order per lane. R: the window's radius, known when compiling.
template <int D, int R>
void local_cc_tile(const float* image, const int64_t* stride, const int64_t* window_offset, const float* X,
                   const float* fixed, int64_t p0, float* cc, float* grad) {
  constexpr int64_t K = window_size(D, R);
  constexpr int C = 1 << D;
  int64_t base[kLanes];
  Lanes w0[D], w1[D];
  for (int l = 0; l < kLanes; ++l) {
    const float* x = X + (p0 + l) * D;
    int64_t off = 0;
    for (int d = 0; d < D; ++d) {
      const float f = std::floor(x[d]);
      off += static_cast<int64_t>(f) * stride[d];
      w1[d][l] = x[d] - f;
      w0[d][l] = 1.0f - w1[d][l];
    }
    base[l] = off;
  }
  Lanes weight[C], slope[D][C];
  int64_t corner[C];
  corner_weights<D>(w0, w1, stride, weight, slope, corner);
  Lanes m[K], dm[K][D], mean = {};
  for (int64_t k = 0; k < K; ++k) {
    Lanes v[C];
    for (int c = 0; c < C; ++c)
      for (int l = 0; l < kLanes; ++l) v[c][l] = image[base[l] + window_offset[k] + corner[c]];
    Lanes acc = {};
    for (int c = 0; c < C; ++c) acc += weight[c] * v[c];
    for (int d = 0; d < D; ++d) {
      Lanes gd = {};
      for (int c = 0; c < C; ++c) gd += slope[d][c] * v[c];
      dm[k][d] = gd;
    }
    m[k] = acc;
    mean += acc;
  }
  mean /= static_cast<float>(K);
  Lanes norm = {};
  for (int64_t k = 0; k < K; ++k) {
    m[k] -= mean;
    norm += m[k] * m[k];
  }
  Lanes inverse, value = {}, clamped;
  for (int l = 0; l < kLanes; ++l) {
    norm[l] = std::sqrt(norm[l]);
    clamped[l] = norm[l] < kUnitNormFloor ? 1.0f : 0.0f;
    inverse[l] = 1.0f / (norm[l] < kUnitNormFloor ? kUnitNormFloor : norm[l]);
  }
  Lanes f[K];
  for (int64_t k = 0; k < K; ++k)
    for (int l = 0; l < kLanes; ++l) f[k][l] = fixed[(p0 + l) * K + k];
  for (int64_t k = 0; k < K; ++k) value += m[k] * inverse * f[k];
  Lanes g[K], g_mean = {};
  for (int64_t k = 0; k < K; ++k) {
    g[k] = clamped > 0.5f ? f[k] * inverse : (f[k] - value * m[k] * inverse) * inverse;
    g_mean += g[k];
  }
  g_mean /= static_cast<float>(K);
  Lanes total[D] = {};
  for (int64_t k = 0; k < K; ++k)
    for (int d = 0; d < D; ++d) total[d] += (g[k] - g_mean) * dm[k][d];
  for (int l = 0; l < kLanes; ++l) {
    cc[p0 + l] = value[l];
    for (int d = 0; d < D; ++d) grad[(p0 + l) * D + d] = total[d][l];
  }
}

// R > 0: the window's radius known when compiling: runs of kLanes points inside with interior windows go
// through local_cc_tile (2D radius 1: about 2x faster); R == 0: `radius_in`, every point on its own.
template <int D, int R>
double local_cc_term(const float* image, const int64_t* size, const float* X, const uint8_t* inside, int64_t P,
                     const float* fixed, int64_t K_in, int64_t radius_in, float* grad) {
  const int64_t K = R > 0 ? window_size(D, R) : K_in;
  const int64_t radius = R > 0 ? R : radius_in;
  int64_t stride[D];
  stride[D - 1] = 1;
  for (int d = D - 2; d >= 0; --d) stride[d] = stride[d + 1] * size[d + 1];
  std::vector<int64_t> offsets(static_cast<size_t>(K * D));  // window_offsets: C order, the last axis fastest
  for (int64_t k = 0; k < K; ++k) {
    int64_t rest = k;
    for (int d = D - 1; d >= 0; --d) {
      offsets[k * D + d] = rest % (2 * radius + 1) - radius;
      rest /= 2 * radius + 1;
    }
  }
  bool single_voxel_axis = false;
  for (int d = 0; d < D; ++d) single_voxel_axis = single_voxel_axis || size[d] == 1;
  std::vector<int64_t> window_offset(static_cast<size_t>(K), 0);  // each window sample's voxel offset
  for (int64_t k = 0; k < K; ++k)
    for (int d = 0; d < D; ++d) window_offset[k] += offsets[k * D + d] * stride[d];
  // a point whose window is interior: no sample of it needs padding
  auto interior_point = [&](int64_t p) {
    if (!inside[p] || single_voxel_axis) return false;
    for (int d = 0; d < D; ++d) {
      const int64_t lo = static_cast<int64_t>(std::floor(X[p * D + d]));
      if (lo - radius < 0 || lo + radius + 1 > size[d] - 1) return false;
    }
    return true;
  };
  std::vector<float> cc(static_cast<size_t>(P), 0.0f);
  // tiles of kLanes points at fixed boundaries (the same bits at any thread count)
  const int64_t n_tiles = (P + kLanes - 1) / kLanes;
  at::parallel_for(0, n_tiles, 64, [&](int64_t t0, int64_t t1) {
    LinearCorners<D> cs;
    std::vector<float> m(static_cast<size_t>(K)), dm(static_cast<size_t>(K * D)), g(static_cast<size_t>(K));
    for (int64_t t = t0; t < t1; ++t) {
    const int64_t tile_begin = t * kLanes, tile_end = std::min(P, tile_begin + kLanes);
    if constexpr (R > 0) {
      bool whole = tile_end - tile_begin == kLanes;
      for (int64_t p = tile_begin; p < tile_end && whole; ++p) whole = interior_point(p);
      if (whole) {
        local_cc_tile<D, R>(image, stride, window_offset.data(), X, fixed, tile_begin, cc.data(), grad);
        continue;
      }
    }
    for (int64_t p = tile_begin; p < tile_end; ++p) {
      float* gp = grad + p * D;
      for (int d = 0; d < D; ++d) gp[d] = 0.0f;
      if (!inside[p]) continue;
      const float* x = X + p * D;
      // the window's samples share the centre's position within its cell: one set of corner weights
      int64_t lo[D];
      float w0[D], w1[D];
      bool interior = !single_voxel_axis;
      for (int d = 0; d < D; ++d) {
        const float f = std::floor(x[d]);
        lo[d] = static_cast<int64_t>(f);
        w1[d] = x[d] - f;
        w0[d] = 1.0f - w1[d];
        interior = interior && lo[d] - radius >= 0 && lo[d] + radius + 1 <= size[d] - 1;
      }
      float weight[1 << D], slope[D][1 << D];  // d weight[c] / d x_d
      int64_t corner[1 << D];
      corner_weights<D>(w0, w1, stride, weight, slope, corner);
      float mean = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        float v[1 << D];
        float* dk = dm.data() + k * D;
        if (interior) {
          int64_t base = 0;
          for (int d = 0; d < D; ++d) base += (lo[d] + offsets[k * D + d]) * stride[d];
          for (int c = 0; c < (1 << D); ++c) v[c] = image[base + corner[c]];
        } else {  // near the edge: zeros padding, as sample_linear (the general corner code)
          float xk[D];
          for (int d = 0; d < D; ++d) xk[d] = x[d] + static_cast<float>(offsets[k * D + d]);
          m[k] = 0.0f;
          for (int d = 0; d < D; ++d) dk[d] = 0.0f;
          if (!cs.compute(xk, size, stride, false)) continue;
          float acc = 0.0f;
          for (int c = 0; c < (1 << D); ++c) {
            v[c] = cs.valid[c] ? image[cs.offset[c]] : 0.0f;
            acc += cs.weight[c] * v[c];
          }
          m[k] = acc;
          cs.gradient(v, dk);
          mean += acc;
          continue;
        }
        float acc = 0.0f;
        for (int c = 0; c < (1 << D); ++c) acc += weight[c] * v[c];
        for (int d = 0; d < D; ++d) {
          float gd = 0.0f;
          for (int c = 0; c < (1 << D); ++c) gd += slope[d][c] * v[c];
          dk[d] = gd;
        }
        m[k] = acc;
        mean += acc;
      }
      mean /= static_cast<float>(K);
      float norm = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        m[k] -= mean;
        norm += m[k] * m[k];
      }
      norm = std::sqrt(norm);
      const float* f = fixed + p * K;
      const bool clamped = norm < kUnitNormFloor;
      const float inverse = 1.0f / (clamped ? kUnitNormFloor : norm);
      float value = 0.0f;
      for (int64_t k = 0; k < K; ++k) value += m[k] * inverse * f[k];
      cc[p] = value;
      // d cc / d centred: (f - cc u) / |c| (f / floor where the norm is clamped); then through the mean
      float g_mean = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        g[k] = clamped ? f[k] * inverse : (f[k] - value * m[k] * inverse) * inverse;
        g_mean += g[k];
      }
      g_mean /= static_cast<float>(K);
      float total[D] = {};
      for (int64_t k = 0; k < K; ++k)
        for (int d = 0; d < D; ++d) total[d] += (g[k] - g_mean) * dm[k * D + d];
      for (int d = 0; d < D; ++d) gp[d] = total[d];
    }
    }
  });
  auto sums = chunked_sum(P, 2, [&](int64_t p, double* h) {
    if (!inside[p]) return;
    h[0] += cc[p];
    h[1] += 1.0;
  });
  if (sums[1] == 0.0) return std::numeric_limits<double>::quiet_NaN();
  const float scale = static_cast<float>(-1.0 / sums[1]);
  at::parallel_for(0, P * D, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) grad[i] *= scale;
  });
  return -sums[0] / sums[1];
}

std::tuple<at::Tensor, at::Tensor> similarity_fwd(const at::Tensor& image_in, const at::Tensor& points_in,
                                                  const at::Tensor& fixed_in, const c10::optional<at::Tensor>& keep_in,
                                                  int64_t metric, int64_t bins, double robust_scale, bool symmetric,
                                                  bool variance_gradient) {
  check_sample_inputs(image_in, points_in);
  TORCH_CHECK(image_in.size(0) == 1, "similarity: 'image' must have one channel");
  TORCH_CHECK(metric == kMetricMutualInformation || metric == kMetricMappedL2 || metric == kMetricLocalCC ||
                  metric == kMetricMeanSquares,
              "similarity: unknown metric ", metric);
  TORCH_CHECK(metric == kMetricLocalCC || metric == kMetricMeanSquares || bins >= 2,
              "similarity: 'bins' must be at least 2");
  auto image = image_in.contiguous();
  auto points = points_in.contiguous();
  const int64_t D = points.size(1), P = points.size(0);
  auto fixed = fixed_in.to(at::kFloat).contiguous();
  int64_t radius = 0;
  if (metric == kMetricLocalCC) {  // fixed: (P, K) windows of (2 radius + 1)^D voxels
    TORCH_CHECK(fixed.dim() == 2 && fixed.size(0) == P, "similarity: local_cc's 'fixed' must be (P, K) windows");
    while (static_cast<int64_t>(std::llround(std::pow(2 * radius + 1, D))) < fixed.size(1)) ++radius;
    TORCH_CHECK(std::llround(std::pow(2 * radius + 1, D)) == fixed.size(1),
                "similarity: local_cc's window of ", fixed.size(1), " values is not (2 r + 1)^", D);
  } else {
    TORCH_CHECK(fixed.dim() == 1 && fixed.size(0) == P, "similarity: 'fixed' must be (P,)");
  }
  at::Tensor keep;
  if (keep_in.has_value() && keep_in->defined()) {
    keep = keep_in->to(at::kBool).contiguous();
    TORCH_CHECK(keep.dim() == 1 && keep.size(0) == P, "similarity: 'keep' must be (P,)");
  }
  int64_t size[3];
  for (int64_t d = 0; d < D; ++d) size[d] = image.size(d + 1);
  auto value = at::empty({P}, points.options());
  auto grad = at::empty({P, D}, points.options());
  std::vector<uint8_t> inside(static_cast<size_t>(P));
  const bool* keep_ptr = keep.defined() ? keep.data_ptr<bool>() : nullptr;
  if (D == 2)
    sample_value_and_gradient<2>(image.data_ptr<float>(), size, points.data_ptr<float>(), keep_ptr,
                                 value.data_ptr<float>(), grad.data_ptr<float>(), inside.data(), P);
  else
    sample_value_and_gradient<3>(image.data_ptr<float>(), size, points.data_ptr<float>(), keep_ptr,
                                 value.data_ptr<float>(), grad.data_ptr<float>(), inside.data(), P);
  if (metric == kMetricLocalCC) {
    auto term = D == 2 ? (radius == 1 ? local_cc_term<2, 1> : local_cc_term<2, 0>)
                       : (radius == 1 ? local_cc_term<3, 1> : local_cc_term<3, 0>);
    const double loss = term(image.data_ptr<float>(), size, points.data_ptr<float>(), inside.data(), P,
                             fixed.data_ptr<float>(), fixed.size(1), radius, grad.data_ptr<float>());
    return {at::scalar_tensor(loss, points.options()), grad};
  }
  std::vector<float> da(static_cast<size_t>(P), 0.0f);
  const float* a = value.data_ptr<float>();
  const float* b = fixed.data_ptr<float>();
  double loss;
  if (metric == kMetricMutualInformation) {
    loss = mutual_information_term(a, b, inside.data(), P, bins, da.data());
  } else if (metric == kMetricMeanSquares) {
    loss = mean_squares_term(a, b, inside.data(), P, da.data());
  } else if (!symmetric) {
    loss = mapped_l2_term(a, b, inside.data(), P, bins, robust_scale, false, 1.0, da.data(), nullptr);
  } else {  // the map both ways: moving -> fixed, and fixed -> moving (the moving values the target)
    loss = 0.5 * (mapped_l2_term(a, b, inside.data(), P, bins, robust_scale, false, 0.5, da.data(), nullptr) +
                  mapped_l2_term(b, a, inside.data(), P, bins, robust_scale, variance_gradient, 0.5, nullptr, da.data()));
  }
  float* g = grad.data_ptr<float>();
  at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t d = 0; d < D; ++d) g[p * D + d] *= da[p];
  });
  return {at::scalar_tensor(loss, points.options()), grad};
}

// ---------------------------------------------------------------------------------------------
// An affine map of points, y = x A^T + b with `matrix` = [A | b] (D, D + 1), and its backward (the
// Python side: monai_inr_reg.core.grid.apply_affine). torch's matrix product takes 40-800 us for a
// (P, 2 or 3) by (D, D) product (P = 4,096-65,536) that needs a few microseconds as a plain loop; the
// fits map their points several times a step. Forward and the points' gradient per point (parallel);
// the matrix's gradient grad^T [x, 1] summed in float64 over chunks of kChunk points in chunk order
// (the same bits at any thread count).

template <typename T, int D>
void affine_forward_impl(const T* X, const T* M, T* Y, int64_t P) {
  at::parallel_for(0, P, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* x = X + p * D;
      for (int i = 0; i < D; ++i) {
        T acc = M[i * (D + 1) + D];
        for (int j = 0; j < D; ++j) acc += M[i * (D + 1) + j] * x[j];
        Y[p * D + i] = acc;
      }
    }
  });
}

at::Tensor affine_points_fwd(const at::Tensor& points_in, const at::Tensor& matrix_in) {
  TORCH_CHECK(points_in.device().is_cpu() && matrix_in.device().is_cpu(), "affine_points: CPU tensors only");
  TORCH_CHECK(points_in.dim() == 2 && (points_in.size(1) == 2 || points_in.size(1) == 3), "affine_points: 'points' must be (P, 2 or 3)");
  const int64_t D = points_in.size(1), P = points_in.size(0);
  TORCH_CHECK(matrix_in.dim() == 2 && matrix_in.size(0) == D && matrix_in.size(1) == D + 1, "affine_points: 'matrix' must be (D, D + 1)");
  TORCH_CHECK(points_in.scalar_type() == matrix_in.scalar_type() &&
              (points_in.scalar_type() == at::kFloat || points_in.scalar_type() == at::kDouble),
              "affine_points: float32 or float64 tensors of one dtype");
  auto points = points_in.contiguous();
  auto matrix = matrix_in.contiguous();
  auto out = at::empty({P, D}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "affine_points_fwd", [&] {
    if (D == 2)
      affine_forward_impl<scalar_t, 2>(points.data_ptr<scalar_t>(), matrix.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), P);
    else
      affine_forward_impl<scalar_t, 3>(points.data_ptr<scalar_t>(), matrix.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), P);
  });
  return out;
}

template <typename T, int D>
void affine_backward_impl(const T* G, const T* X, const T* M, int64_t P, T* grad_points, double* grad_matrix) {
  if (grad_points != nullptr)
    at::parallel_for(0, P, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        for (int j = 0; j < D; ++j) {
          T acc = 0;
          for (int i = 0; i < D; ++i) acc += G[p * D + i] * M[i * (D + 1) + j];
          grad_points[p * D + j] = acc;
        }
    });
  if (grad_matrix == nullptr) return;
  // per chunk of kChunk points in float64, the chunks summed in order (as chunked_sum, unrolled for D)
  const int64_t n_chunks = std::max<int64_t>((P + kChunk - 1) / kChunk, 1);
  std::vector<double> partial(static_cast<size_t>(n_chunks * D * (D + 1)), 0.0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double acc[D][D + 1] = {};
      for (int64_t p = c * kChunk; p < std::min(P, (c + 1) * kChunk); ++p)
        for (int i = 0; i < D; ++i) {
          const double g = G[p * D + i];
          for (int j = 0; j < D; ++j) acc[i][j] += g * X[p * D + j];
          acc[i][D] += g;
        }
      for (int i = 0; i < D; ++i)
        for (int j = 0; j <= D; ++j) partial[(c * D + i) * (D + 1) + j] = acc[i][j];
    }
  });
  for (int64_t k = 0; k < D * (D + 1); ++k) grad_matrix[k] = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t k = 0; k < D * (D + 1); ++k) grad_matrix[k] += partial[c * D * (D + 1) + k];
}

// (grad_points (P, D) or an empty tensor, grad_matrix (D, D + 1) float64 or an empty tensor)
std::tuple<at::Tensor, at::Tensor> affine_points_bwd(const at::Tensor& grad_in, const at::Tensor& points_in,
                                                     const at::Tensor& matrix_in, bool need_points, bool need_matrix) {
  const int64_t D = points_in.size(1), P = points_in.size(0);
  auto points = points_in.contiguous();
  auto matrix = matrix_in.contiguous();
  auto grad = grad_in.to(points.scalar_type()).contiguous();
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == P && grad.size(1) == D, "affine_points: 'grad' must be (P, D)");
  at::Tensor grad_points = need_points ? at::empty({P, D}, points.options()) : at::empty({0}, points.options());
  at::Tensor grad_matrix = at::empty({need_matrix ? D : 0, D + 1}, points.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "affine_points_bwd", [&] {
    auto run = D == 2 ? affine_backward_impl<scalar_t, 2> : affine_backward_impl<scalar_t, 3>;
    run(grad.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(), matrix.data_ptr<scalar_t>(), P,
        need_points ? grad_points.data_ptr<scalar_t>() : nullptr, need_matrix ? grad_matrix.data_ptr<double>() : nullptr);
  });
  return {grad_points, grad_matrix};
}

}  // namespace

TORCH_LIBRARY(monai_inr_reg, m) {
  m.def("hash_grid_fwd(Tensor points, Tensor params, Tensor levels, Tensor weights, int n_features, "
        "int log2_hashmap_size) -> Tensor");
  m.def("hash_grid_bwd(Tensor grad_out, Tensor points, Tensor params, Tensor levels, Tensor weights, "
        "int n_features, int log2_hashmap_size, bool need_params, bool need_points) -> (Tensor, Tensor)");
  m.def("mlp_fwd(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
  m.def("mlp_fwd_saving(Tensor x, Tensor[] weights, Tensor[] biases) -> (Tensor, Tensor)");
  m.def("mlp_bwd(Tensor grad_out, Tensor x, Tensor[] weights, Tensor[] biases, bool need_x, Tensor? hidden) -> Tensor[]");
  m.def("sample_linear_fwd(Tensor image, Tensor points, bool border) -> Tensor");
  m.def("sample_linear_bwd(Tensor grad_out, Tensor image, Tensor points, bool border) -> Tensor");
  m.def("similarity_fwd(Tensor image, Tensor points, Tensor fixed, Tensor? keep, int metric, int bins, "
        "float robust_scale, bool symmetric, bool variance_gradient) -> (Tensor, Tensor)");
  m.def("affine_points_fwd(Tensor points, Tensor matrix) -> Tensor");
  m.def("affine_points_bwd(Tensor grad, Tensor points, Tensor matrix, bool need_points, bool need_matrix) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(monai_inr_reg, CPU, m) {
  m.impl("hash_grid_fwd", &hash_grid_fwd);
  m.impl("hash_grid_bwd", &hash_grid_bwd);
  m.impl("mlp_fwd", &mlp_fwd);
  m.impl("mlp_fwd_saving", &mlp_fwd_saving);
  m.impl("mlp_bwd", &mlp_bwd);
  m.impl("sample_linear_fwd", &sample_linear_fwd);
  m.impl("sample_linear_bwd", &sample_linear_bwd);
  m.impl("similarity_fwd", &similarity_fwd);
  m.impl("affine_points_fwd", &affine_points_fwd);
  m.impl("affine_points_bwd", &affine_points_bwd);
}
