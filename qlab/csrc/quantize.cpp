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

// ---------------------------------------------------------------------------------------------
// A 256-entry table on 8-bit codes (int8_linear_packed's epilogue, e.g. GELU between two quantizations):
// o[r * ld + c] = table[o[r * ld + c] ^ flip] for a block of rows x cols bytes, in place. Two loops, the same bytes:
// portable, and AVX-512 VBMI (vpermi2b looks 64 codes up in a 128-entry half of the table; the top bit picks the half).

void table_rows_scalar(uint8_t* o, int64_t ld, int64_t rows, int64_t cols, const uint8_t* table, uint8_t flip) {
  uint8_t t[256];  // a local copy: the stores to o cannot alias it, so it stays where the loads find it
  for (int i = 0; i < 256; ++i) t[i] = table[i];
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* p = o + r * ld;
    for (int64_t c = 0; c < cols; ++c) p[c] = t[p[c] ^ flip];
  }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void table_rows_vbmi(uint8_t* o, int64_t ld, int64_t rows,
                                                                            int64_t cols, const uint8_t* table,
                                                                            uint8_t flip) {
  const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
  const __m512i f = _mm512_set1_epi8(static_cast<char>(flip));
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* p = o + r * ld;
    for (int64_t c = 0; c < cols; c += 64) {
      const int64_t left = cols - c;
      const __mmask64 mk = left >= 64 ? ~__mmask64{0} : ((__mmask64{1} << left) - 1);
      const __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, p + c), f);
      const __m512i lo = _mm512_permutex2var_epi8(t0, v, t1);  // table[v & 127]
      const __m512i hi = _mm512_permutex2var_epi8(t2, v, t3);  // table[128 + (v & 127)]
      _mm512_mask_storeu_epi8(p + c, mk, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi));
    }
  }
}
#else
void table_rows_vbmi(uint8_t* o, int64_t ld, int64_t rows, int64_t cols, const uint8_t* table, uint8_t flip) {
  table_rows_scalar(o, ld, rows, cols, table, flip);
}
#endif

}  // namespace qlab
