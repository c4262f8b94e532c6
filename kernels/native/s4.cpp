// S4D on the CPU (memory/s4.py states the contracts).
// The episode-masked causal convolution of a training window:
//     y[b, t, h] = sum over k = 0 .. t - start[b, t] of K[k, h] u[b, t - k, h]
// where start[b, t] is the first step of t's episode inside the window. Every inner loop runs along the
// H channels (contiguous), so it vectorises; the lag loop stops at the episode start.
// And one recurrent step (the rollout's): discretise, update the complex state, read it out.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Batch rows run on `threads` OpenMP threads (torch's, see kernels/native/__init__.py).
template <typename S>
void forward(int64_t threads, int64_t B, int64_t T, int64_t H, const S* u, const S* kernel, const int64_t* start,
             S* y) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      S* y_row = y + (b * T + t) * H;
      std::memset(y_row, 0, H * sizeof(S));
      const int64_t lags = t - start[b * T + t];
      for (int64_t k = 0; k <= lags; ++k) {
        const S* kernel_row = kernel + k * H;
        const S* u_row = u + (b * T + t - k) * H;
        for (int64_t h = 0; h < H; ++h) y_row[h] += kernel_row[h] * u_row[h];
      }
    }
  }
}

// grad_u [B, T, H] and grad_kernel [T, H] are overwritten; each thread sums its rows' grad_kernel in a buffer of
// its own, and the buffers are added up at the end.
template <typename S>
void backward(int64_t threads, int64_t B, int64_t T, int64_t H, const S* u, const S* kernel, const int64_t* start,
              const S* grad_y, S* grad_u, S* grad_kernel) {
  threads = std::max<int64_t>(1, std::min(threads, B));
  std::vector<S> grad_kernel_parts(threads * T * H, S(0));
  std::memset(grad_u, 0, B * T * H * sizeof(S));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t worker = 0; worker < threads; ++worker) {
    S* grad_kernel_part = grad_kernel_parts.data() + worker * T * H;
    for (int64_t b = B * worker / threads; b < B * (worker + 1) / threads; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const S* grad_row = grad_y + (b * T + t) * H;
        const int64_t lags = t - start[b * T + t];
        for (int64_t k = 0; k <= lags; ++k) {
          const S* kernel_row = kernel + k * H;
          const S* u_row = u + (b * T + t - k) * H;
          S* grad_u_row = grad_u + (b * T + t - k) * H;
          S* grad_kernel_row = grad_kernel_part + k * H;
          for (int64_t h = 0; h < H; ++h) {
            grad_u_row[h] += kernel_row[h] * grad_row[h];
            grad_kernel_row[h] += grad_row[h] * u_row[h];
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < T * H; ++i) {
    S total = 0;
    for (int64_t worker = 0; worker < threads; ++worker) total += grad_kernel_parts[worker * T * H + i];
    grad_kernel[i] = total;
  }
}

// One step of x_t = A_bar x_{t-1} (x dropped where keep is 0) + B_bar u_t, y_t = 2 Re(sum_m C_m x_t,m) + D u_t,
// with A = -exp(log_neg_real) + i imag, A_bar = exp(step A), B_bar = (A_bar - 1) / A, step = exp(log_step).
// log_neg_real, imag [H, M]; log_step, D [H]; C [H, M, 2] (real, imag); u, y [B, H]; keep [B];
// state_in, state_out [B, H, M, 2] (complex as real, imag pairs; they may not overlap).
template <typename S>
void step(int64_t B, int64_t H, int64_t M, const S* log_neg_real, const S* imag, const S* log_step, const S* C,
          const S* D, const S* u, const S* keep, const S* state_in, S* state_out, S* y) {
  std::vector<S> bar(4 * H * M);  // A_bar real, A_bar imag, B_bar real, B_bar imag, each [H, M]
  S* bar_real = bar.data();
  S* bar_imag = bar_real + H * M;
  S* gain_real = bar_imag + H * M;
  S* gain_imag = gain_real + H * M;
  for (int64_t h = 0; h < H; ++h) {
    const S step_size = std::exp(log_step[h]);
    for (int64_t m = 0; m < M; ++m) {
      const int64_t i = h * M + m;
      const S real = -std::exp(log_neg_real[i]), angle = step_size * imag[i];
      const S magnitude = std::exp(step_size * real);
      bar_real[i] = magnitude * std::cos(angle);
      bar_imag[i] = magnitude * std::sin(angle);
      const S norm = real * real + imag[i] * imag[i];
      gain_real[i] = ((bar_real[i] - 1) * real + bar_imag[i] * imag[i]) / norm;
      gain_imag[i] = (bar_imag[i] * real - (bar_real[i] - 1) * imag[i]) / norm;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const S k = keep[b];
    for (int64_t h = 0; h < H; ++h) {
      const S input = u[b * H + h];
      const S* in = state_in + (b * H + h) * M * 2;
      S* out = state_out + (b * H + h) * M * 2;
      const S* c = C + h * M * 2;
      S read_out = 0;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t i = h * M + m;
        const S real = k * (bar_real[i] * in[2 * m] - bar_imag[i] * in[2 * m + 1]) + gain_real[i] * input;
        const S imaginary = k * (bar_real[i] * in[2 * m + 1] + bar_imag[i] * in[2 * m]) + gain_imag[i] * input;
        out[2 * m] = real;
        out[2 * m + 1] = imaginary;
        read_out += c[2 * m] * real - c[2 * m + 1] * imaginary;
      }
      y[b * H + h] = 2 * read_out + D[h] * input;
    }
  }
}

}  // namespace

#define MEMRL_EPISODE_CONVOLUTION(S, SUFFIX)                                                                  \
  extern "C" void memrl_episode_convolution_forward_##SUFFIX(int64_t threads, int64_t B, int64_t T, int64_t H, \
                                                             const S* u, const S* kernel, const int64_t* start, \
                                                             S* y) {                                          \
    forward<S>(threads, B, T, H, u, kernel, start, y);                                                        \
  }                                                                                                           \
  extern "C" void memrl_episode_convolution_backward_##SUFFIX(int64_t threads, int64_t B, int64_t T, int64_t H, \
                                                              const S* u, const S* kernel,                     \
                                                              const int64_t* start, const S* grad_y,           \
                                                              S* grad_u, S* grad_kernel) {                     \
    backward<S>(threads, B, T, H, u, kernel, start, grad_y, grad_u, grad_kernel);                            \
  }

#define MEMRL_S4_STEP(S, SUFFIX)                                                                             \
  extern "C" void memrl_s4_step_##SUFFIX(int64_t B, int64_t H, int64_t M, const S* log_neg_real, const S* imag, \
                                         const S* log_step, const S* C, const S* D, const S* u, const S* keep,  \
                                         const S* state_in, S* state_out, S* y) {                               \
    step<S>(B, H, M, log_neg_real, imag, log_step, C, D, u, keep, state_in, state_out, y);                     \
  }

MEMRL_EPISODE_CONVOLUTION(float, f32)
MEMRL_EPISODE_CONVOLUTION(double, f64)
MEMRL_S4_STEP(float, f32)
MEMRL_S4_STEP(double, f64)
