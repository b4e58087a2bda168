// One row of the fused int8 attention's softmax -> uint8 probability codes of scale p_scale (1/255 unless the
// caller calibrated a finer one; pinv = float32(1 / p_scale), codes clamp at 255).
//
// The definition is qlab/kernels/attention_reference.py (softmax_u8) and qlab/intonly.py (i_softmax); this file
// computes the same numbers. The float variant is written so that no instruction set, vector width or thread
// count can change a bit: exp is a fixed sequence of float32 operations, its Horner steps and range reduction
// fused multiply-adds (one rounding each: std::fma in the portable loop, vfmadd in the vector ones; the build
// forbids the compiler's own contraction elsewhere, -ffp-contract=off), and the row sum runs in 16 lanes folded
// 8-4-2-1, whatever the machine.
// Three loops compute it: portable, AVX2 (two 8-lane registers hold the 16 lanes) and AVX-512 (one register);
// each lane sees the same rounded float32 operations in the same order, so all three give the same bits. (Where
// an instruction does exactly what two did, the AVX-512 loop uses it: exp16 and codes16 say which.)
// The vector loops work on several rows side by side (AVX2 2, AVX-512 4): one row alone is a chain of dependent
// steps (its maximum, then its sums, then their reciprocal, then its codes) that keeps the core waiting.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "qlab_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace qlab {

namespace {

constexpr float kExpFlush = -87.0f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187e-06f;
// 1/6!, 1/5!, ..., 1/0!, rounded to float32 as the reference's torch.tensor(1.0 / math.factorial(i)) is
constexpr float kPoly[7] = {static_cast<float>(1.0 / 720.0),
                            static_cast<float>(1.0 / 120.0),
                            static_cast<float>(1.0 / 24.0),
                            static_cast<float>(1.0 / 6.0),
                            static_cast<float>(1.0 / 2.0),
                            1.0f,
                            1.0f};

inline float pow2(int n) {  // 2^n for -126 <= n <= 127, from its exponent bits
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

float exp_f32(float x) {
  if (!(x >= kExpFlush)) return 0.0f;
  const float n = std::nearbyint(x * kLog2e);
  const float r = std::fma(-n, kLn2Lo, std::fma(-n, kLn2Hi, x));
  float p = kPoly[0];
  for (int i = 1; i < 7; ++i) p = std::fma(p, r, kPoly[i]);
  return p * pow2(static_cast<int>(n));
}

namespace {
// the 16 lane sums folded 8-4-2-1, then the row's reciprocal (0 for an all-masked row)
inline float fold_inverse(float* lanes) {
  for (int width = 8; width >= 1; width /= 2) {
    for (int i = 0; i < width; ++i) lanes[i] = lanes[i] + lanes[i + width];
  }
  return lanes[0] > 0.0f ? 1.0f / lanes[0] : 0.0f;
}

inline uint8_t code_of(float e, float inv, float pinv) {
  float r = std::nearbyint((e * inv) * pinv);
  r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
  return static_cast<uint8_t>(r);
}

void softmax_row_scalar(const float* logits, int64_t S, float pinv, float* e, uint8_t* out) {
  float m = -INFINITY;
  for (int64_t j = 0; j < S; ++j) m = logits[j] > m ? logits[j] : m;
  if (!std::isfinite(m)) m = 0.0f;
  float lanes[16] = {0.0f};
  for (int64_t j = 0; j < S; ++j) {
    e[j] = exp_f32(logits[j] - m);
    lanes[j % 16] = lanes[j % 16] + e[j];
  }
  const float inv = fold_inverse(lanes);
  for (int64_t j = 0; j < S; ++j) out[j] = code_of(e[j], inv, pinv);
}
}  // namespace

void softmax_rows_u8_scalar(const float* logits, int64_t rows, int64_t S, float pinv, float* e, uint8_t* out) {
  for (int64_t i = 0; i < rows; ++i) softmax_row_scalar(logits + i * S, S, pinv, e, out + i * S);
}

#if defined(__x86_64__) || defined(__i386__)

namespace {
// exp_f32 on 8 / 16 lanes: the same float32 operations, lane by lane
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  // x is not masked: whatever a flushed lane computes (NaN, inf) is zeroed at the end
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kExpFlush), _CMP_GE_OQ);
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x));
  __m256 p = _mm256_set1_ps(kPoly[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kPoly[i]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), keep);
}

