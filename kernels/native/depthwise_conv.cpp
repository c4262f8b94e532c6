// The same-episode causal depthwise convolution of Mamba, Mamba-2 and Gated DeltaNet on the CPU, with the SiLU
// that each of them applies to its output fused in (memory/mamba.py states the contract):
//     pre[b, t, c] = bias[c] + sum over k = 0 .. K-1 of weight[k, c] * in(b, t - (K-1) + k, c)
//     out = silu(pre) (or pre)
// where in(b, s, c) is x[b, s, c] for s >= 0 and conv_state[b, s + K-1, c] for s < 0, read as zero before the
// latest episode start at or before t (a reset at t starts an episode there). `weight` is stored [K, C] here
// (taps outermost) so that every inner loop runs along the C channels and vectorises. x rows may be strided
// (a slice of a wider projection): row (b, t) starts at x + (b T + t) x_row_stride.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "exp_inline.h"

namespace {

template <typename S>
inline S sigmoid(S value) {
  return S(1) / (S(1) + memrl::exp_inline(-value));
}

// The input row at time s (>= -(K-1)) of batch row b.
template <typename S>
inline const S* input_row(const S* x, const S* conv_state, int64_t b, int64_t s, int64_t T, int64_t C, int64_t K,
                          int64_t x_row_stride) {
  return s >= 0 ? x + (b * T + s) * x_row_stride : conv_state + (b * (K - 1) + s + K - 1) * C;
}

// pre-activation of step t into `pre` [C]; `start` is the first valid time (the latest episode start, or -(K-1)).
template <typename S>
inline void convolve(const S* x, const S* conv_state, const S* weight, const S* bias, int64_t b, int64_t t,
                     int64_t start, int64_t T, int64_t C, int64_t K, int64_t x_row_stride, S* pre) {
  std::memcpy(pre, bias, C * sizeof(S));
  for (int64_t k = std::max<int64_t>(0, start - t + K - 1); k < K; ++k) {
    const S* in = input_row(x, conv_state, b, t - (K - 1) + k, T, C, K, x_row_stride);
    const S* w = weight + k * C;
    for (int64_t c = 0; c < C; ++c) pre[c] += w[c] * in[c];
  }
}

// out [B, T, C], next_state [B, K-1, C] (the last K-1 inputs, zero where they precede the final episode start).
template <typename S>
void forward(int64_t threads, int64_t B, int64_t T, int64_t C, int64_t K, int64_t x_row_stride, int64_t silu,
             const S* x, const S* conv_state, const uint8_t* reset, const S* weight, const S* bias, S* out,
             S* next_state) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    int64_t start = -(K - 1);
    for (int64_t t = 0; t < T; ++t) {
      if (reset[b * T + t]) start = t;
      S* out_row = out + (b * T + t) * C;
      convolve(x, conv_state, weight, bias, b, t, start, T, C, K, x_row_stride, out_row);
      if (silu)
        for (int64_t c = 0; c < C; ++c) out_row[c] *= sigmoid(out_row[c]);
    }
    for (int64_t j = 0; j < K - 1; ++j) {
      const int64_t s = T - (K - 1) + j;
      S* state_row = next_state + (b * (K - 1) + j) * C;
      if (s < start) {
        std::memset(state_row, 0, C * sizeof(S));
      } else {
        std::memcpy(state_row, input_row(x, conv_state, b, s, T, C, K, x_row_stride), C * sizeof(S));
      }
    }
  }
}

