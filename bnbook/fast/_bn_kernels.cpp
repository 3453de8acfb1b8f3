// Fused batch-norm kernels for the CPU: one pass for the statistics, one for the output,
// two for the backward pass; eval mode is a single pass. Per-channel sums end in double (the
// statistics of float32 input are summed in float within short blocks; see Acc below).
//
// Two memory orders are handled:
//   planes: contiguous (N, C, M) memory, M > 1 (NCHW, NCDHW, BatchNorm1d's (N, C, L)): each
//           (n, c) plane of M values is contiguous;
//   rows:   (R, C) memory with C contiguous (channels-last, NDHWC, and BatchNorm1d's (N, C)).
// The loops are compiled twice, for plain x86-64 and for AVX2 with FMA, and the second is used
// where the CPU has it (the file includes itself once per instruction set; see the end of the file).
#ifndef BNBOOK_KERNEL_BODY
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/variable.h>

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <type_traits>
#include <vector>

namespace {

struct View {
  int64_t N, C, M;  // planes: (N, C, M); rows: R = N * M rows of C
  bool rows;
};

// y = (a - ca[c]) * al[c] + be[c] + (b - cb[c]) * ga[c]; b (and cb, ga) may be null.
template <typename T>
struct Affine {
  const T* ca;
  const T* al;
  const T* be;
  const T* cb;
  const T* ga;
};

// Work per task: small inputs run on one thread (waking a second costs more than it saves).
constexpr int64_t kGrain = 1 << 15;

}  // namespace

#define BNBOOK_KERNEL_BODY
namespace bnbook_base {
#include __FILE__
}
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace bnbook_avx2 {
#include __FILE__
}
#pragma GCC pop_options
#define BNBOOK_HAVE_AVX2 1
#endif
#undef BNBOOK_KERNEL_BODY

namespace {

bool use_avx2() {
#ifdef BNBOOK_HAVE_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

View view_of(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "expected (N, C, *) input");
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t M = N * C ? x.numel() / (N * C) : 0;
  bool cl = false;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()) cl = true;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d) && !x.is_contiguous()) cl = true;
  TORCH_CHECK(cl || x.is_contiguous(), "expected a contiguous or channels-last input");
  return {N, C, M, cl || M == 1};
}

template <typename T>
void sums(const View& v, bool stats, const T* a, const T* b, const double* k, double* s1, double* s2,
          const double* ka = nullptr, double* s3 = nullptr, double eps = 0.0) {
#ifdef BNBOOK_HAVE_AVX2
  if (use_avx2()) return bnbook_avx2::sums<T>(v, stats, a, b, k, s1, s2, ka, s3, eps);
#endif
  bnbook_base::sums<T>(v, stats, a, b, k, s1, s2, ka, s3, eps);
}

template <typename T>
void affine(const View& v, const T* a, const T* b, T* out, const Affine<T>& f) {
#ifdef BNBOOK_HAVE_AVX2
  if (use_avx2()) return bnbook_avx2::affine<T>(v, a, b, out, f);
#endif
  bnbook_base::affine<T>(v, a, b, out, f);
}

// A per-channel operand as C doubles (fill where absent), without allocating a tensor.
void as_double(const c10::optional<torch::Tensor>& t, int64_t C, double fill, double* out) {
  if (!t || !t->defined()) {
    std::fill(out, out + C, fill);
    return;
  }
  TORCH_CHECK(t->numel() == C, "expected ", C, " per-channel values, got ", t->numel());
  torch::Tensor d = t->is_contiguous() ? *t : t->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "bnbook_as_double", [&] {
    const scalar_t* p = d.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) out[c] = static_cast<double>(p[c]);
  });
}

// Large outputs come from a small cache of freed blocks. The C library maps a block of 32 MiB or
// more fresh from the system on every allocation, and gives smaller ones back to it whenever the
// free space at the top of its heap grows past a threshold, as it does between training steps;
// a fresh block's first touch faults once per 4 KiB page, and at 64 MiB that costs several times
// the kernel itself. Here such a block is aligned to 2 MiB and marked for huge pages, and when its
// tensor dies it waits, up to a limit, for the next output of the same rounded size; the most
// recently freed block goes first, as it is the likeliest still in the CPU's caches. Training
// outputs (y and dx) use the cache from kTrainMin bytes, where the library's trimming was measured
// to fault at every step. An eval output uses it from kEvalMin only, where the library maps every
// block anew; below that, in one comparison at 16 MiB, eval ran slower with a block kept apart
// than with the block the library had just freed. A freed block that does not fit under the limit
// frees blocks of other sizes; when the sizes in use need more than the limit, they evict each
// other and the cache stops hitting (raise the limit). The cache keeps memory the process no
// longer uses (cache_info, empty_cache and set_cache_limit in Python show and bound it).
constexpr size_t kTrainMin = size_t{1} << 22;  // 4 MiB
constexpr size_t kEvalMin = size_t{1} << 25;   // 32 MiB, the C library's largest mmap threshold
constexpr size_t kHuge = size_t{1} << 21;      // 2 MiB, the huge-page size on x86-64

class OutputCache final : public c10::Allocator {
 public:
  struct Block {
    void* ptr;
    size_t bytes;
  };

  c10::DataPtr allocate(size_t n) override {
    if (off()) return c10::GetCPUAllocator()->allocate(n);  // turned off, or bypassed for now
    const size_t bytes = (n + kHuge - 1) / kHuge * kHuge;
    void* ptr = take(bytes);
    if (ptr == nullptr) {
      ptr = std::aligned_alloc(kHuge, bytes);
      if (ptr == nullptr) {  // give the cached blocks back and try once more
        empty();
        ptr = std::aligned_alloc(kHuge, bytes);
      }
      TORCH_CHECK(ptr != nullptr, "bnbook.fast: out of memory allocating ", bytes, " bytes");
#ifdef MADV_HUGEPAGE
      madvise(ptr, bytes, MADV_HUGEPAGE);  // advice only: without huge pages nothing changes
#endif
    }
    return {ptr, new Block{ptr, bytes}, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  static OutputCache& get() {
    static auto* cache = make();  // never destroyed: a tensor may outlive static teardown
    return *cache;
  }

  void empty() {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& kv : free_) drop.insert(drop.end(), kv.second.begin(), kv.second.end());
      free_.clear();
      cached_ = 0;
    }
    for (void* p : drop) std::free(p);
  }