// The same operations with fewer instructions, each giving the same bits: n rounded once by a conversion with embedded
// round-to-nearest-even (|x log2 e| < 2^31), and p 2^n by vscalefps (exact, as p times the float 2^n is).
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFlush), _CMP_GE_OQ);
  const __m512 n = _mm512_cvtepi32_ps(_mm512_cvt_roundps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x));
  __m512 p = _mm512_set1_ps(kPoly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kPoly[i]));
  return _mm512_maskz_scalef_ps(keep, p, n);
}
// codes of 16 probabilities: round((e · inv) · pinv), clamped to [0, 255]. v = (e · inv) · pinv >= 0, so the
// unsigned saturating narrowing is the clamp (v >= 2^31 converts to 0x80000000, which also saturates to 255).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m128i codes16(__m512 e, __m512 inv, __m512 pinv) {
  return _mm512_cvtusepi32_epi8(_mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_mul_ps(e, inv), pinv),
                                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// NR rows at once (as the AVX-512 loop below, which says why)
template <int NR>
__attribute__((target("avx2,fma"))) inline void softmax_rows_avx2(const float* logits, int64_t S, float pinv, float* e,
                                                                  uint8_t* out) {
  // The rows' maxima, 8 lanes at a time (exact in any order; vmaxps returns its second operand when the first is
  // NaN, so NaN logits are skipped as the scalar loop skips them; a zero's sign cannot change x - m)
  __m256 vm[NR], lo[NR], hi[NR];  // lo, hi: lanes 0-7 and 8-15 of each row's sums
  for (int r = 0; r < NR; ++r) vm[r] = _mm256_set1_ps(-INFINITY);
  int64_t k = 0;
  for (; k + 8 <= S; k += 8) {
    for (int r = 0; r < NR; ++r) vm[r] = _mm256_max_ps(_mm256_loadu_ps(logits + r * S + k), vm[r]);
  }
  for (int r = 0; r < NR; ++r) {
    float lanes8[8];
    _mm256_storeu_ps(lanes8, vm[r]);
    float m = -INFINITY;
    for (float v : lanes8) m = v > m ? v : m;
    for (int64_t j = k; j < S; ++j) m = logits[r * S + j] > m ? logits[r * S + j] : m;
    if (!std::isfinite(m)) m = 0.0f;
    vm[r] = _mm256_set1_ps(m);
    lo[r] = hi[r] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < S; j += 16) {
    const bool full = S - j >= 16;
    for (int r = 0; r < NR; ++r) {
      const float* x = logits + r * S + j;
      float tail[16];
      if (!full) {  // -inf past the row: exp gives 0, adding +0 to a lane sum (>= +0) changes no bit
        for (int i = 0; i < 16; ++i) tail[i] = j + i < S ? x[i] : -INFINITY;
        x = tail;
      }
      const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x), vm[r]));
      const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + 8), vm[r]));
      lo[r] = _mm256_add_ps(lo[r], e0);
      hi[r] = _mm256_add_ps(hi[r], e1);
      float* er = e + r * S + j;
      if (full) {
        _mm256_storeu_ps(er, e0);
        _mm256_storeu_ps(er + 8, e1);
      } else {
        float t[16];
        _mm256_storeu_ps(t, e0);
        _mm256_storeu_ps(t + 8, e1);
        for (int64_t i = 0; j + i < S; ++i) er[i] = t[i];
      }
    }
  }
  const __m256 c255 = _mm256_set1_ps(255.0f), vp = _mm256_set1_ps(pinv);
  for (int r = 0; r < NR; ++r) {
    float lanes[16];
    _mm256_storeu_ps(lanes, lo[r]);
    _mm256_storeu_ps(lanes + 8, hi[r]);
    const float inv_row = fold_inverse(lanes);
    const __m256 inv = _mm256_set1_ps(inv_row);
    const float* er = e + r * S;
    uint8_t* o = out + r * S;
    int64_t j = 0;
    for (; j + 8 <= S; j += 8) {
      __m256 c = _mm256_round_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(er + j), inv), vp),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      c = _mm256_min_ps(_mm256_max_ps(c, _mm256_setzero_ps()), c255);
      const __m256i v = _mm256_cvtps_epi32(c);
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + j), _mm_packus_epi16(w, w));
    }
    for (; j < S; ++j) o[j] = code_of(er[j], inv_row, pinv);
  }
}

