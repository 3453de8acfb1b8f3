// Fused batch-norm kernels for the CPU: one pass for the statistics, one for the output,
// two for the backward pass. Statistics accumulate in double. Layouts: contiguous NCHW-style
// (N, C, M) and channels-last (N, M, C) memory; float and double.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

// Per-channel sums over an (N, C, M) view: s1 = sum(a - shift), s2 = sum((a - shift) * b'),
// where b' = b - shift_b. Used for: statistics (a = b = x, shifted by a sample of each channel)
// and the backward sums (a = dy unshifted, b = x shifted by the mean).
template <typename T>
void channel_sums_nc(const T* a, const T* b, int64_t N, int64_t C, int64_t M, const double* shift_a,
                     const double* shift_b, double* s1, double* s2) {
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double t1 = 0.0, t2 = 0.0;
      const double sa = shift_a ? shift_a[c] : 0.0, sb = shift_b[c];
      for (int64_t n = 0; n < N; ++n) {
        const T* pa = a + (n * C + c) * M;
        const T* pb = b + (n * C + c) * M;
        double u1 = 0.0, u2 = 0.0;
#pragma omp simd reduction(+ : u1, u2)
        for (int64_t m = 0; m < M; ++m) {
          const double va = static_cast<double>(pa[m]) - sa;
          u1 += va;
          u2 += va * (static_cast<double>(pb[m]) - sb);
        }
        t1 += u1;
        t2 += u2;
      }
      s1[c] = t1;
      s2[c] = t2;
    }
  });
}

template <typename T>
void channel_sums_nlc(const T* a, const T* b, int64_t rows, int64_t C, const double* shift_a,
                      const double* shift_b, double* s1, double* s2) {
  const int nthreads = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nthreads) * 2 * C, 0.0);
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    double* p1 = part.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
    double* p2 = p1 + C;
    for (int64_t r = r0; r < r1; ++r) {
      const T* pa = a + r * C;
      const T* pb = b + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const double va = static_cast<double>(pa[c]) - (shift_a ? shift_a[c] : 0.0);
        p1[c] += va;
        p2[c] += va * (static_cast<double>(pb[c]) - shift_b[c]);
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t1 = 0.0, t2 = 0.0;
    for (int t = 0; t < nthreads; ++t) {
      t1 += part[static_cast<size_t>(t) * 2 * C + c];
      t2 += part[static_cast<size_t>(t) * 2 * C + C + c];
    }
    s1[c] = t1;
    s2[c] = t2;
  }
}

// out = (a - ca[c]) * alpha[c] + beta[c] + (b - cb[c]) * gam[c]   (b may be null)
struct Affine {
  const void* ca;
  const void* alpha;
  const void* beta;
  const void* cb;
  const void* gam;
};

template <typename T>
void affine_nc(const T* a, const T* b, T* out, int64_t N, int64_t C, int64_t M, const Affine& f) {
  const T *ca = static_cast<const T*>(f.ca), *al = static_cast<const T*>(f.alpha),
          *be = static_cast<const T*>(f.beta), *cb = static_cast<const T*>(f.cb),
          *ga = static_cast<const T*>(f.gam);
  at::parallel_for(0, N * C, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i % C;
      const T a0 = ca[c], a1 = al[c], b1 = be[c];
      const T* pa = a + i * M;
      T* po = out + i * M;
      if (b) {
        const T b0 = cb[c], g1 = ga[c];
        const T* pb = b + i * M;
#pragma omp simd
        for (int64_t m = 0; m < M; ++m) po[m] = (pa[m] - a0) * a1 + b1 + (pb[m] - b0) * g1;
      } else {
#pragma omp simd
        for (int64_t m = 0; m < M; ++m) po[m] = (pa[m] - a0) * a1 + b1;
      }
    }
  });
}

template <typename T>
void affine_nlc(const T* a, const T* b, T* out, int64_t rows, int64_t C, const Affine& f) {
  const T *ca = static_cast<const T*>(f.ca), *al = static_cast<const T*>(f.alpha),
          *be = static_cast<const T*>(f.beta), *cb = static_cast<const T*>(f.cb),
          *ga = static_cast<const T*>(f.gam);
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* pa = a + r * C;
      T* po = out + r * C;
      if (b) {
        const T* pb = b + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) po[c] = (pa[c] - ca[c]) * al[c] + be[c] + (pb[c] - cb[c]) * ga[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) po[c] = (pa[c] - ca[c]) * al[c] + be[c];
      }
    }
  });
}

struct View {
  int64_t N, C, M;
  bool channels_last;
};

View view_of(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "expected (N, C, *) input");
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t M = C ? x.numel() / (N * C ? N * C : 1) : 0;
  bool cl = false;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()) cl = true;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d) && !x.is_contiguous()) cl = true;
  TORCH_CHECK(cl || x.is_contiguous(), "expected a contiguous or channels-last input");
  return {N, C, M, cl};
}

template <typename T>
void sums(const View& v, const T* a, const T* b, const double* sa, const double* sb, double* s1, double* s2) {
  if (v.channels_last)
    channel_sums_nlc<T>(a, b, v.N * v.M, v.C, sa, sb, s1, s2);
  else
    channel_sums_nc<T>(a, b, v.N, v.C, v.M, sa, sb, s1, s2);
}

template <typename T>
void affine(const View& v, const T* a, const T* b, T* out, const Affine& f) {
  if (v.channels_last)
    affine_nlc<T>(a, b, out, v.N * v.M, v.C, f);
  else
    affine_nc<T>(a, b, out, v.N, v.C, v.M, f);
}