  // While bypassed, new outputs come from torch's allocator; the blocks held stay (a control for timing).
  void set_bypass(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    bypass_ = on;
  }

  void set_limit(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
    }
    trim();
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    size_t blocks = 0;
    for (auto& kv : free_) blocks += kv.second.size();
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(blocks), static_cast<int64_t>(limit_),
            static_cast<int64_t>(hits_), static_cast<int64_t>(misses_)};
  }

 private:
  static OutputCache* make() {
    auto* cache = new OutputCache();
    // A child forked while another thread held the lock would wait for it forever: give it a new one.
    pthread_atfork(nullptr, nullptr, [] { new (&get().mu_) std::mutex(); });
    return cache;
  }

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    get().put(block->ptr, block->bytes);
    delete block;
  }

  bool off() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_ == 0 || bypass_;
  }

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it == free_.end()) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    void* ptr = it->second.back();  // last in, first out
    it->second.pop_back();
    if (it->second.empty()) free_.erase(it);
    cached_ -= bytes;
    return ptr;
  }

  void put(void* ptr, size_t bytes) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // no room: free blocks of other sizes, the largest first, so that sizes no longer used
      // cannot hold the limit for good
      while (cached_ + bytes > limit_ && bytes <= limit_) {
        auto victim = free_.end();
        for (auto it = free_.begin(); it != free_.end(); ++it)
          if (it->first != bytes) victim = it;
        if (victim == free_.end()) break;
        drop.push_back(victim->second.front());  // the oldest of that size
        victim->second.erase(victim->second.begin());
        cached_ -= victim->first;
        if (victim->second.empty()) free_.erase(victim);
      }
      if (cached_ + bytes <= limit_) {
        free_[bytes].push_back(ptr);
        cached_ += bytes;
        ptr = nullptr;
      }
    }
    for (void* p : drop) std::free(p);
    if (ptr != nullptr) std::free(ptr);
  }

  void trim() {  // free the largest blocks until the cache fits its limit
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (cached_ > limit_ && !free_.empty()) {
        auto last = std::prev(free_.end());
        cached_ -= last->first;
        drop.push_back(last->second.back());
        last->second.pop_back();
        if (last->second.empty()) free_.erase(last);
      }
    }
    for (void* p : drop) std::free(p);
  }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;  // rounded size -> blocks, the newest last
  size_t cached_ = 0, limit_ = size_t{1} << 29, hits_ = 0, misses_ = 0;  // limit: 512 MiB
  bool bypass_ = false;
};

// An uninitialised output with x's sizes, strides (x is contiguous or channels-last) and dtype;
// from the cache (in resizable storage) when it has at least min_bytes, else from torch's allocator.
torch::Tensor output_like(const torch::Tensor& x, size_t min_bytes) {
  const size_t nbytes = at::detail::computeStorageNbytes(x.sizes(), x.strides(), x.element_size());
  if (nbytes < min_bytes) return torch::empty_like(x);
  c10::Allocator* cache = &OutputCache::get();
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, cache->allocate(nbytes), cache, true);
  return torch::empty({0}, x.options()).set_(std::move(storage), 0, x.sizes(), x.strides());
}

// Training forward: returns (y, mean, invstd), mean and invstd in double, shape (C,).
// With running buffers given (and more than one value per channel), also updates them in place:
// running = (1 - momentum) * running + momentum * batch statistic, with the unbiased variance.
std::vector<torch::Tensor> forward_train_impl(const torch::Tensor& x, const c10::optional<torch::Tensor>& weight,
                                              const c10::optional<torch::Tensor>& bias, double eps,
                                              const c10::optional<torch::Tensor>& running_mean,
                                              const c10::optional<torch::Tensor>& running_var, double momentum) {
  const View v = view_of(x);
  const int64_t C = v.C, count = v.N * v.M;
  auto opts64 = x.options().dtype(torch::kDouble);
  auto mean = torch::empty({C}, opts64), invstd = torch::empty({C}, opts64);
  auto y = output_like(x, kTrainMin);
  std::vector<double> buf(6 * static_cast<size_t>(C));
  double *shift = buf.data(), *s1 = shift + C, *s2 = s1 + C, *w = s2 + C, *b = w + C, *tmp = b + C;
  as_double(weight, C, 1.0, w);
  as_double(bias, C, 0.0, b);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_forward_train", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const double m = static_cast<double>(count);
    // shift each channel by one of its own values: sums of (x - shift) stay accurate
    for (int64_t c = 0; c < C; ++c)
      shift[c] = count > 0 ? static_cast<double>(v.rows ? px[c] : px[c * v.M]) : 0.0;
    sums<scalar_t>(v, true, px, px, shift, s1, s2, nullptr, nullptr, eps);
    std::vector<scalar_t> coef(3 * static_cast<size_t>(C));
    scalar_t *center = coef.data(), *alpha = center + C, *beta = alpha + C;
    auto* pm = mean.data_ptr<double>();
    auto* pi = invstd.data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) {
      const double d = m > 0 ? s1[c] / m : 0.0;
      const double var = m > 0 ? std::max(s2[c] / m - d * d, 0.0) : 0.0;
      pm[c] = shift[c] + d;
      pi[c] = 1.0 / std::sqrt(var + eps);
      tmp[c] = var;
      center[c] = static_cast<scalar_t>(pm[c]);
      alpha[c] = static_cast<scalar_t>(pi[c] * w[c]);
      beta[c] = static_cast<scalar_t>(b[c]);
    }
    affine<scalar_t>(v, px, nullptr, y.data_ptr<scalar_t>(), Affine<scalar_t>{center, alpha, beta, nullptr, nullptr});
  });
  if (count > 1) {
    const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
    const double* pm = mean.data_ptr<double>();
    for (int which = 0; which < 2; ++which) {
      const auto& rt = which == 0 ? running_mean : running_var;
      if (!rt || !rt->defined()) continue;
      TORCH_CHECK(rt->numel() == C && rt->device().is_cpu(), "running statistics must be CPU tensors of C values");
      torch::Tensor target = rt->is_contiguous() ? *rt : rt->contiguous();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "bnbook_running", [&] {
        scalar_t* p = target.data_ptr<scalar_t>();
        for (int64_t c = 0; c < C; ++c) {
          const double stat = which == 0 ? pm[c] : tmp[c] * unbias;
          const double old = static_cast<double>(p[c]);
          p[c] = static_cast<scalar_t>(old + momentum * (stat - old));
        }
      });
      if (target.data_ptr() != rt->data_ptr()) {
        torch::Tensor dst = *rt;
        dst.copy_(target);
      } else if (!rt->is_inference()) {
        torch::autograd::impl::bump_version(*rt);  // as an in-place op would
      }
    }
  }
  return {y, mean, invstd};
}

