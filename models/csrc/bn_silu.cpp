// BatchNorm2d in training mode followed by SiLU, as one autograd function over channels_last float32 tensors on
// the CPU (models/bn_silu.py builds and loads it; see there for when it is used).
//
// Forward (Ioffe & Szegedy 2015, "Batch Normalization", Alg. 1; SiLU: Elfwing et al. 2018, "Sigmoid-Weighted
// Linear Units"):  mu_c = mean(x_c), var_c = mean((x_c - mu_c)^2), y = gamma_c (x - mu_c) / sqrt(var_c + eps)
// + beta_c, a = y * sigmoid(y). Running statistics as torch.nn.BatchNorm2d: r = (1 - m) r + m * stat, with the
// unbiased variance.
// Backward: g_y = g_a * s * (1 + y (1 - s)) with s = sigmoid(y), then the batch-norm gradient
//   g_x = gamma_c / sqrt(var_c + eps) * (g_y - mean(g_y) - xhat * mean(g_y * xhat)),
//   g_gamma = sum(g_y * xhat), g_beta = sum(g_y),  xhat = (x - mu_c) / sqrt(var_c + eps).
// Only x is kept for the backward pass (y and s are recomputed), so the pair reads and writes the activations
// fewer times than ATen's separate batch_norm, silu and their backward kernels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

constexpr int64_t kBlockFloats = 2048;  // rows per block: about 8 KB of one tensor, so a block stays in L1

// sigmoid(y) = 1 / (1 + exp(-y)); exp with ATen's 20-ulp polynomial, 1/d by rcp and one Newton step (rel. err.
// about 1e-7). -y is clamped at 80 so that 1 + exp(-y) stays finite (sigmoid(-80) is 1.8e-35).
inline Vec vsigmoid(const Vec& y) {
  const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.f), Vec(_mm256_min_ps(y.neg(), _mm256_set1_ps(80.f))).exp_u20());
  __m256 r = _mm256_rcp_ps(d);
  r = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.f)));
  return Vec(r);
}

inline float ssigmoid(float y) { return 1.f / (1.f + std::exp(std::min(-y, 80.f))); }

// A 4-D tensor whose pixels are rows of C contiguous channels at a uniform row stride (channels_last, or a channel
// slice of it); anything else is copied to channels_last first.
struct Rows {
  at::Tensor keep;
  float* data;
  int64_t stride;
};

Rows rows_of(const at::Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3), rs = t.stride(3);
  const bool ok = t.scalar_type() == at::kFloat && t.stride(1) == 1 && (H == 1 || t.stride(2) == W * rs) &&
                  (t.size(0) == 1 || t.stride(0) == H * W * rs) && rs >= t.size(1);
  at::Tensor k = ok ? t : t.contiguous(at::MemoryFormat::ChannelsLast).to(at::kFloat);
  return {k, k.data_ptr<float>(), ok ? rs : k.size(1)};
}

struct Blocks {
  int64_t rows, block, count;
};

Blocks blocks_of(int64_t M, int64_t C) {
  const int64_t b = std::max<int64_t>(4, kBlockFloats / C);
  return {M, b, (M + b - 1) / b};
}

// body(r0, r1) over the blocks' row ranges, blocks spread over torch's intra-op threads.
template <typename F>
void for_rows(const Blocks& bl, const F& body) {
  at::parallel_for(0, bl.count, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) body(b * bl.block, std::min(bl.rows, (b + 1) * bl.block));
  });
}

// Per-block column sums into [count, C] floats (body(r0, r1, s, q) fills one block's), then totals in double in a
// fixed order: the same result whatever the thread count.
template <typename F>
void column_sums(const Blocks& bl, int64_t C, std::vector<double>& sum_s, std::vector<double>& sum_q,
                 const F& body) {
  std::vector<float> part_s(bl.count * C), part_q(bl.count * C);
  for_rows(bl, [&](int64_t r0, int64_t r1) {
    const int64_t b = r0 / bl.block;
    body(r0, r1, part_s.data() + b * C, part_q.data() + b * C);
  });
  sum_s.assign(C, 0.0);
  sum_q.assign(C, 0.0);
  for (int64_t b = 0; b < bl.count; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      sum_s[c] += part_s[b * C + c];
      sum_q[c] += part_q[b * C + c];
    }
  }
}

// Per channel over rows [r0, r1): the block's mean and sum of squared deviations from it, by two passes over the
// block (it is in L1 by then), as ATen's two-pass statistics; blocks are merged in double (merge_moments).
void moments_block(const float* x, int64_t C, int64_t r0, int64_t r1, float* mean_out, float* m2_out) {
  const int64_t V = Vec::size(), Cv = C - C % V;
  const float inv_n = 1.f / float(r1 - r0);
  for (int64_t c = 0; c < Cv; c += V) {
    Vec s(0.f), q(0.f);
    for (int64_t r = r0; r < r1; ++r) s = s + Vec::loadu(x + r * C + c);
    const Vec m = s * Vec(inv_n);
    for (int64_t r = r0; r < r1; ++r) {
      const Vec d = Vec::loadu(x + r * C + c) - m;
      q = at::vec::fmadd(d, d, q);
    }
    m.store(mean_out + c);
    q.store(m2_out + c);
  }
  for (int64_t c = Cv; c < C; ++c) {
    float s = 0.f, q = 0.f;
    for (int64_t r = r0; r < r1; ++r) s += x[r * C + c];
    const float m = s * inv_n;
    for (int64_t r = r0; r < r1; ++r) q += (x[r * C + c] - m) * (x[r * C + c] - m);
    mean_out[c] = m;
    m2_out[c] = q;
  }
}

