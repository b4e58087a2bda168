// float32 -> uint8 / int8 codes, per tensor: the quantize between two int8 ops.
//
//   q = clamp(nearbyint(x * inv) + zp, lo, hi),   inv = float32(1 / scale)
//
// all in float32, rounding half to even: the arithmetic of PyTorch's quantize_per_tensor on
// x86 (and of qlab.quantize), bit for bit, in one pass. NaN gives lo (PyTorch leaves it
// unspecified). Three loops with the same arithmetic: AVX-512, AVX2 and portable.
// Taught in notebooks/08-vit-attention-int8.ipynb (fix 4).
#include <cmath>
#include <cstdint>

#include "qlab_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace qlab {

namespace {
inline float quantize_one(float x, const QuantizeArgs& q) {
  float r = std::nearbyint(x * q.inv) + q.zp;
  r = r >= q.lo ? r : q.lo;  // NaN compares false: it becomes lo, as in the SIMD loops
  r = r <= q.hi ? r : q.hi;
  return r;
}
}  // namespace

void quantize_scalar(const float* x, int64_t n, const QuantizeArgs& q, void* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t v = static_cast<int32_t>(quantize_one(x[i], q));
    if (q.is_signed) {
      static_cast<int8_t*>(out)[i] = static_cast<int8_t>(v);
    } else {
      static_cast<uint8_t*>(out)[i] = static_cast<uint8_t>(v);
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)

__attribute__((target("avx2,fma"))) void quantize_avx2(const float* x, int64_t n, const QuantizeArgs& q, void* out) {
  const __m256 inv = _mm256_set1_ps(q.inv), zp = _mm256_set1_ps(q.zp);
  const __m256 lo = _mm256_set1_ps(q.lo), hi = _mm256_set1_ps(q.hi);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r =
        _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_add_ps(r, zp);
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);  // maxps returns its second operand for NaN: lo
    const __m256i v = _mm256_cvtps_epi32(r);      // exact: an integer in [lo, hi]
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));  // exact, in range
    const __m128i b = q.is_signed ? _mm_packs_epi16(w, w) : _mm_packus_epi16(w, w);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(out) + i), b);
  }
  quantize_scalar(x + i, n - i, q, static_cast<uint8_t*>(out) + i);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void quantize_avx512(const float* x, int64_t n,
                                                                          const QuantizeArgs& q, void* out) {
  const __m512 inv = _mm512_set1_ps(q.inv), zp = _mm512_set1_ps(q.zp);
  const __m512 lo = _mm512_set1_ps(q.lo), hi = _mm512_set1_ps(q.hi);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + i), inv),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_add_ps(r, zp);
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);                    // maxps returns its second operand for NaN: lo
    const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r));  // in range: truncation is exact
    _mm_mask_storeu_epi8(static_cast<uint8_t*>(out) + i, mk, b);
  }
}

#else

void quantize_avx2(const float* x, int64_t n, const QuantizeArgs& q, void* out) { quantize_scalar(x, n, q, out); }
void quantize_avx512(const float* x, int64_t n, const QuantizeArgs& q, void* out) { quantize_scalar(x, n, q, out); }

#endif

}  // namespace qlab