std::vector<torch::Tensor> forward_train(torch::Tensor x, c10::optional<torch::Tensor> weight,
                                         c10::optional<torch::Tensor> bias, double eps) {
  return forward_train_impl(x, weight, bias, eps, c10::nullopt, c10::nullopt, 0.0);
}

std::vector<torch::Tensor> forward_train_update(torch::Tensor x, c10::optional<torch::Tensor> weight,
                                                c10::optional<torch::Tensor> bias, double eps,
                                                c10::optional<torch::Tensor> running_mean,
                                                c10::optional<torch::Tensor> running_var, double momentum) {
  return forward_train_impl(x, weight, bias, eps, running_mean, running_var, momentum);
}

// The backward pass written as bnbook.nn's eager one, in tensor operations: for dy holding inf or NaN,
// whose sums are not finite, so that dx, dweight and dbias carry inf and NaN where torch's do.
std::vector<torch::Tensor> backward_eager(const torch::Tensor& dy, const torch::Tensor& x,
                                          const c10::optional<torch::Tensor>& weight, const torch::Tensor& mean,
                                          const torch::Tensor& invstd, bool batch_stats) {
  const int64_t nd = x.dim(), C = x.size(1);
  std::vector<int64_t> shape(nd, 1), dims{0};
  shape[1] = C;
  for (int64_t d = 2; d < nd; ++d) dims.push_back(d);
  const auto dt = x.scalar_type();
  auto inv = invstd.to(dt), k = weight && weight->defined() ? inv * weight->to(dt) : inv;
  auto xc = x - mean.to(dt).view(shape);
  auto dbeta = dy.sum(dims);
  auto dgamma = (dy * xc).sum(dims) * inv;
  torch::Tensor dx;
  if (!batch_stats) {
    dx = dy * k.view(shape);
  } else {
    const int64_t m = std::max<int64_t>(x.numel() / std::max<int64_t>(C, 1), 1);
    auto a = k * (-1.0 / static_cast<double>(m));
    auto c0 = a * dbeta, c1 = (a * inv) * dgamma;
    dx = (dy * k.view(shape) + c0.view(shape)).addcmul_(xc, c1.view(shape));
  }
  return {dx, dgamma.to(torch::kDouble), dbeta.to(torch::kDouble)};
}

// Training backward: (dx, dweight_sum, dbias_sum), the sums in double.
std::vector<torch::Tensor> backward_train(torch::Tensor dy, torch::Tensor x, c10::optional<torch::Tensor> weight,
                                          torch::Tensor mean, torch::Tensor invstd, bool batch_stats) {
  const View v = view_of(x);
  TORCH_CHECK(view_of(dy).rows == v.rows, "dy and x must share a memory layout");
  const int64_t C = v.C;
  auto opts64 = x.options().dtype(torch::kDouble);
  auto sum_dy = torch::empty({C}, opts64), sum_dy_xhat = torch::empty({C}, opts64);
  auto dx = output_like(x, kTrainMin);
  std::vector<double> buf(5 * static_cast<size_t>(C));
  double *s1 = buf.data(), *s2 = s1 + C, *s3 = s2 + C, *d0 = s3 + C, *w = d0 + C;
  as_double(weight, C, 1.0, w);
  auto mean64 = mean.to(torch::kDouble).contiguous(), invstd64 = invstd.to(torch::kDouble).contiguous();
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_backward_train", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg = dy.data_ptr<scalar_t>();
    const double* pm = mean64.data_ptr<double>();
    const double* pi = invstd64.data_ptr<double>();
    const double m = static_cast<double>(v.N * v.M);
    const bool through_stats = batch_stats && m > 0;
    // With batch statistics dy is shifted by one of each channel's own values, as the statistics
    // shift x, so that a large mean of dy cancels in double before anything is rounded to float;
    // and sum(x - mean) measures what the float32 statistics' mean missed, to be removed below.
    for (int64_t c = 0; c < C; ++c) {
      d0[c] = through_stats ? static_cast<double>(v.rows ? pg[c] : pg[c * v.M]) : 0.0;
      if (!std::isfinite(d0[c])) d0[c] = 0.0;  // an infinite first value: sums as without the shift
    }
    sums<scalar_t>(v, false, pg, px, pm, s1, s2, d0, s3);  // sum(dy - d0), sum((dy - d0)(x - mean)), sum(x - mean)
    std::vector<scalar_t> coef(5 * static_cast<size_t>(C));
    scalar_t *dyc = coef.data(), *center = dyc + C, *alpha = center + C, *beta = alpha + C, *gam = beta + C;
    auto* psd = sum_dy.data_ptr<double>();
    auto* psx = sum_dy_xhat.data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) {
      const double k = pi[c] * w[c];
      // with batch statistics: the exact batch mean is mean + miss, and sum(d0 * (x - mean - miss)) = 0
      const double miss = through_stats ? s3[c] / m : 0.0;
      s2[c] -= miss * s1[c];
      psd[c] = s1[c] + m * d0[c];  // sum(dy)
      psx[c] = s2[c] * pi[c];      // sum(dy * x_hat)
      finite = finite && std::isfinite(psd[c]) && std::isfinite(psx[c]);
      // dx = k * (dy - mean(dy)) + g * (x - mean), g = -k * invstd^2 * sum(dy (x - mean)) / m. Each
      // centre is rounded to the input's type, and the rounding is put back in beta, in double: so
      // dy - centre and x - centre cancel exactly where they are large, and nothing is lost.
      const double g = through_stats ? -k * pi[c] * pi[c] * s2[c] / m : 0.0;
      const double mu_dy = through_stats ? d0[c] + s1[c] / m : 0.0;
      const double mu_x = pm[c] + miss;
      dyc[c] = static_cast<scalar_t>(mu_dy);
      center[c] = static_cast<scalar_t>(mu_x);
      alpha[c] = static_cast<scalar_t>(k);
      gam[c] = static_cast<scalar_t>(g);
      beta[c] = static_cast<scalar_t>(
          through_stats ? -k * (mu_dy - static_cast<double>(dyc[c])) - g * (mu_x - static_cast<double>(center[c]))
                        : 0.0);
    }
    if (finite)
      affine<scalar_t>(v, pg, through_stats ? px : nullptr, dx.data_ptr<scalar_t>(),
                       Affine<scalar_t>{dyc, alpha, beta, center, gam});
  });
  if (!finite) return backward_eager(dy, x, weight, mean64, invstd64, batch_stats);
  return {dx, sum_dy_xhat, sum_dy};
}