// NR rows at once: each row's steps are the one-row loop's, in the same order; the rows' independent chains (the
// maximum, the lane sums, the reciprocal) overlap instead of waiting on each other.
template <int NR>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void softmax_rows_avx512(const float* logits, int64_t S,
                                                                                     float pinv, float* e,
                                                                                     uint8_t* out) {
  // Whole registers in the loops, a mask only for the last partial one: masked stores are slow on some CPUs
  const int64_t full = S / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (S - full)) - 1);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 vmax[NR], acc[NR], vm[NR], inv[NR];
  for (int r = 0; r < NR; ++r) vmax[r] = ninf;
  for (int64_t j = 0; j < full; j += 16) {
    for (int r = 0; r < NR; ++r) vmax[r] = _mm512_max_ps(vmax[r], _mm512_loadu_ps(logits + r * S + j));
  }
  for (int r = 0; r < NR; ++r) {
    if (tail) vmax[r] = _mm512_max_ps(vmax[r], _mm512_mask_loadu_ps(ninf, tail, logits + r * S + full));
    float m = _mm512_reduce_max_ps(vmax[r]);
    if (!std::isfinite(m)) m = 0.0f;
    vm[r] = _mm512_set1_ps(m);
    acc[r] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < full; j += 16) {  // the lane sums add in order of j
    for (int r = 0; r < NR; ++r) {
      const __m512 ej = exp16(_mm512_sub_ps(_mm512_loadu_ps(logits + r * S + j), vm[r]));
      acc[r] = _mm512_add_ps(acc[r], ej);
      _mm512_storeu_ps(e + r * S + j, ej);
    }
  }
  const __m512 vp = _mm512_set1_ps(pinv);
  for (int r = 0; r < NR; ++r) {
    if (tail) {  // -inf past the row: exp gives 0, adding +0 to a lane sum (>= +0) changes no bit
      const __m512 ej = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, tail, logits + r * S + full), vm[r]));
      acc[r] = _mm512_add_ps(acc[r], ej);
      _mm512_mask_storeu_ps(e + r * S + full, tail, ej);
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, acc[r]);
    inv[r] = _mm512_set1_ps(fold_inverse(lanes));
  }
  for (int64_t j = 0; j < full; j += 16) {
    for (int r = 0; r < NR; ++r) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * S + j),
                       codes16(_mm512_loadu_ps(e + r * S + j), inv[r], vp));
    }
  }
  if (tail) {
    for (int r = 0; r < NR; ++r) {
      _mm_mask_storeu_epi8(out + r * S + full, tail,
                           codes16(_mm512_maskz_loadu_ps(tail, e + r * S + full), inv[r], vp));
    }
  }
}
}  // namespace

__attribute__((target("avx2,fma"))) void softmax_rows_u8_avx2(const float* logits, int64_t rows, int64_t S, float pinv,
                                                              float* e, uint8_t* out) {
  int64_t i = 0;
  static_assert(kSoftmaxRowsAvx2 == 2, "the loop below takes rows two at a time");
  for (; i + 2 <= rows; i += 2) softmax_rows_avx2<2>(logits + i * S, S, pinv, e, out + i * S);
  if (i < rows) softmax_rows_avx2<1>(logits + i * S, S, pinv, e, out + i * S);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void softmax_rows_u8_avx512(const float* logits, int64_t rows,
                                                                                 int64_t S, float pinv, float* e,
                                                                                 uint8_t* out) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) softmax_rows_avx512<4>(logits + i * S, S, pinv, e, out + i * S);
  switch (rows - i) {
    case 3: softmax_rows_avx512<3>(logits + i * S, S, pinv, e, out + i * S); break;
    case 2: softmax_rows_avx512<2>(logits + i * S, S, pinv, e, out + i * S); break;
    case 1: softmax_rows_avx512<1>(logits + i * S, S, pinv, e, out + i * S); break;
    default: break;
  }
}

