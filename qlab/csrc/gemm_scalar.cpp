// The portable path: the definition of the int8 matrix product, written as plainly as possible.
//
//   acc[m, n] = bias[n] + sum_k (A[m, k] - za) * (B[k, n] - zb)
//
// Each product fits in int32 (|(a - za) * (b - zb)| <= 255 * 255), and the sum is
// computed modulo 2^32 like every SIMD path (no overflow below K = 33025).
// No packing, no blocking: any strides work. The SIMD paths must agree with it bit for bit.
#include "qlab_kernels.h"
#include "requant.h"

namespace qlab {

void gemm_scalar(const Task& t, const Epilogue& e) {
  const MatA& a = t.a;
  const MatB& b = t.b;
  for (int64_t m = t.m0; m < t.m1; ++m) {
    const uint8_t* arow = a.data + m * a.rs;
    for (int64_t n = t.n0; n < t.n1; ++n) {
      const int8_t* bcol = b.data + n * b.ns;
      uint32_t acc = 0;  // unsigned: wraps modulo 2^32 without undefined behaviour
      for (int64_t k = 0; k < t.K; ++k) {
        const uint8_t raw = arow[k * a.cs];
        const int32_t av = a.is_signed ? static_cast<int32_t>(static_cast<int8_t>(raw)) : static_cast<int32_t>(raw);
        const int32_t bv = static_cast<int32_t>(bcol[k * b.ks]);
        acc += static_cast<uint32_t>((av - a.zp) * (bv - b.zp));
      }
      int32_t total = static_cast<int32_t>(acc);
      if (e.bias) total = wrap_add(total, e.bias[n]);
      epilogue_one(total, n, e, t.out, m * t.ldc + n);
    }
  }
}

}  // namespace qlab