// Eval forward: y = (x - center) * alpha + beta with per-channel center, alpha, beta.
torch::Tensor forward_affine(torch::Tensor x, torch::Tensor center, torch::Tensor alpha, torch::Tensor beta) {
  const View v = view_of(x);
  auto y = output_like(x, kEvalMin);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_forward_affine", [&] {
    auto c0 = center.to(x.scalar_type()).contiguous(), a = alpha.to(x.scalar_type()).contiguous(),
         b = beta.to(x.scalar_type()).contiguous();
    affine<scalar_t>(v, x.data_ptr<scalar_t>(), nullptr, y.data_ptr<scalar_t>(),
                     Affine<scalar_t>{c0.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                      nullptr, nullptr});
  });
  return y;
}

// Eval forward from the running statistics in one call: returns (y, mean, invstd), the last two
// in double (what the backward pass needs). y = (x - mean) * invstd * weight + bias: one pass.
std::vector<torch::Tensor> forward_eval(torch::Tensor x, torch::Tensor running_mean, torch::Tensor running_var,
                                        c10::optional<torch::Tensor> weight, c10::optional<torch::Tensor> bias,
                                        double eps) {
  const View v = view_of(x);
  const int64_t C = v.C;
  auto opts64 = x.options().dtype(torch::kDouble);
  auto mean = torch::empty({C}, opts64), invstd = torch::empty({C}, opts64);
  auto y = output_like(x, kEvalMin);
  std::vector<double> buf(3 * static_cast<size_t>(C));
  double *w = buf.data(), *b = w + C, *var = b + C;
  auto* pm = mean.data_ptr<double>();
  auto* pi = invstd.data_ptr<double>();
  as_double(running_mean, C, 0.0, pm);
  as_double(running_var, C, 1.0, var);
  as_double(weight, C, 1.0, w);
  as_double(bias, C, 0.0, b);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnbook_forward_eval", [&] {
    // y = (x - mean) * alpha + bias with alpha = weight * invstd: the subtraction first, so that an
    // input far from zero keeps its precision (x * alpha + (bias - mean * alpha) would lose it)
    std::vector<scalar_t> coef(3 * static_cast<size_t>(C));
    scalar_t *center = coef.data(), *alpha = center + C, *beta = alpha + C;
    for (int64_t c = 0; c < C; ++c) {
      pi[c] = 1.0 / std::sqrt(var[c] + eps);
      center[c] = static_cast<scalar_t>(pm[c]);
      alpha[c] = static_cast<scalar_t>(pi[c] * w[c]);
      beta[c] = static_cast<scalar_t>(b[c]);
    }
    affine<scalar_t>(v, x.data_ptr<scalar_t>(), nullptr, y.data_ptr<scalar_t>(),
                     Affine<scalar_t>{center, alpha, beta, nullptr, nullptr});
  });
  return {y, mean, invstd};
}

}  // namespace