std::vector<double> as_double(const c10::optional<torch::Tensor>& t, int64_t C, double fill) {
  std::vector<double> out(C, fill);
  if (t) {
    auto d = t->detach().to(torch::kCPU, torch::kDouble).contiguous();
    std::copy(d.data_ptr<double>(), d.data_ptr<double>() + C, out.begin());
  }
  return out;
}

// Training forward: returns (y, mean, invstd), mean and invstd in double, shape (C,).
std::vector<torch::Tensor> forward_train(torch::Tensor x, c10::optional<torch::Tensor> weight,
                                         c10::optional<torch::Tensor> bias, double eps) {
  const View v = view_of(x);
  auto opts64 = x.options().dtype(torch::kDouble);
  auto mean = torch::empty({v.C}, opts64), invstd = torch::empty({v.C}, opts64);
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_forward_train", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const double m = static_cast<double>(v.N * v.M);
    // shift each channel by one of its own values: sums of (x - shift) stay accurate
    std::vector<double> shift(v.C, 0.0), s1(v.C), s2(v.C);
    if (v.N * v.M > 0)
      for (int64_t c = 0; c < v.C; ++c) shift[c] = static_cast<double>(v.channels_last ? px[c] : px[c * v.M]);
    sums<scalar_t>(v, px, px, shift.data(), shift.data(), s1.data(), s2.data());
    const std::vector<double> w = as_double(weight, v.C, 1.0), b = as_double(bias, v.C, 0.0);
    std::vector<scalar_t> center(v.C), alpha(v.C), beta(v.C);
    auto* pm = mean.data_ptr<double>();
    auto* pi = invstd.data_ptr<double>();
    for (int64_t c = 0; c < v.C; ++c) {
      const double d = m > 0 ? s1[c] / m : 0.0;
      const double var = m > 0 ? std::max(s2[c] / m - d * d, 0.0) : 0.0;
      pm[c] = shift[c] + d;
      pi[c] = 1.0 / std::sqrt(var + eps);
      center[c] = static_cast<scalar_t>(pm[c]);
      alpha[c] = static_cast<scalar_t>(pi[c] * w[c]);
      beta[c] = static_cast<scalar_t>(b[c]);
    }
    affine<scalar_t>(v, px, nullptr, y.data_ptr<scalar_t>(),
                     Affine{center.data(), alpha.data(), beta.data(), nullptr, nullptr});
  });
  return {y, mean, invstd};
}

// Training backward: (dx, dweight_sum, dbias_sum), the sums in double.
std::vector<torch::Tensor> backward_train(torch::Tensor dy, torch::Tensor x, c10::optional<torch::Tensor> weight,
                                          torch::Tensor mean, torch::Tensor invstd, bool batch_stats) {
  const View v = view_of(x);
  TORCH_CHECK(view_of(dy).channels_last == v.channels_last, "dy and x must share a memory layout");
  auto opts64 = x.options().dtype(torch::kDouble);
  auto sum_dy = torch::empty({v.C}, opts64), sum_dy_xhat = torch::empty({v.C}, opts64);
  auto dx = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_backward_train", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg = dy.data_ptr<scalar_t>();
    const double* pm = mean.data_ptr<double>();
    const double* pi = invstd.data_ptr<double>();
    std::vector<double> s1(v.C), s2(v.C);
    sums<scalar_t>(v, pg, px, nullptr, pm, s1.data(), s2.data());  // sum(dy), sum(dy * (x - mean))
    const double m = static_cast<double>(v.N * v.M);
    const std::vector<double> w = as_double(weight, v.C, 1.0);
    std::vector<scalar_t> zero(v.C, scalar_t(0)), center(v.C), alpha(v.C), beta(v.C), gam(v.C);
    auto* psd = sum_dy.data_ptr<double>();
    auto* psx = sum_dy_xhat.data_ptr<double>();
    for (int64_t c = 0; c < v.C; ++c) {
      const double k = pi[c] * w[c];
      psd[c] = s1[c];
      psx[c] = s2[c] * pi[c];
      center[c] = static_cast<scalar_t>(pm[c]);
      alpha[c] = static_cast<scalar_t>(k);
      // dx = k * (dy - sum_dy / m - (x - mean) * invstd^2 * sum(dy (x - mean)) / m)
      const bool through_stats = batch_stats && m > 0;
      beta[c] = static_cast<scalar_t>(through_stats ? -k * s1[c] / m : 0.0);
      gam[c] = static_cast<scalar_t>(through_stats ? -k * pi[c] * pi[c] * s2[c] / m : 0.0);
    }
    affine<scalar_t>(v, pg, batch_stats ? px : nullptr, dx.data_ptr<scalar_t>(),
                     Affine{zero.data(), alpha.data(), beta.data(), center.data(), gam.data()});
  });
  return {dx, sum_dy_xhat, sum_dy};
}

// Eval forward: y = (x - center) * alpha + beta with per-channel center, alpha, beta.
torch::Tensor forward_affine(torch::Tensor x, torch::Tensor center, torch::Tensor alpha, torch::Tensor beta) {
  const View v = view_of(x);
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_forward_affine", [&] {
    auto c0 = center.to(x.scalar_type()).contiguous(), a = alpha.to(x.scalar_type()).contiguous(),
         b = beta.to(x.scalar_type()).contiguous();
    affine<scalar_t>(v, x.data_ptr<scalar_t>(), nullptr, y.data_ptr<scalar_t>(),
                     Affine{c0.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), nullptr, nullptr});
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_train", &forward_train, "batch norm forward with batch statistics");
  m.def("backward_train", &backward_train, "batch norm backward");
  m.def("forward_affine", &forward_affine, "per-channel affine map (eval mode)");
}