#else

void softmax_rows_u8_avx2(const float* logits, int64_t rows, int64_t S, float pinv, float* e, uint8_t* out) {
  softmax_rows_u8_scalar(logits, rows, S, pinv, e, out);
}
void softmax_rows_u8_avx512(const float* logits, int64_t rows, int64_t S, float pinv, float* e, uint8_t* out) {
  softmax_rows_u8_scalar(logits, rows, S, pinv, e, out);
}

#endif

void isoftmax_row_u8(const int32_t* acc, const uint8_t* keep, int64_t S, const ISoftmax& c, int64_t* e, uint8_t* out) {
  int64_t m = 0;
  bool any = false;
  for (int64_t j = 0; j < S; ++j) {
    if ((!keep || keep[j]) && (!any || acc[j] > m)) {
      m = acc[j];
      any = true;
    }
  }
  int64_t total = 0;
  for (int64_t j = 0; j < S; ++j) {
    if (keep && !keep[j]) {
      e[j] = 0;
      continue;
    }
    const int64_t q = static_cast<int64_t>(acc[j]) - m;  // <= 0
    const int64_t z = (-q) / c.q_ln2;                    // -q >= 0: the floor
    const int64_t qp = q + z * c.q_ln2;
    const int64_t t = qp + c.qb;
    const int64_t ql = t * t + c.qc;
    e[j] = ql >> (z < 62 ? z : 62);
    total += e[j];
  }
  const int64_t div = total > 0 ? total : 1;
  for (int64_t j = 0; j < S; ++j) {
    int64_t num = 255 * e[j] + total / 2;
    int64_t p = num / div;  // num >= 0: the floor
    out[j] = static_cast<uint8_t>(p < 0 ? 0 : (p > 255 ? 255 : p));
  }
}

#if defined(__x86_64__) || defined(__i386__)

namespace {
// lanes j..j+n-1 that are in the row and kept (keep null: all of them)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) inline __mmask8 kept8(const uint8_t* keep, int64_t j,
                                                                                    int64_t n) {
  __mmask8 mk = n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1);
  if (keep) {
    mk = _mm512_mask_test_epi64_mask(mk, _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(mk, keep + j)),
                                     _mm512_set1_epi64(0xFF));
  }
  return mk;
}