// Mean and biased variance per channel from the blocks' (mean, M2): Chan, Golub & LeVeque (1979), pairwise update.
void merge_moments(const Blocks& bl, int64_t C, const std::vector<float>& means, const std::vector<float>& m2s,
                   std::vector<double>& mean, std::vector<double>& var) {
  mean.assign(C, 0.0);
  var.assign(C, 0.0);
  double n = 0.0;
  for (int64_t b = 0; b < bl.count; ++b) {
    const double nb = double(std::min(bl.rows, (b + 1) * bl.block) - b * bl.block), w = nb / (n + nb);
    for (int64_t c = 0; c < C; ++c) {
      const double delta = means[b * C + c] - mean[c];
      mean[c] += delta * w;
      var[c] += m2s[b * C + c] + delta * delta * n * w;
    }
    n += nb;
  }
  for (int64_t c = 0; c < C; ++c) var[c] /= n;
}

// a = y * sigmoid(y), y = x * scale + shift, over rows [r0, r1).
void silu_block(const float* x, float* a, int64_t C, int64_t r0, int64_t r1, const float* sc, const float* sh) {
  const int64_t V = Vec::size(), Cv = C - C % V;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* ar = a + r * C;
    for (int64_t c = 0; c < Cv; c += V) {
      const Vec y = at::vec::fmadd(Vec::loadu(xr + c), Vec::loadu(sc + c), Vec::loadu(sh + c));
      (y * vsigmoid(y)).store(ar + c);
    }
    for (int64_t c = Cv; c < C; ++c) {
      const float y = xr[c] * sc[c] + sh[c];
      ar[c] = y * ssigmoid(y);
    }
  }
}

// g_y into gy (rows of C), with per-channel sums of g_y and g_y * (x - mean) over rows [r0, r1).
void grad_y_block(const float* x, const Rows& ga, float* gy, int64_t C, int64_t r0, int64_t r1, const float* sc,
                  const float* sh, const float* mean, float* s_out, float* q_out) {
  const int64_t V = Vec::size(), Cv = C - C % V;
  const Vec one(1.f);
  for (int64_t c = 0; c < Cv; c += V) {
    Vec s0(0.f), q0(0.f);
    const Vec scv = Vec::loadu(sc + c), shv = Vec::loadu(sh + c), mv = Vec::loadu(mean + c);
    for (int64_t r = r0; r < r1; ++r) {
      const Vec xv = Vec::loadu(x + r * C + c);
      const Vec y = at::vec::fmadd(xv, scv, shv);
      const Vec s = vsigmoid(y);
      const Vec g = Vec::loadu(ga.data + r * ga.stride + c) * s * at::vec::fmadd(y, one - s, one);
      g.store(gy + r * C + c);
      s0 = s0 + g;
      q0 = at::vec::fmadd(g, xv - mv, q0);
    }
    s0.store(s_out + c);
    q0.store(q_out + c);
  }
  for (int64_t c = Cv; c < C; ++c) {
    float s0 = 0.f, q0 = 0.f;
    for (int64_t r = r0; r < r1; ++r) {
      const float xv = x[r * C + c], y = xv * sc[c] + sh[c], s = ssigmoid(y);
      const float g = ga.data[r * ga.stride + c] * s * (1.f + y * (1.f - s));
      gy[r * C + c] = g;
      s0 += g;
      q0 += g * (xv - mean[c]);
    }
    s_out[c] = s0;
    q_out[c] = q0;
  }
}

// In place: g = g * k1 + x * k2 + k3 per channel, over rows [r0, r1).
void affine_block(const float* x, float* g, int64_t C, int64_t r0, int64_t r1, const float* k1, const float* k2,
                  const float* k3) {
  const int64_t V = Vec::size(), Cv = C - C % V;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* gr = g + r * C;
    for (int64_t c = 0; c < Cv; c += V) {
      const Vec t = at::vec::fmadd(Vec::loadu(xr + c), Vec::loadu(k2 + c), Vec::loadu(k3 + c));
      at::vec::fmadd(Vec::loadu(gr + c), Vec::loadu(k1 + c), t).store(gr + c);
    }
    for (int64_t c = Cv; c < C; ++c) gr[c] = gr[c] * k1[c] + xr[c] * k2[c] + k3[c];
  }
}

