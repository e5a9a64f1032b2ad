// soundry::rows_linear — y = x W^T (+ b) for the few rows of a decode step, fp32, on the CPU.
//
// The weight is stored in blocks of 16 output features, each block's K x 16 floats contiguous
// ([N / 16, K, 16]), so one pass streams it exactly once whatever the row count up to 8; rows come in
// chunks of 8, 4, 2, 1 (a chunk's accumulators live in vector registers). Every output is summed the
// same way — acc = 0, then acc = acc + x[m, k] * w[k, n] for k = 0 .. K-1, then + bias — whatever the
// chunk, the row count or the thread that computes it: a row's result does not depend on what shares
// the call. Threads (torch's intra-op pool) split the output blocks.
//
// Built at run time for the host CPU (-O3 -march=native -ffp-contract=fast) by
// soundry/models/audiocraft/lm/rows_kernel.py, which says why it exists.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace {

constexpr int64_t kBlock = 16;
typedef float vec16 __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores

template <int Rows>
inline void block_rows(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N) {
  vec16 acc[Rows];
  for (int r = 0; r < Rows; ++r) acc[r] = vec16{};
  for (int64_t k = 0; k < K; ++k) {
    const vec16 wk = *reinterpret_cast<const vec16*>(w + k * kBlock);
    for (int r = 0; r < Rows; ++r) acc[r] += x[r * K + k] * wk;
  }
  for (int r = 0; r < Rows; ++r) {
    vec16 out = acc[r];
    if (bias != nullptr) out += *reinterpret_cast<const vec16*>(bias);
    *reinterpret_cast<vec16*>(y + r * N) = out;
  }
}

at::Tensor rows_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "rows_linear takes float32 inputs and weights");
  TORCH_CHECK(weight.dim() == 3 && weight.size(2) == kBlock && weight.is_contiguous(),
              "rows_linear takes a weight blocked as [N / 16, K, 16] (rows_kernel.block_weight)");
  const int64_t K = weight.size(1), blocks = weight.size(0), N = blocks * kBlock;
  TORCH_CHECK(x.size(-1) == K, "rows_linear: input has ", x.size(-1), " features, the weight ", K);
  const at::Tensor rows = x.reshape({-1, K}).contiguous();
  const int64_t M = rows.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == N, "rows_linear: bias must be float32 of ", N);
  }
  const float* xp = rows.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float* wj = wp + j * K * kBlock;
      const float* bj = bp == nullptr ? nullptr : bp + j * kBlock;
      int64_t m = 0;
      for (; m + 8 <= M; m += 8) block_rows<8>(xp + m * K, K, wj, bj, yp + m * N + j * kBlock, N);
      for (; m + 4 <= M; m += 4) block_rows<4>(xp + m * K, K, wj, bj, yp + m * N + j * kBlock, N);
      for (; m + 2 <= M; m += 2) block_rows<2>(xp + m * K, K, wj, bj, yp + m * N + j * kBlock, N);
      for (; m < M; ++m) block_rows<1>(xp + m * K, K, wj, bj, yp + m * N + j * kBlock, N);
    }
  });
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  return y.view(sizes);
}

}  // namespace

TORCH_LIBRARY(soundry, m) {
  m.def("rows_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(soundry, CPU, m) {
  m.impl("rows_linear", &rows_linear);
}