// The same integers again, in float64 lanes, where every value the definition makes is below 2^50 (the caller
// checks the row bound 256 S (qb^2 + qc) < 2^50): each float64 multiply, add and fused multiply-add below is exact,
// and the two floors by a row constant need no correction. For integers 0 <= n < 2^50 and 1 <= d, (n + 1/2) / d
// is at least 1/(2d) from any integer while float64's (n + 1/2) * float64(1/d) is within (n/d) 2^-52 < 1/(2d) of
// it: floor(float64((n + 1/2) / d)) = floor(n / d) exactly. z = floor(-q / q_ln2) that way; 2^-z by scalef, exact
// for results >= 1, and the floor of ql 2^-z is ql >> z (z >= 53 leaves nothing of ql < 2^53). Rows side by side,
// as in the float loop.
template <int NR>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) inline void isoftmax_rows_pd(const int32_t* acc,
                                                                                           const uint8_t* keep,
                                                                                           int64_t S, const ISoftmax& c,
                                                                                           double* e, uint8_t* out) {
  __m512d vmh[NR], vt[NR];  // each row's maximum + 1/2, sum of exps
  for (int r = 0; r < NR; ++r) {
    __m512i vmax = _mm512_set1_epi32(INT32_MIN);
    __mmask16 seen = 0;
    for (int64_t j = 0; j < S; j += 16) {
      const int64_t n = S - j;
      __mmask16 mk = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
      if (keep) mk = _mm_mask_test_epi8_mask(mk, _mm_maskz_loadu_epi8(mk, keep + r * S + j), _mm_set1_epi8(-1));
      seen |= mk;
      vmax = _mm512_mask_max_epi32(vmax, mk, vmax, _mm512_maskz_loadu_epi32(mk, acc + r * S + j));
    }
    vmh[r] = _mm512_set1_pd((seen ? static_cast<double>(_mm512_reduce_max_epi32(vmax)) : 0.0) + 0.5);
    vt[r] = _mm512_setzero_pd();
  }
  const __m512d d = _mm512_set1_pd(static_cast<double>(c.q_ln2)), ninv_d = _mm512_set1_pd(-1.0 / c.q_ln2),
                qbh = _mm512_set1_pd(static_cast<double>(c.qb) + 0.5), qc = _mm512_set1_pd(static_cast<double>(c.qc));
  constexpr int kFloor = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC, kCeil = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC;
  for (int64_t j = 0; j < S; j += 8) {
    const int64_t n = S - j;
    const __mmask8 in_row = n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1);
    for (int r = 0; r < NR; ++r) {
      __mmask8 mk = in_row;
      if (keep) mk = _mm_mask_test_epi8_mask(mk, _mm_maskz_loadu_epi8(mk, keep + r * S + j), _mm_set1_epi8(-1));
      // -q + 1/2 = m - acc + 1/2 on kept lanes; -z = ceil((-q + 1/2) (-1 / q_ln2)) = -floor(-q / q_ln2)
      const __m512d nqh = _mm512_sub_pd(vmh[r], _mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(mk, acc + r * S + j)));
      const __m512d nz = _mm512_roundscale_pd(_mm512_mul_pd(nqh, ninv_d), kCeil);
      const __m512d t = _mm512_sub_pd(qbh, _mm512_fmadd_pd(nz, d, nqh));  // qb - (-q - z q_ln2) = q_p + q_b
      const __m512d ql = _mm512_fmadd_pd(t, t, qc);
      const __m512d ej = _mm512_maskz_roundscale_pd(mk, _mm512_scalef_pd(ql, nz), kFloor);
      vt[r] = _mm512_add_pd(vt[r], ej);  // integers below 2^50: exact in any order
      _mm512_mask_storeu_pd(e + r * S + j, in_row, ej);
    }
  }
  // codes: floor((255 e + floor(total / 2)) / max(total, 1)) <= 255 (e <= total), by the same floor
  __m512d numh[NR], inv_div[NR];
  for (int r = 0; r < NR; ++r) {
    const double total = _mm512_reduce_add_pd(vt[r]);
    numh[r] = _mm512_set1_pd(std::floor(total / 2) + 0.5);
    inv_div[r] = _mm512_set1_pd(1.0 / (total > 0 ? total : 1.0));
  }
  const __m512d c255 = _mm512_set1_pd(255.0);
  const int64_t full = S / 8 * 8;
  for (int64_t j = 0; j < full; j += 8) {
    for (int r = 0; r < NR; ++r) {
      const __m512d num = _mm512_fmadd_pd(_mm512_loadu_pd(e + r * S + j), c255, numh[r]);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + r * S + j),
                       _mm256_cvtusepi32_epi8(_mm512_cvttpd_epi32(_mm512_mul_pd(num, inv_div[r]))));
    }
  }
  if (full < S) {
    const __mmask8 tail = static_cast<__mmask8>((1u << (S - full)) - 1);
    for (int r = 0; r < NR; ++r) {
      const __m512d num = _mm512_fmadd_pd(_mm512_maskz_loadu_pd(tail, e + r * S + full), c255, numh[r]);
      _mm_mask_storeu_epi8(out + r * S + full, tail,
                           _mm256_cvtusepi32_epi8(_mm512_cvttpd_epi32(_mm512_mul_pd(num, inv_div[r]))));
    }
  }
}