// Forward: returns a = silu(bn(x)) with the batch's mean and 1/sqrt(var + eps) for the backward pass, and updates
// the running statistics and num_batches_tracked in place.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_silu_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& running_mean,
    const at::Tensor& running_var, const at::Tensor& num_batches, double momentum, double eps) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "bn_silu_forward: x must be a channels_last float32 4-D tensor");
  TORCH_CHECK(x.numel() / x.size(1) > 1, "bn_silu_forward: more than one value per channel is needed");
  for (const at::Tensor* t : {&weight, &bias, &running_mean, &running_var}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == x.size(1),
                "bn_silu_forward: weight, bias and running statistics must be float32 vectors of the channel count");
  }
  TORCH_CHECK(num_batches.scalar_type() == at::kLong && num_batches.numel() == 1,
              "bn_silu_forward: num_batches_tracked must be one int64");
  const int64_t C = x.size(1), M = x.numel() / C;
  const float* px = x.data_ptr<float>();
  const Blocks bl = blocks_of(M, C);
  std::vector<float> bm(bl.count * C), b2(bl.count * C);
  for_rows(bl, [&](int64_t r0, int64_t r1) {
    const int64_t b = r0 / bl.block;
    moments_block(px, C, r0, r1, bm.data() + b * C, b2.data() + b * C);
  });
  std::vector<double> mu, var;
  merge_moments(bl, C, bm, b2, mu, var);
  auto mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options());
  float *pm = mean.data_ptr<float>(), *pi = invstd.data_ptr<float>();
  float *rm = running_mean.data_ptr<float>(), *rv = running_var.data_ptr<float>();
  const float *pw = weight.data_ptr<float>(), *pb = bias.data_ptr<float>();
  std::vector<float> sc(C), sh(C);
  for (int64_t c = 0; c < C; ++c) {
    pm[c] = float(mu[c]);
    pi[c] = float(1.0 / std::sqrt(var[c] + eps));
    sc[c] = pi[c] * pw[c];
    sh[c] = pb[c] - pm[c] * sc[c];
    rm[c] = float((1.0 - momentum) * rm[c] + momentum * mu[c]);
    rv[c] = float((1.0 - momentum) * rv[c] + momentum * var[c] * M / (M - 1));
  }
  num_batches.add_(1);
  auto a = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* pa = a.data_ptr<float>();
  for_rows(bl, [&](int64_t r0, int64_t r1) { silu_block(px, pa, C, r0, r1, sc.data(), sh.data()); });
  return {a, mean, invstd};
}

// Backward: (g_x, g_gamma, g_beta) from g_a and what the forward pass kept (x, gamma, beta, mean, invstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_silu_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& mean, const at::Tensor& invstd) {
  const Rows ga = rows_of(grad);
  const int64_t C = x.size(1), M = x.numel() / C;
  const float *px = x.data_ptr<float>(), *pw = weight.data_ptr<float>(), *pb = bias.data_ptr<float>();
  const float *pm = mean.data_ptr<float>(), *pi = invstd.data_ptr<float>();
  std::vector<float> sc(C), sh(C);
  for (int64_t c = 0; c < C; ++c) {
    sc[c] = pi[c] * pw[c];
    sh[c] = pb[c] - pm[c] * sc[c];
  }
  auto gx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* pg = gx.data_ptr<float>();
  const Blocks bl = blocks_of(M, C);
  std::vector<double> sum_gy, sum_gyx;
  column_sums(bl, C, sum_gy, sum_gyx, [&](int64_t r0, int64_t r1, float* s, float* q) {
    grad_y_block(px, ga, pg, C, r0, r1, sc.data(), sh.data(), pm, s, q);
  });
  auto gw = at::empty({C}, weight.options()), gb = at::empty({C}, bias.options());
  float *pgw = gw.data_ptr<float>(), *pgb = gb.data_ptr<float>();
  std::vector<float> k1(C), k2(C), k3(C);
  for (int64_t c = 0; c < C; ++c) {
    const double gxhat = sum_gyx[c] * pi[c];  // sum of g_y * xhat
    const double gi = double(pw[c]) * pi[c], kx = gi * pi[c] * gxhat / M;
    pgw[c] = float(gxhat);
    pgb[c] = float(sum_gy[c]);
    k1[c] = float(gi);
    k2[c] = float(-kx);
    k3[c] = float(kx * pm[c] - gi * sum_gy[c] / M);
  }
  for_rows(bl, [&](int64_t r0, int64_t r1) { affine_block(px, pg, C, r0, r1, k1.data(), k2.data(), k3.data()); });
  return {gx, gw, gb};
}

}  // namespace

// The two operators go into torch.ops.<extension name> (the autograd function that pairs them is in
// models/bn_silu.py). torch.ops calls run without the GIL, so --cpu-dp's part threads run them side by side.
#define YOLO_BN_SILU_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
YOLO_BN_SILU_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("bn_silu_forward(Tensor x, Tensor weight, Tensor bias, Tensor(a!) running_mean, Tensor(b!) running_var, "
        "Tensor(c!) num_batches, float momentum, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("bn_silu_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor invstd) "
        "-> (Tensor, Tensor, Tensor)");
  m.impl("bn_silu_forward", c10::DispatchKey::CPU, TORCH_FN(bn_silu_forward));
  m.impl("bn_silu_backward", c10::DispatchKey::CPU, TORCH_FN(bn_silu_backward));
}