namespace bnbook_fast {

// Under create_graph=True both nodes below run bnbook.nn's _backward_differentiable for (N, C) input
// with batch statistics: the closed form written with differentiable operations, the mean and variance
// recomputed from x so that their dependence on x is part of the graph (second derivatives are exact).
static void differentiable_rows_backward(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& dy,
                                         double eps, torch::Tensor& dx, torch::Tensor& dw, torch::Tensor& db) {
  const double m = static_cast<double>(std::max<int64_t>(x.size(0), 1));
  auto xc = x - x.mean({0}, true);
  auto invstd = torch::rsqrt((xc * xc).mean({0}, true) + eps);
  auto x_hat = xc * invstd;
  db = dy.sum({0});
  dw = (dy * x_hat).sum({0});
  auto k = invstd * weight.view({1, -1});
  dx = k * (dy - db.view({1, -1}) / m - x_hat * dw.view({1, -1}) / m);
}

// The plain training call on (N, C) input as one autograd node written in C++: the same kernel calls
// as bnbook.fast's Python Function, without the Python around them (on a small batch that costs
// more than the kernels). Arguments: x (N, C), weight, bias, running_mean, running_var (C,), all
// of x's dtype; eps; momentum. Under create_graph=True the backward pass is the closed form written
// with differentiable tensor operations (as bnbook.nn's), so second derivatives are exact.
struct TrainRows : public torch::autograd::Function<TrainRows> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& running_mean, const torch::Tensor& running_var, double eps,
                               double momentum) {
    auto out = forward_train_impl(x, weight, bias, eps, running_mean, running_var, momentum);
    ctx->save_for_backward({x, weight, out[1], out[2]});
    ctx->saved_data["eps"] = eps;
    return out[0];
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1];
    const torch::Tensor& dy = grads[0];
    torch::Tensor dx, dw, db;
    if (torch::GradMode::is_enabled()) {  // create_graph=True: a backward pass that can be differentiated
      differentiable_rows_backward(x, weight, dy, ctx->saved_data["eps"].toDouble(), dx, dw, db);
    } else {
      auto r = backward_train(dy.contiguous(), x, weight, saved[2], saved[3], true);
      dx = r[0];
      dw = r[1].to(weight.scalar_type());
      db = r[2].to(weight.scalar_type());
    }
    const torch::Tensor none;
    return {ctx->needs_input_grad(0) ? dx : none, ctx->needs_input_grad(1) ? dw : none,
            ctx->needs_input_grad(2) ? db : none, none, none, none, none};
  }
};

// bnbook.nn's short path for the plain training call on (N, C) input (_TrainRowsFunction in
// bnbook/nn/_batchnorm.py), operation for operation and in the same order, so the same numbers bit for
// bit: ATen's own operations, not the fused kernels, called from C++ so that the Python around them
// (about a microsecond or more per operation, and the Python autograd Function) is not paid per call.
// tests/test_nn_compiled.py compares the two with torch.equal.
struct EagerRows : public torch::autograd::Function<EagerRows> {
  // A 0-dim tensor of like's dtype holding value, as bnbook.nn's _const; kept, since making one
  // costs about as much as the arithmetic on a small layer's per-channel vectors.
  static torch::Tensor constant(double value, const torch::Tensor& like) {
    struct Kept {
      double value;
      c10::ScalarType dtype;
      torch::Tensor tensor;
    };
    thread_local std::vector<Kept> kept;
    const auto dtype = like.scalar_type();
    for (const auto& k : kept) {
      if (k.value == value && k.dtype == dtype) return k.tensor;
    }
    if (kept.size() >= 64) kept.clear();
    kept.push_back({value, dtype, torch::scalar_tensor(value, like.options().device(torch::kCPU))});
    return kept.back().tensor;
  }

  // torch.linalg.vecdot(a, b, dim=0) for real a and b: the same product and sum, without its checks.
  static torch::Tensor vecdot0(const torch::Tensor& a, const torch::Tensor& b) { return (a * b).sum(0); }

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& running_mean, const torch::Tensor& running_var, double eps,
                               double momentum) {
    const int64_t n = x.size(0);
    torch::Tensor mean, xc, sumsq, invstd, k, y;
    {
      // Below autograd and the version counters: these operations make fresh tensors of their own.
      at::AutoDispatchBelowADInplaceOrView below;
      mean = x.sum(0).mul_(constant(1.0 / static_cast<double>(n), x));
      xc = x - mean;
      sumsq = vecdot0(xc, xc);
      invstd = at::add(constant(eps, x), sumsq, 1.0 / static_cast<double>(n)).rsqrt_();
      k = invstd * weight;
    }
    {
      // The running buffers: below autograd (they take no gradient) but not below the version
      // counters, which in-place updates bump as usual.
      at::AutoDispatchBelowAutograd below;
      at::_foreach_lerp_({running_mean, running_var},
                         {mean, sumsq * constant(1.0 / static_cast<double>(n - 1), x)}, momentum);
    }
    y = at::addcmul_out(xc, bias, xc, k);  // in place on xc, versioned as in Python
    ctx->save_for_backward({x, weight, mean, invstd, k});
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3], &k = saved[4];
    const torch::Tensor& dy = grads[0];
    const bool need_x = ctx->needs_input_grad(0);
    torch::Tensor dx, dw, db;
    if (torch::GradMode::is_enabled()) {  // create_graph=True: bnbook.nn's _backward_differentiable
      differentiable_rows_backward(x, weight, dy, ctx->saved_data["eps"].toDouble(), dx, dw, db);
    } else {
      at::AutoDispatchBelowADInplaceOrView below;  // grad mode is off: nothing here is recorded
      auto xc = x - mean;
      db = dy.sum(0);
      auto dot = vecdot0(dy, xc);
      if (need_x) {
        auto k_n = k * constant(-1.0 / static_cast<double>(x.size(0)), k);
        auto c1 = (k_n * invstd).mul_(invstd);  // torch._foreach_mul's products, one at a time
        dw = dot * invstd;
        auto c0 = db * k_n;
        dx = at::addcmul(c0, dy, k).addcmul_(xc, dot * c1);
      } else {
        dw = dot.mul_(invstd);
      }
    }
    const torch::Tensor none;
    return {need_x ? dx : none, ctx->needs_input_grad(1) ? dw : none, ctx->needs_input_grad(2) ? db : none,
            none, none, none, none};
  }
};

}  // namespace bnbook_fast