// The float64 loop on AVX2 (4 lanes): the same exact steps, 2^-z from exponent bits instead of scalef (z clamped to
// 60 first: ql 2^-z < 1 from z = 53 on, so the floor is 0 either way). Past the row and on masked keys a lane
// computes on acc = 0 and is then zeroed.
template <int NR>
__attribute__((target("avx2"))) inline void isoftmax_rows_pd_avx2(const int32_t* acc, const uint8_t* keep, int64_t S,
                                                                  const ISoftmax& c, double* e, uint8_t* out) {
  const int64_t full = S / 4 * 4, ldE = full < S ? full + 4 : full;  // e: rows of whole vectors
  __m256d vmh[NR], vt[NR];
  for (int r = 0; r < NR; ++r) {  // a row's maximum over kept keys, 8 lanes at a time
    const int32_t* a = acc + r * S;
    const uint8_t* kr = keep ? keep + r * S : nullptr;
    __m256i vmax = _mm256_set1_epi32(INT32_MIN), seen = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 8 <= S; j += 8) {
      __m256i kept = _mm256_set1_epi32(-1);
      if (kr) {
        int64_t k8;
        std::memcpy(&k8, kr + j, 8);
        kept = _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(k8)), _mm256_setzero_si256());
      }
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + j));
      vmax = _mm256_blendv_epi8(vmax, _mm256_max_epi32(vmax, x), kept);
      seen = _mm256_or_si256(seen, kept);
    }
    int32_t lanes[8];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), vmax);
    bool any = !_mm256_testz_si256(seen, seen);
    int32_t m = INT32_MIN;
    for (int32_t x : lanes) m = x > m ? x : m;
    for (; j < S; ++j) {
      if (!kr || kr[j]) {
        m = a[j] > m ? a[j] : m;
        any = true;
      }
    }
    vmh[r] = _mm256_set1_pd((any ? static_cast<double>(m) : 0.0) + 0.5);
    vt[r] = _mm256_setzero_pd();
  }
  const __m256d d = _mm256_set1_pd(static_cast<double>(c.q_ln2)), ninv_d = _mm256_set1_pd(-1.0 / c.q_ln2),
                qbh = _mm256_set1_pd(static_cast<double>(c.qb) + 0.5), qc = _mm256_set1_pd(static_cast<double>(c.qc)),
                z_max = _mm256_set1_pd(-60.0);
  const __m128i bias = _mm_set1_epi32(1023);
  constexpr int kFloor = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC, kCeil = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC;
  for (int64_t j = 0; j < S; j += 4) {
    for (int r = 0; r < NR; ++r) {
      const int32_t* a4 = acc + r * S + j;
      int32_t kw = 0x01010101, ta[4] = {0, 0, 0, 0};
      if (j < full) {
        if (keep) std::memcpy(&kw, keep + r * S + j, 4);
      } else {  // the last partial vector: lanes past the row are masked
        uint8_t tk[4] = {0, 0, 0, 0};
        for (int64_t i = 0; j + i < S; ++i) {
          ta[i] = a4[i];
          tk[i] = keep ? keep[r * S + j + i] : 1;
        }
        a4 = ta;
        std::memcpy(&kw, tk, 4);
      }
      // kept lanes: all ones (a keep byte is 0 or 1)
      const __m256d kept =
          _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_cvtepu8_epi64(_mm_cvtsi32_si128(kw)), _mm256_setzero_si256()));
      const __m256d nqh =
          _mm256_sub_pd(vmh[r], _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a4))));
      const __m256d nz = _mm256_round_pd(_mm256_mul_pd(nqh, ninv_d), kCeil);  // -z
      const __m256d t = _mm256_sub_pd(qbh, _mm256_add_pd(nqh, _mm256_mul_pd(nz, d)));
      const __m256d ql = _mm256_add_pd(_mm256_mul_pd(t, t), qc);
      const __m128i ez = _mm_add_epi32(_mm256_cvtpd_epi32(_mm256_max_pd(nz, z_max)), bias);  // 1023 - min(z, 60)
      const __m256d p2 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepi32_epi64(ez), 52));
      const __m256d ej = _mm256_and_pd(_mm256_round_pd(_mm256_mul_pd(ql, p2), kFloor), kept);
      vt[r] = _mm256_add_pd(vt[r], ej);  // integers below 2^50: exact in any order
      _mm256_storeu_pd(e + r * ldE + j, ej);
    }
  }
  __m256d numh[NR], inv_div[NR];
  for (int r = 0; r < NR; ++r) {
    double t4[4];
    _mm256_storeu_pd(t4, vt[r]);
    const double total = (t4[0] + t4[1]) + (t4[2] + t4[3]);
    numh[r] = _mm256_set1_pd(std::floor(total / 2) + 0.5);
    inv_div[r] = _mm256_set1_pd(1.0 / (total > 0 ? total : 1.0));
  }
  const __m256d c255 = _mm256_set1_pd(255.0);
  for (int64_t j = 0; j < S; j += 4) {
    for (int r = 0; r < NR; ++r) {
      const __m256d num = _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(e + r * ldE + j), c255), numh[r]);
      const __m128i p = _mm256_cvttpd_epi32(_mm256_mul_pd(num, inv_div[r]));  // in [0, 255]
      const __m128i b = _mm_packus_epi16(_mm_packs_epi32(p, p), _mm_setzero_si128());
      const int32_t w = _mm_cvtsi128_si32(b);
      std::memcpy(out + r * S + j, &w, static_cast<size_t>(std::min<int64_t>(4, S - j)));
    }
  }
}
}  // namespace

