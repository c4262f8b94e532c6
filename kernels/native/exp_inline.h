// exp_inline, shared by the kernels of this folder (kernels/native/__init__.py hashes every header into the names
// of the compiled libraries, so a change here rebuilds them).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace memrl {

// exp(x) for float32 in plain arithmetic, so that it inlines into the vectorised loops (several times faster
// there than a call to the vector math library): x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for
// exactness), exp(r) by a degree-6 polynomial (Cephes' expf coefficients, about 1 ulp), 2^n built in the
// exponent bits. x is clamped to [-87, 88], where 2^n stays a normal float: exp(-87) ~ 1.6e-38 stands for
// anything smaller (a decay that small has dropped the state as surely as zero).
inline float exp_inline(float x) {
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float result = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return result * scale;
}

inline double exp_inline(double x) { return std::exp(x); }

}  // namespace memrl
