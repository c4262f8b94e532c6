// One Mamba-1 block step without autograd (a rollout's): memory/mamba.py's MambaMixer.step, from the input
// projection to the output projection, in one loop per batch row (the batch rows on torch's OpenMP threads).
// Weights come in torch's Linear layout [out, in]: each output is a dot product along a contiguous row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename S>
S silu(S x) { return x / (S(1) + std::exp(-x)); }

template <typename S>
S softplus(S x) { return x > S(20) ? x : std::log1p(std::exp(x)); }  // torch's softplus (beta 1, threshold 20)

// out[j] += sum_i in[i] * weight[j, i] for j < outputs (weight [outputs, inputs], torch's Linear layout).
template <typename S>
void add_product(const S* in, int64_t inputs, const S* weight, int64_t outputs, S* out) {
  for (int64_t j = 0; j < outputs; ++j) {
    const S* row = weight + j * inputs;
    S total = 0;
    for (int64_t i = 0; i < inputs; ++i) total += in[i] * row[i];
    out[j] += total;
  }
}

// u, out [B, H]; keep [B] (0 where a reset drops the carried state and conv window); in_weight [2 Di, H];
// conv_weight [Di, K]; conv_bias, dt_bias, D [Di]; x_weight [R + 2 N, Di]; dt_weight [Di, R];
// A_t = -exp(A_log)^T [N, Di]; out_weight [H, Di]; ssm_in, ssm_out [B, Di, N]; conv_in, conv_out [B, K - 1, Di].
template <typename S>
void block_step(int64_t threads, int64_t B, int64_t H, int64_t Di, int64_t N, int64_t K, int64_t R, const S* u,
                const S* keep, const S* in_weight, const S* conv_weight, const S* conv_bias, const S* x_weight,
                const S* dt_weight, const S* dt_bias, const S* A_t, const S* D, const S* out_weight,
                const S* ssm_in, const S* conv_in, S* ssm_out, S* conv_out, S* out) {
  const int64_t projected = R + 2 * N;
#pragma omp parallel num_threads(threads)
  {
    std::vector<S> xz(2 * Di), x(Di), dbc(projected), delta(Di), y(Di);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const S k = keep[b];
      std::fill(xz.begin(), xz.end(), S(0));
      add_product(u + b * H, H, in_weight, 2 * Di, xz.data());
      const S* window = conv_in + b * (K - 1) * Di;
      S* next_window = conv_out + b * (K - 1) * Di;
      for (int64_t c = 0; c < Di; ++c) {
        S total = conv_bias[c] + conv_weight[c * K + K - 1] * xz[c];
        for (int64_t tap = 0; tap < K - 1; ++tap) total += conv_weight[c * K + tap] * k * window[tap * Di + c];
        x[c] = silu(total);
      }
      for (int64_t tap = 0; tap + 1 < K - 1; ++tap)
        for (int64_t c = 0; c < Di; ++c) next_window[tap * Di + c] = k * window[(tap + 1) * Di + c];
      if (K > 1)
        for (int64_t c = 0; c < Di; ++c) next_window[(K - 2) * Di + c] = xz[c];
      std::fill(dbc.begin(), dbc.end(), S(0));
      add_product(x.data(), Di, x_weight, projected, dbc.data());
      std::copy(dt_bias, dt_bias + Di, delta.begin());
      add_product(dbc.data(), R, dt_weight, Di, delta.data());
      const S* B_row = dbc.data() + R;
      const S* C_row = B_row + N;
      for (int64_t c = 0; c < Di; ++c) {
        const S step = softplus(delta[c]), drive = step * x[c];
        const S* previous = ssm_in + (b * Di + c) * N;
        S* next = ssm_out + (b * Di + c) * N;
        S read_out = 0;
        for (int64_t n = 0; n < N; ++n) {
          const S value = std::exp(step * A_t[n * Di + c]) * k * previous[n] + drive * B_row[n];
          next[n] = value;
          read_out += C_row[n] * value;
        }
        y[c] = (read_out + D[c] * x[c]) * silu(xz[Di + c]);
      }
      S* out_row = out + b * H;
      std::fill(out_row, out_row + H, S(0));
      add_product(y.data(), Di, out_weight, H, out_row);
    }
  }
}

}  // namespace

#define MEMRL_MAMBA_BLOCK_STEP(S, SUFFIX)                                                                        \
  extern "C" void memrl_mamba_block_step_##SUFFIX(                                                             \
      int64_t threads, int64_t B, int64_t H, int64_t Di, int64_t N, int64_t K, int64_t R, const S* u,           \
      const S* keep, const S* in_weight, const S* conv_weight, const S* conv_bias, const S* x_weight,       \
      const S* dt_weight, const S* dt_bias, const S* A_t, const S* D, const S* out_weight, const S* ssm_in, \
      const S* conv_in, S* ssm_out, S* conv_out, S* out) {                                                      \
    block_step<S>(threads, B, H, Di, N, K, R, u, keep, in_weight, conv_weight, conv_bias, x_weight,         \
                  dt_weight, dt_bias, A_t, D, out_weight, ssm_in, conv_in, ssm_out, conv_out, out);         \
  }

MEMRL_MAMBA_BLOCK_STEP(float, f32)
MEMRL_MAMBA_BLOCK_STEP(double, f64)