// The integer softmax on 8 int64 lanes (AVX-512F/DQ): the same integers as isoftmax_row_u8 (sums of integers do not
// depend on their order). The two floors by a per-row constant are a float64 estimate and one exact correction: the
// quotients here (z < 2^33, codes <= 256) leave the estimate within one of the floor.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void isoftmax_row_u8_avx512(const int32_t* acc,
                                                                                          const uint8_t* keep,
                                                                                          int64_t S, const ISoftmax& c,
                                                                                          int64_t* e, uint8_t* out) {
  __m512i vmax = _mm512_set1_epi64(INT64_MIN);
  bool any = false;
  for (int64_t j = 0; j < S; j += 8) {
    const __mmask8 mk = kept8(keep, j, S - j);
    any = any || mk != 0;
    vmax = _mm512_mask_max_epi64(vmax, mk, vmax, _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(mk, acc + j)));
  }
  const int64_t m = any ? _mm512_reduce_max_epi64(vmax) : 0;
  const __m512i vm = _mm512_set1_epi64(m), d = _mm512_set1_epi64(c.q_ln2), qb = _mm512_set1_epi64(c.qb),
                qc = _mm512_set1_epi64(c.qc), one = _mm512_set1_epi64(1), zero = _mm512_setzero_si512();
  const __m512d inv_d = _mm512_set1_pd(1.0 / static_cast<double>(c.q_ln2));
  __m512i vtotal = zero;
  for (int64_t j = 0; j < S; j += 8) {
    const int64_t n = S - j;
    const __mmask8 in_row = n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1), mk = kept8(keep, j, n);
    // -q = m - acc >= 0 on kept lanes; z = floor(-q / q_ln2), r = -q - z q_ln2 in [0, q_ln2): q_p = q + z q_ln2 = -r
    const __m512i nq = _mm512_maskz_sub_epi64(mk, vm, _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(mk, acc + j)));
    __m512i z = _mm512_cvttpd_epi64(_mm512_mul_pd(_mm512_cvtepi64_pd(nq), inv_d));
    __m512i r = _mm512_sub_epi64(nq, _mm512_mullo_epi64(z, d));
    const __mmask8 low = _mm512_cmplt_epi64_mask(r, zero);
    z = _mm512_mask_sub_epi64(z, low, z, one);
    r = _mm512_mask_add_epi64(r, low, r, d);
    const __mmask8 high = _mm512_cmpge_epi64_mask(r, d);
    z = _mm512_mask_add_epi64(z, high, z, one);
    r = _mm512_mask_sub_epi64(r, high, r, d);
    const __m512i t = _mm512_sub_epi64(qb, r);  // q_p + q_b
    const __m512i ql = _mm512_add_epi64(_mm512_mullo_epi64(t, t), qc);
    const __m512i ej = _mm512_maskz_srav_epi64(mk, ql, _mm512_min_epi64(z, _mm512_set1_epi64(62)));
    vtotal = _mm512_add_epi64(vtotal, ej);
    _mm512_mask_storeu_epi64(e + j, in_row, ej);
  }
  const int64_t total = _mm512_reduce_add_epi64(vtotal), div = total > 0 ? total : 1;
  const __m512i vdiv = _mm512_set1_epi64(div), half = _mm512_set1_epi64(total / 2), c255 = _mm512_set1_epi64(255);
  const __m512d inv_div = _mm512_set1_pd(1.0 / static_cast<double>(div));
  for (int64_t j = 0; j < S; j += 8) {
    const int64_t n = S - j;
    const __mmask8 in_row = n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1);
    const __m512i num = _mm512_add_epi64(_mm512_mullo_epi64(_mm512_maskz_loadu_epi64(in_row, e + j), c255), half);
    __m512i p = _mm512_cvttpd_epi64(_mm512_mul_pd(_mm512_cvtepi64_pd(num), inv_div));
    __m512i r = _mm512_sub_epi64(num, _mm512_mullo_epi64(p, vdiv));
    const __mmask8 low = _mm512_cmplt_epi64_mask(r, zero);
    p = _mm512_mask_sub_epi64(p, low, p, one);
    r = _mm512_mask_add_epi64(r, low, r, vdiv);
    p = _mm512_mask_add_epi64(p, _mm512_cmpge_epi64_mask(r, vdiv), p, one);
    _mm_mask_storeu_epi8(out + j, in_row, _mm512_cvtepi64_epi8(_mm512_min_epi64(p, c255)));
  }
}