namespace {

torch::Tensor train_rows(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                         const torch::Tensor& running_mean, const torch::Tensor& running_var, double eps,
                         double momentum) {
  return bnbook_fast::TrainRows::apply(x, weight, bias, running_mean, running_var, eps, momentum);
}

torch::Tensor eager_rows(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                         const torch::Tensor& running_mean, const torch::Tensor& running_var, double eps,
                         double momentum) {
  return bnbook_fast::EagerRows::apply(x, weight, bias, running_mean, running_var, eps, momentum);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_train", &forward_train, "batch norm forward with batch statistics");
  m.def("forward_train_update", &forward_train_update,
        "batch norm forward with batch statistics, updating the running buffers in place");
  m.def("backward_train", &backward_train, "batch norm backward");
  m.def("train_rows", &train_rows, "the plain (N, C) training call, as one C++ autograd node");
  m.def("eager_rows", &eager_rows,
        "bnbook.nn's short path for the plain (N, C) training call, its operations called from C++");
  m.def("forward_affine", &forward_affine, "per-channel affine map (eval mode)");
  m.def("forward_eval", &forward_eval, "batch norm forward with the running statistics, in one pass");
  m.def("cache_info", []() { return OutputCache::get().info(); },
        "the output cache: bytes held, blocks held, limit in bytes, hits, misses");
  m.def("empty_cache", []() { OutputCache::get().empty(); }, "free every block the output cache holds");
  m.def("set_cache_limit", [](int64_t bytes) {
          TORCH_CHECK(bytes >= 0, "the cache limit must be >= 0 bytes, got ", bytes);
          OutputCache::get().set_limit(static_cast<size_t>(bytes));
        }, "bound the bytes the output cache may hold (0 turns it off), freeing blocks above it");
  m.def("set_cache_bypass", [](bool on) { OutputCache::get().set_bypass(on); },
        "while on, new outputs come from torch's allocator and the cached blocks stay");
  m.def("isa", []() {
          return std::string(use_avx2() ? "avx2+fma" : "x86-64");
        },
        "the instruction set the loops run with");
}

#else  // BNBOOK_KERNEL_BODY: the loops, compiled once per instruction set

// How the sums accumulate. The statistics of a float32 input are summed in float, 8 lanes to a
// vector instead of 4 doubles, over short blocks (kBlock steps); each block's sums are then added in
// double, so a rounding error can grow only within a block. The values are first shifted by one
// of the channel's own values (exact in float), so that the block sums stay small. The backward
// sums, whose terms can cancel (dy with a large mean), accumulate in double, as does a double input.
template <typename T, bool SAME>
using Acc = std::conditional_t<SAME && std::is_same_v<T, float>, float, double>;
constexpr int64_t kBlock = 16;

// Sums over planes: per plane i (channel c = i % C) of M contiguous values,
//   SAME (b is a):  p1 = sum(a - k[c]),  p2 = sum((a - k[c])^2);
//   otherwise:      p1 = sum(a - ka[c]), p2 = sum((a - ka[c]) * (b - k[c])), p3 = sum(b - k[c]) (in double);
// with k in the accumulator's type. Parallel over the N * C planes (any C keeps both threads busy); each
// plane's sums are then added per channel. Independent accumulators (kLanes per sum) let the adds overlap.
template <typename T, bool SAME>
void sums_planes(const T* a, const T* b, int64_t N, int64_t C, int64_t M, const double* k, const double* ka,
                 double* s1, double* s2, double* s3) {
  using A = Acc<T, SAME>;
  constexpr int kLanes = SAME ? 16 : 8;  // per sum: two vectors of floats, or of doubles (more would spill)
  std::vector<double> part(3 * static_cast<size_t>(N * C));
  double* p1 = part.data();
  double* p2 = p1 + N * C;
  double* p3 = p2 + N * C;
  at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / std::max<int64_t>(M, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const A kc = static_cast<A>(k[i % C]);
      const A kac = SAME ? A(0) : static_cast<A>(ka[i % C]);
      const T* pa = a + i * M;
      const T* pb = b + i * M;
      double u1[kLanes] = {0}, u2[kLanes] = {0}, u3[kLanes] = {0};
      int64_t m = 0;
      while (m + kLanes <= M) {
        const int64_t stop = m + kLanes * std::min<int64_t>(kBlock, (M - m) / kLanes);
        A f1[kLanes] = {0}, f2[kLanes] = {0};
        for (; m < stop; m += kLanes) {
#pragma omp simd
          for (int j = 0; j < kLanes; ++j) {
            if (SAME) {
              const A va = static_cast<A>(pa[m + j]) - kc;
              f1[j] += va;
              f2[j] += va * va;
            } else {  // A is double here
              const A va = static_cast<A>(pa[m + j]) - kac, vb = static_cast<A>(pb[m + j]) - kc;
              f1[j] += va;
              f2[j] += va * vb;
              u3[j] += vb;
            }
          }
        }
        for (int j = 0; j < kLanes; ++j) {
          u1[j] += f1[j];
          u2[j] += f2[j];
        }
      }
      double t1 = 0.0, t2 = 0.0, t3 = 0.0;
      for (; m < M; ++m) {
        const A va = SAME ? static_cast<A>(pa[m]) - kc : static_cast<A>(pa[m]) - kac;
        const A vb = SAME ? va : static_cast<A>(pb[m]) - kc;
        t1 += va;
        t2 += static_cast<double>(va) * static_cast<double>(vb);
        t3 += vb;
      }
      for (int j = 0; j < kLanes; ++j) {
        t1 += u1[j];
        t2 += u2[j];
        t3 += u3[j];
      }
      p1[i] = t1;
      p2[i] = t2;
      p3[i] = t3;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    s1[c] = 0.0;
    s2[c] = 0.0;
    if (s3) s3[c] = 0.0;
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += p1[n * C + c];
      s2[c] += p2[n * C + c];
      if (s3) s3[c] += p3[n * C + c];
    }
}

// Sums over rows r0..r1 of C contiguous channels, for channels c0..c1, added into q1, q2 and (not
// SAME) q3, c1 - c0 doubles each; the same sums as sums_planes. For float32 a block of kBlock rows is summed
// into per-channel arrays that stay in the L1 cache, then added into q1 and q2; a double input
// sums straight into q1 and q2. ``sweep4`` (an input that fits in the cache): the statistics read
// four rows per sweep and the backward sums two, which cuts the traffic to those arrays; from main
// memory, more streams at once are slower.
template <typename T, bool SAME>
void rows_block(const T* a, const T* b, int64_t r0, int64_t r1, int64_t C, int64_t c0, int64_t c1,
                const double* k, const double* ka, double* q1, double* q2, double* q3, bool sweep4) {
  using A = Acc<T, SAME>;
  constexpr bool kDirect = std::is_same_v<A, double>;
  const int64_t W = c1 - c0;
  std::vector<A> buf((kDirect ? 2 : 3) * static_cast<size_t>(W));
  A* __restrict kh = buf.data();
  A* __restrict kah = kh + W;  // not SAME: a's shift (then A is double and kDirect)
  A* __restrict f1;
  A* __restrict f2;
  if constexpr (kDirect) {
    f1 = q1;
    f2 = q2;
  } else {
    f1 = kh + W;
    f2 = f1 + W;
  }
  for (int64_t c = 0; c < W; ++c) kh[c] = static_cast<A>(k[c0 + c]);
  if constexpr (!SAME)
    for (int64_t c = 0; c < W; ++c) kah[c] = static_cast<A>(ka[c0 + c]);
  const int64_t block = kDirect ? std::max<int64_t>(r1 - r0, 1) : kBlock;
  for (int64_t r = r0; r < r1; r += block) {
    const int64_t re = std::min(r1, r + block);
    if (!kDirect) std::fill(f1, f1 + 2 * W, A(0));
    int64_t rr = r;
    for (; SAME && sweep4 && rr + 4 <= re; rr += 4) {
      const T* __restrict a0 = a + rr * C + c0;
      const T* __restrict a1 = a0 + C;
      const T* __restrict a2 = a1 + C;
      const T* __restrict a3 = a2 + C;
#pragma omp simd
      for (int64_t c = 0; c < W; ++c) {
        const A v0 = static_cast<A>(a0[c]) - kh[c], v1 = static_cast<A>(a1[c]) - kh[c];
        const A v2 = static_cast<A>(a2[c]) - kh[c], v3 = static_cast<A>(a3[c]) - kh[c];
        f1[c] += (v0 + v1) + (v2 + v3);
        f2[c] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
      }
    }
    // the backward sums of a cache-sized input: two rows per sweep, one load and store of the three
    // sums per two rows
    for (; !SAME && sweep4 && rr + 2 <= re; rr += 2) {
      const T* __restrict a0 = a + rr * C + c0;
      const T* __restrict a1 = a0 + C;
      const T* __restrict b0 = b + rr * C + c0;
      const T* __restrict b1 = b0 + C;
#pragma omp simd
      for (int64_t c = 0; c < W; ++c) {
        const A v0 = static_cast<A>(a0[c]) - kah[c], v1 = static_cast<A>(a1[c]) - kah[c];
        const A u0 = static_cast<A>(b0[c]) - kh[c], u1 = static_cast<A>(b1[c]) - kh[c];
        f1[c] += v0 + v1;
        f2[c] += v0 * u0 + v1 * u1;
        q3[c] += u0 + u1;
      }
    }
    for (; rr < re; ++rr) {
      const T* __restrict pa = a + rr * C + c0;
      const T* __restrict pb = b + rr * C + c0;
      if constexpr (SAME) {
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          const A va = static_cast<A>(pa[c]) - kh[c];
          f1[c] += va;
          f2[c] += va * va;
        }
      } else {  // A is double and f1, f2 are q1, q2
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          const A va = static_cast<A>(pa[c]) - kah[c], vb = static_cast<A>(pb[c]) - kh[c];
          f1[c] += va;
          f2[c] += va * vb;
          q3[c] += vb;
        }
      }
    }
    if constexpr (!kDirect) {
      for (int64_t c = 0; c < W; ++c) {
        q1[c] += f1[c];
        q2[c] += f2[c];
      }
    }
  }
}