// grad_x [B, T, C] and grad_state [B, K-1, C] are overwritten, as are grad_weight [K, C] and grad_bias [C]: each
// thread sums its rows' parameter gradients in a buffer of its own, added up at the end. grad_next_state may be
// null (no gradient reached the final conv state).
template <typename S>
void backward(int64_t threads, int64_t B, int64_t T, int64_t C, int64_t K, int64_t x_row_stride, int64_t silu,
              const S* x, const S* conv_state, const uint8_t* reset, const S* weight, const S* bias,
              const S* grad_out, const S* grad_next_state, S* grad_x, S* grad_state, S* grad_weight,
              S* grad_bias) {
  threads = std::max<int64_t>(1, std::min(threads, B));
  const int64_t part_size = (K + 1) * C;  // grad_weight rows, then grad_bias
  std::vector<S> parts(threads * part_size, S(0));
  std::memset(grad_x, 0, B * T * C * sizeof(S));
  std::memset(grad_state, 0, B * (K - 1) * C * sizeof(S));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t worker = 0; worker < threads; ++worker) {
    S* grad_weight_part = parts.data() + worker * part_size;
    S* grad_bias_part = grad_weight_part + K * C;
    std::vector<S> grad_pre(C);
    for (int64_t b = B * worker / threads; b < B * (worker + 1) / threads; ++b) {
      int64_t start = -(K - 1);
      for (int64_t t = 0; t < T; ++t) {
        if (reset[b * T + t]) start = t;
        const S* grad_row = grad_out + (b * T + t) * C;
        if (silu) {
          convolve(x, conv_state, weight, bias, b, t, start, T, C, K, x_row_stride, grad_pre.data());
          for (int64_t c = 0; c < C; ++c) {
            const S pre = grad_pre[c], gate = sigmoid(pre);
            grad_pre[c] = grad_row[c] * gate * (S(1) + pre * (S(1) - gate));
          }
        } else {
          std::memcpy(grad_pre.data(), grad_row, C * sizeof(S));
        }
        for (int64_t c = 0; c < C; ++c) grad_bias_part[c] += grad_pre[c];
        for (int64_t k = std::max<int64_t>(0, start - t + K - 1); k < K; ++k) {
          const int64_t s = t - (K - 1) + k;
          const S* in = input_row(x, conv_state, b, s, T, C, K, x_row_stride);
          S* grad_in = s >= 0 ? grad_x + (b * T + s) * C : grad_state + (b * (K - 1) + s + K - 1) * C;
          const S* w = weight + k * C;
          S* grad_w = grad_weight_part + k * C;
          for (int64_t c = 0; c < C; ++c) {
            grad_in[c] += w[c] * grad_pre[c];
            grad_w[c] += grad_pre[c] * in[c];
          }
        }
      }
      if (grad_next_state == nullptr) continue;
      for (int64_t j = std::max<int64_t>(0, start - T + K - 1); j < K - 1; ++j) {
        const int64_t s = T - (K - 1) + j;
        S* grad_in = s >= 0 ? grad_x + (b * T + s) * C : grad_state + (b * (K - 1) + s + K - 1) * C;
        const S* grad_carried = grad_next_state + (b * (K - 1) + j) * C;
        for (int64_t c = 0; c < C; ++c) grad_in[c] += grad_carried[c];
      }
    }
  }
  std::memset(grad_weight, 0, K * C * sizeof(S));
  std::memset(grad_bias, 0, C * sizeof(S));
  for (int64_t worker = 0; worker < threads; ++worker) {
    const S* part = parts.data() + worker * part_size;
    for (int64_t i = 0; i < K * C; ++i) grad_weight[i] += part[i];
    for (int64_t c = 0; c < C; ++c) grad_bias[c] += part[K * C + c];
  }
}

}  // namespace

#define MEMRL_DEPTHWISE_CONV(S, SUFFIX)                                                                          \
  extern "C" void memrl_same_episode_conv_forward_##SUFFIX(                                                       \
      int64_t threads, int64_t B, int64_t T, int64_t C, int64_t K, int64_t x_row_stride, int64_t silu, const S* x, \
      const S* conv_state, const uint8_t* reset, const S* weight, const S* bias, S* out, S* next_state) {         \
    forward<S>(threads, B, T, C, K, x_row_stride, silu, x, conv_state, reset, weight, bias, out, next_state);      \
  }                                                                                                              \
  extern "C" void memrl_same_episode_conv_backward_##SUFFIX(                                                      \
      int64_t threads, int64_t B, int64_t T, int64_t C, int64_t K, int64_t x_row_stride, int64_t silu, const S* x, \
      const S* conv_state, const uint8_t* reset, const S* weight, const S* bias, const S* grad_out,               \
      const S* grad_next_state, S* grad_x, S* grad_state, S* grad_weight, S* grad_bias) {                          \
    backward<S>(threads, B, T, C, K, x_row_stride, silu, x, conv_state, reset, weight, bias, grad_out,             \
                grad_next_state, grad_x, grad_state, grad_weight, grad_bias);                                      \
  }

MEMRL_DEPTHWISE_CONV(float, f32)
MEMRL_DEPTHWISE_CONV(double, f64)
