// Selective scan (Mamba-1's S6) on the CPU, fused over (state, channel) per step; the Python side is
// kernels/selective_scan/native.py, which states the contract. Per batch row, the state is held as
// [N][D] (channels innermost, so every inner loop runs along D and vectorises). The forward pass keeps
// only the state entering each chunk of `chunk` steps; the backward pass recomputes a chunk's states
// and decays from it into two cache-sized buffers, then runs the chunk backwards.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "exp_inline.h"

namespace {

template <typename S>
void load_transposed(const S* state_dn, S* state_nd, int64_t D, int64_t N) {
  for (int64_t d = 0; d < D; ++d)
    for (int64_t n = 0; n < N; ++n) state_nd[n * D + d] = state_dn[d * N + n];
}

template <typename S>
void store_transposed(const S* state_nd, S* state_dn, int64_t D, int64_t N) {
  for (int64_t d = 0; d < D; ++d)
    for (int64_t n = 0; n < N; ++n) state_dn[d * N + n] = state_nd[n * D + d];
}

// Rows b0..b1-1. u, delta, y [B, T, D]; A_t [N, D]; Bm, Cm [B, T, N]; keep [B, T] (0 where a reset drops
// the carried state); h0, h_final [B, D, N]; checkpoints [B, chunks, N, D] (the state entering each chunk).
template <typename S>
void forward_rows(int64_t b0, int64_t b1, int64_t T, int64_t D, int64_t N, int64_t chunk, const S* u,
             const S* delta, const S* A_t, const S* Bm, const S* Cm, const S* keep, const S* h0, S* y,
             S* checkpoints, S* h_final) {
  const int64_t chunks = (T + chunk - 1) / chunk;
  std::vector<S> h(N * D);
  for (int64_t b = b0; b < b1; ++b) {
    load_transposed(h0 + b * D * N, h.data(), D, N);
    for (int64_t t = 0; t < T; ++t) {
      if (t % chunk == 0) std::memcpy(checkpoints + (b * chunks + t / chunk) * N * D, h.data(), N * D * sizeof(S));
      const int64_t row = b * T + t;
      const S k = keep[row];
      const S* delta_row = delta + row * D;
      const S* u_row = u + row * D;
      S* y_row = y + row * D;
      for (int64_t d = 0; d < D; ++d) y_row[d] = 0;
      for (int64_t n = 0; n < N; ++n) {
        const S b_n = Bm[row * N + n], c_n = Cm[row * N + n];
        const S* a_n = A_t + n * D;
        S* h_n = h.data() + n * D;
        for (int64_t d = 0; d < D; ++d) {
          const S value = memrl::exp_inline(delta_row[d] * a_n[d]) * k * h_n[d] + delta_row[d] * u_row[d] * b_n;
          h_n[d] = value;
          y_row[d] += c_n * value;
        }
      }
    }
    store_transposed(h.data(), h_final + b * D * N, D, N);
  }
}

// grad_y [B, T, D]; grad_final [B, D, N] (or null: zero). Writes grad_u, grad_delta [B, T, D], grad_B,
// grad_C [B, T, N], grad_h0 [B, D, N], and adds this range's grad A^T into grad_A_t [N, D].
template <typename S>
void backward_rows(int64_t b0, int64_t b1, int64_t T, int64_t D, int64_t N, int64_t chunk, const S* u,
              const S* delta, const S* A_t, const S* Bm, const S* Cm, const S* keep, const S* checkpoints,
              const S* grad_y, const S* grad_final, S* grad_u, S* grad_delta, S* grad_A_t, S* grad_B,
              S* grad_C, S* grad_h0) {
  const int64_t chunks = (T + chunk - 1) / chunk;
  const int64_t size = N * D;
  std::vector<S> states((chunk + 1) * size), decays(chunk * size), g(size), grad_drive(D), grad_exponent(D);
  for (int64_t b = b0; b < b1; ++b) {
    if (grad_final != nullptr) load_transposed(grad_final + b * size, g.data(), D, N);
    else std::fill(g.begin(), g.end(), S(0));
    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t start = c * chunk, length = std::min(chunk, T - start);
      std::memcpy(states.data(), checkpoints + (b * chunks + c) * size, size * sizeof(S));
      for (int64_t i = 0; i < length; ++i) {
        const int64_t row = b * T + start + i;
        const S k = keep[row];
        const S* delta_row = delta + row * D;
        const S* u_row = u + row * D;
        for (int64_t n = 0; n < N; ++n) {
          const S b_n = Bm[row * N + n];
          const S* a_n = A_t + n * D;
          const S* before = states.data() + i * size + n * D;
          S* after = states.data() + (i + 1) * size + n * D;
          S* decay = decays.data() + i * size + n * D;
          for (int64_t d = 0; d < D; ++d) {
            const S decay_value = memrl::exp_inline(delta_row[d] * a_n[d]) * k;
            decay[d] = decay_value;
            after[d] = decay_value * before[d] + delta_row[d] * u_row[d] * b_n;
          }
        }
      }
      for (int64_t i = length - 1; i >= 0; --i) {
        const int64_t row = b * T + start + i;
        const S* delta_row = delta + row * D;
        const S* u_row = u + row * D;
        const S* grad_y_row = grad_y + row * D;
        std::fill(grad_drive.begin(), grad_drive.end(), S(0));
        std::fill(grad_exponent.begin(), grad_exponent.end(), S(0));
        for (int64_t n = 0; n < N; ++n) {
          const S b_n = Bm[row * N + n], c_n = Cm[row * N + n];
          const S* a_n = A_t + n * D;
          const S* before = states.data() + i * size + n * D;
          const S* after = states.data() + (i + 1) * size + n * D;
          const S* decay = decays.data() + i * size + n * D;
          S* g_n = g.data() + n * D;
          S* grad_a_n = grad_A_t + n * D;
          S grad_b = 0, grad_c = 0;
          for (int64_t d = 0; d < D; ++d) {
            const S grad_state = g_n[d] + grad_y_row[d] * c_n;
            grad_c += grad_y_row[d] * after[d];
            grad_b += grad_state * delta_row[d] * u_row[d];
            grad_drive[d] += grad_state * b_n;
            const S exponent = grad_state * before[d] * decay[d];
            grad_exponent[d] += exponent * a_n[d];
            grad_a_n[d] += exponent * delta_row[d];
            g_n[d] = grad_state * decay[d];
          }
          grad_B[row * N + n] = grad_b;
          grad_C[row * N + n] = grad_c;
        }
        for (int64_t d = 0; d < D; ++d) {
          grad_u[row * D + d] = grad_drive[d] * delta_row[d];
          grad_delta[row * D + d] = grad_drive[d] * u_row[d] + grad_exponent[d];
        }
      }
    }
    store_transposed(g.data(), grad_h0 + b * size, D, N);
  }
}