template <typename T, bool SAME>
void sums_rows(const T* a, const T* b, int64_t R, int64_t C, const double* k, const double* ka, double* s1,
               double* s2, double* s3) {
  constexpr int64_t kWide = 2048;  // channels per block when rows are split by channel
  const int64_t total = R * C;
  const int nthreads = at::get_num_threads();
  const bool sweep4 = total * static_cast<int64_t>(sizeof(T)) <= (int64_t{2} << 20);  // cache-sized input
  const bool split_channels = C >= 2 * kWide || (C >= 256 && R < 4 * nthreads);
  if (split_channels || total <= kGrain || nthreads == 1) {
    // blocks of channels, each over all rows: no partial sums to add up afterwards
    const int64_t width = split_channels ? std::min<int64_t>(kWide, (C + nthreads - 1) / nthreads) : C;
    const int64_t nblocks = (C + width - 1) / width;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, R * width));
    at::parallel_for(0, nblocks, grain, [&](int64_t k0, int64_t k1) {
      for (int64_t j = k0; j < k1; ++j) {
        const int64_t c0 = j * width, c1 = std::min(C, c0 + width), w = c1 - c0;
        if (nblocks == 1 || nthreads == 1) {  // no other thread writes next to these sums
          std::fill(s1 + c0, s1 + c1, 0.0);
          std::fill(s2 + c0, s2 + c1, 0.0);
          if (s3) std::fill(s3 + c0, s3 + c1, 0.0);
          rows_block<T, SAME>(a, b, 0, R, C, c0, c1, k, ka, s1 + c0, s2 + c0, s3 ? s3 + c0 : nullptr, sweep4);
          continue;
        }
        // summed in memory of this thread's own (a block's edge would share a cache line with its
        // neighbour's, updated by another thread at every row), then copied out once
        std::vector<double> own(3 * static_cast<size_t>(w), 0.0);
        rows_block<T, SAME>(a, b, 0, R, C, c0, c1, k, ka, own.data(), own.data() + w, own.data() + 2 * w, sweep4);
        std::copy(own.begin(), own.begin() + w, s1 + c0);
        std::copy(own.begin() + w, own.begin() + 2 * w, s2 + c0);
        if (s3) std::copy(own.begin() + 2 * w, own.end(), s3 + c0);
      }
    });
    return;
  }
  // blocks of rows, one per thread, each with its own per-channel sums
  std::vector<double> part(static_cast<size_t>(nthreads) * 3 * C, 0.0);
  std::vector<char> used(nthreads, 0);
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
    const int t = at::get_thread_num();
    // Each thread sums into memory of its own, and adds the result to the shared array once: sums
    // updated row after row next to another thread's would share cache lines with them, and every
    // update would then wait for the line to come back from the other core.
    std::vector<double> own(3 * static_cast<size_t>(C), 0.0);
    rows_block<T, SAME>(a, b, r0, r1, C, 0, C, k, ka, own.data(), own.data() + C, own.data() + 2 * C, sweep4);
    double* q = part.data() + static_cast<size_t>(t) * 3 * C;
    for (int64_t i = 0; i < 3 * C; ++i) q[i] += own[i];
    used[t] = 1;
  });
  for (int64_t c = 0; c < C; ++c) {
    s1[c] = 0.0;
    s2[c] = 0.0;
    if (s3) s3[c] = 0.0;
  }
  for (int t = 0; t < nthreads; ++t) {
    if (!used[t]) continue;
    const double* q1 = part.data() + static_cast<size_t>(t) * 3 * C;
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += q1[c];
      s2[c] += q1[C + c];
      if (s3) s3[c] += q1[2 * C + c];
    }
  }
}