__attribute__((target("avx2"))) void isoftmax_rows_u8_avx2_f64(const int32_t* acc, const uint8_t* keep, int64_t rows,
                                                               int64_t S, const ISoftmax& c, int64_t* e, uint8_t* out) {
  double* ed = reinterpret_cast<double*>(e);  // the scratch, read and written only by vector loads and stores
  int64_t i = 0;
  for (; i + 2 <= rows; i += 2) {
    isoftmax_rows_pd_avx2<2>(acc + i * S, keep ? keep + i * S : nullptr, S, c, ed, out + i * S);
  }
  if (i < rows) isoftmax_rows_pd_avx2<1>(acc + i * S, keep ? keep + i * S : nullptr, S, c, ed, out + i * S);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void isoftmax_rows_u8_avx512_f64(
    const int32_t* acc, const uint8_t* keep, int64_t rows, int64_t S, const ISoftmax& c, int64_t* e, uint8_t* out) {
  double* ed = reinterpret_cast<double*>(e);  // the scratch, read and written only by vector loads and stores
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) isoftmax_rows_pd<4>(acc + i * S, keep ? keep + i * S : nullptr, S, c, ed, out + i * S);
  switch (rows - i) {
    case 3: isoftmax_rows_pd<3>(acc + i * S, keep ? keep + i * S : nullptr, S, c, ed, out + i * S); break;
    case 2: isoftmax_rows_pd<2>(acc + i * S, keep ? keep + i * S : nullptr, S, c, ed, out + i * S); break;
    case 1: isoftmax_rows_pd<1>(acc + i * S, keep ? keep + i * S : nullptr, S, c, ed, out + i * S); break;
    default: break;
  }
}

#else

void isoftmax_row_u8_avx512(const int32_t* acc, const uint8_t* keep, int64_t S, const ISoftmax& c, int64_t* e,
                            uint8_t* out) {
  isoftmax_row_u8(acc, keep, S, c, e, out);
}
void isoftmax_rows_u8_avx512_f64(const int32_t* acc, const uint8_t* keep, int64_t rows, int64_t S, const ISoftmax& c,
                                 int64_t* e, uint8_t* out) {
  for (int64_t i = 0; i < rows; ++i) isoftmax_row_u8(acc + i * S, keep ? keep + i * S : nullptr, S, c, e, out + i * S);
}
void isoftmax_rows_u8_avx2_f64(const int32_t* acc, const uint8_t* keep, int64_t rows, int64_t S, const ISoftmax& c,
                               int64_t* e, uint8_t* out) {
  isoftmax_rows_u8_avx512_f64(acc, keep, rows, S, c, e, out);
}

#endif

}  // namespace qlab