// The batch rows are split over `threads` OpenMP threads. Built with -fopenmp, the library binds to the
// process's libgomp: in a torch process that is torch's own, so these are torch's intra-op threads (a pool of
// their own would fight torch's spinning workers for the cores).
template <typename S>
void forward(int64_t threads, int64_t B, int64_t T, int64_t D, int64_t N, int64_t chunk, const S* u,
             const S* delta, const S* A_t, const S* Bm, const S* Cm, const S* keep, const S* h0, S* y,
             S* checkpoints, S* h_final) {
  threads = std::max<int64_t>(1, std::min(threads, B));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t worker = 0; worker < threads; ++worker)
    forward_rows(B * worker / threads, B * (worker + 1) / threads, T, D, N, chunk, u, delta, A_t, Bm, Cm, keep,
                 h0, y, checkpoints, h_final);
}

// Each thread adds its rows' grad A^T into its own [N, D] buffer; the buffers are summed into grad_A_t.
template <typename S>
void backward(int64_t threads, int64_t B, int64_t T, int64_t D, int64_t N, int64_t chunk, const S* u,
              const S* delta, const S* A_t, const S* Bm, const S* Cm, const S* keep, const S* checkpoints,
              const S* grad_y, const S* grad_final, S* grad_u, S* grad_delta, S* grad_A_t, S* grad_B,
              S* grad_C, S* grad_h0) {
  threads = std::max<int64_t>(1, std::min(threads, B));
  std::vector<S> grad_A_parts(threads * N * D, S(0));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t worker = 0; worker < threads; ++worker)
    backward_rows(B * worker / threads, B * (worker + 1) / threads, T, D, N, chunk, u, delta, A_t, Bm, Cm, keep,
                  checkpoints, grad_y, grad_final, grad_u, grad_delta, grad_A_parts.data() + worker * N * D,
                  grad_B, grad_C, grad_h0);
  for (int64_t i = 0; i < N * D; ++i) {
    S total = 0;
    for (int64_t worker = 0; worker < threads; ++worker) total += grad_A_parts[worker * N * D + i];
    grad_A_t[i] = total;
  }
}

}  // namespace

#define MEMRL_SELECTIVE_SCAN(S, SUFFIX)                                                                      \
  extern "C" void memrl_selective_scan_forward_##SUFFIX(                                                   \
      int64_t threads, int64_t B, int64_t T, int64_t D, int64_t N, int64_t chunk, const S* u,               \
      const S* delta, const S* A_t, const S* Bm, const S* Cm, const S* keep, const S* h0, S* y,             \
      S* checkpoints, S* h_final) {                                                                         \
    forward<S>(threads, B, T, D, N, chunk, u, delta, A_t, Bm, Cm, keep, h0, y, checkpoints, h_final);       \
  }                                                                                                         \
  extern "C" void memrl_selective_scan_backward_##SUFFIX(                                                  \
      int64_t threads, int64_t B, int64_t T, int64_t D, int64_t N, int64_t chunk, const S* u,               \
      const S* delta, const S* A_t, const S* Bm, const S* Cm, const S* keep, const S* checkpoints,          \
      const S* grad_y, const S* grad_final, S* grad_u, S* grad_delta, S* grad_A_t, S* grad_B, S* grad_C,    \
      S* grad_h0) {                                                                                         \
    backward<S>(threads, B, T, D, N, chunk, u, delta, A_t, Bm, Cm, keep, checkpoints, grad_y, grad_final,   \
                grad_u, grad_delta, grad_A_t, grad_B, grad_C, grad_h0);                                     \
  }

MEMRL_SELECTIVE_SCAN(float, f32)
MEMRL_SELECTIVE_SCAN(double, f64)