// A channel's statistics summed again in double, value by value: for a float32 channel whose
// float squares overflowed (a spread above about 1e19) or came near underflow (a spread below about
// 1e-15, not a constant channel), or whose data hold inf or NaN.
template <typename T>
void stats_in_double(const View& v, const T* a, int64_t c, double k, double* s1, double* s2) {
  double t1 = 0.0, t2 = 0.0;
  const int64_t R = v.N * v.M;
  for (int64_t r = 0; r < R; ++r) {
    const T* p = v.rows ? a + r * v.C + c : a + ((r / v.M) * v.C + c) * v.M + r % v.M;
    const double d = static_cast<double>(*p) - k;
    t1 += d;
    t2 += d * d;
  }
  *s1 = t1;
  *s2 = t2;
}

// Per-channel sums of a (N, C, M) view, in double:
//   stats:  s1 = sum(a - k), s2 = sum((a - k)^2)   (the statistics of a, k one of each channel's own
//           values, so exact in T; b unused; eps is the layer's, which decides whether a near-underflow
//           variance is worth summing again in double);
//   else:   s1 = sum(a - ka), s2 = sum((a - ka) * (b - k)), s3 = sum(b - k)
//           (the backward pass: a = dy, ka one of each channel's values of dy, b = x, k the mean).
template <typename T>
void sums(const View& v, bool stats, const T* a, const T* b, const double* k, double* s1, double* s2,
          const double* ka, double* s3, double eps) {
  if (stats) {
    v.rows ? sums_rows<T, true>(a, b, v.N * v.M, v.C, k, nullptr, s1, s2, nullptr)
           : sums_planes<T, true>(a, b, v.N, v.C, v.M, k, nullptr, s1, s2, nullptr);
    if constexpr (std::is_same_v<Acc<T, true>, float>) {
      // float squares near underflow; they matter only next to an eps that small
      const double tiny = eps < 1e-20 ? 1e-30 * static_cast<double>(v.N * v.M) : 0.0;
      for (int64_t c = 0; c < v.C; ++c) {
        const bool lost = !std::isfinite(s1[c]) || !std::isfinite(s2[c]) ||
                          (s2[c] < tiny && (s2[c] > 0.0 || s1[c] != 0.0));
        if (lost) stats_in_double<T>(v, a, c, k[c], s1 + c, s2 + c);
      }
    }
  } else {
    v.rows ? sums_rows<T, false>(a, b, v.N * v.M, v.C, k, ka, s1, s2, s3)
           : sums_planes<T, false>(a, b, v.N, v.C, v.M, k, ka, s1, s2, s3);
  }
}

template <typename T>
void affine_planes(const T* a, const T* b, T* out, int64_t N, int64_t C, int64_t M, const Affine<T>& f) {
  at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / std::max<int64_t>(M, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i % C;
      const T a0 = f.ca[c], a1 = f.al[c], b1 = f.be[c];
      const T* pa = a + i * M;
      T* po = out + i * M;
      if (b) {
        const T b0 = f.cb[c], g1 = f.ga[c];
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
void affine_rows(const T* a, const T* b, T* out, int64_t R, int64_t C, const Affine<T>& f) {
  const T *__restrict__ ca = f.ca, *__restrict__ al = f.al, *__restrict__ be = f.be, *__restrict__ cb = f.cb,
          *__restrict__ ga = f.ga;
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict__ pa = a + r * C;
      T* __restrict__ po = out + r * C;
      if (b) {
        const T* __restrict__ pb = b + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) po[c] = (pa[c] - ca[c]) * al[c] + be[c] + (pb[c] - cb[c]) * ga[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) po[c] = (pa[c] - ca[c]) * al[c] + be[c];
      }
    }
  });
}

template <typename T>
void affine(const View& v, const T* a, const T* b, T* out, const Affine<T>& f) {
  if (v.rows)
    affine_rows<T>(a, b, out, v.N * v.M, v.C, f);
  else
    affine_planes<T>(a, b, out, v.N, v.C, v.M, f);
}

#endif  // BNBOOK_KERNEL_BODY
