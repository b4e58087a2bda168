// The AVX2 path: int16 products with vpmaddwd, which never saturates.
//
// AVX2 has no uint8 x int8 -> int32 dot product. The usual trick, vpmaddubsw,
// adds two uint8*int8 products into an *int16* and saturates when
// |a0*b0 + a1*b1| > 32767 (e.g. 255*127 + 255*127 = 64770): the reason for
// PyTorch's reduce_range. qlab avoids it by widening to int16 while packing:
//
//   packed A = a - za  in [-255, 255]     packed B = b - zb  in [-255, 255]
//   vpmaddwd: (a0-za)(b0-zb) + (a1-za)(b1-zb)   exact in int32 (|.| <= 130050)
//
// so the accumulator is sum_k (a - za)(b - zb) directly, with no zero-point
// correction terms. Twice the bytes of the uint8 trick, half its multiplies per
// instruction, but exact for every input: this path never saturates.
//
// Blocking: a 6 x 16 micro-tile (12 ymm accumulators), finished in registers.
// Packed B panel: [k/2][16 columns][2] int16, so one 32-byte load holds 8 columns x 2 k.
// A prepacked weight (pack_linear_weight, the VNNI layout) is not copied: tile_packed widens it in registers.
// On a prepacked weight, A whose codes are all below 128 takes tile_bytes<Dot7> instead: vpmaddubsw, which cannot
// saturate on 7-bit codes (PyTorch's reduce_range), twice the products per instruction.
//
// The AVX-VNNI path (gemm_avx_vnni) is the same byte tile with DotVnni: one VEX vpdpbusd (8 lanes x 4 uint8*int8
// products into int32, exact like its AVX-512 form) for every A, int8 A shifted to uint8 by flipping its top bit.
// All SIMD functions carry __attribute__((target("avx2,fma"))): the file
// compiles with generic flags and these functions only run when the CPU has AVX2 (vpdpbusd is written as inline
// assembly, so no function needs the compiler's avxvnni target; ops.cpp calls it only when CPUID reports AVX-VNNI).
#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <vector>

#include "qlab_kernels.h"
#include "requant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define QLAB_AVX2 __attribute__((target("avx2,fma")))
#define QLAB_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

namespace qlab {
namespace {

constexpr int MR = 6;   // rows per micro-tile
constexpr int NR = 16;  // columns per micro-tile (= kPanelAvx2)
static_assert(NR == kPanelAvx2, "panel width");

// ---------------------------------------------------------------------------------------------
// Packing: widen to int16 and subtract the zero points

// Rows [m0, m0 + rows) of A as int16 (a - za), row length kp2 (K rounded up to even, zero padded).
QLAB_AVX2 void pack_a(const MatA& a, int64_t m0, int64_t rows, int64_t K, int64_t kp2, int16_t* dst) {
  const __m256i za = _mm256_set1_epi16(static_cast<int16_t>(a.zp));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = a.data + (m0 + r) * a.rs;
    int16_t* d = dst + r * kp2;
    int64_t k = 0;
    if (a.cs == 1) {
      for (; k + 16 <= K; k += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
        const __m256i w = a.is_signed ? _mm256_cvtepi8_epi16(v) : _mm256_cvtepu8_epi16(v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), _mm256_sub_epi16(w, za));
      }
    }
    for (; k < K; ++k) {
      const uint8_t raw = src[k * a.cs];
      const int32_t v = a.is_signed ? static_cast<int32_t>(static_cast<int8_t>(raw)) : static_cast<int32_t>(raw);
      d[k] = static_cast<int16_t>(v - a.zp);
    }
    for (; k < kp2; ++k) d[k] = 0;
  }
}

// Transpose an 8 x 8 matrix of 32-bit words held in 8 registers (row i in r[i]).
QLAB_AVX2_INLINE void transpose8x8(__m256i* r) {
  __m256i a[8], b[8];
  for (int i = 0; i < 8; i += 2) {
    a[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {
    b[g + 0] = _mm256_unpacklo_epi64(a[g], a[g + 2]);
    b[g + 1] = _mm256_unpackhi_epi64(a[g], a[g + 2]);
    b[g + 2] = _mm256_unpacklo_epi64(a[g + 1], a[g + 3]);
    b[g + 3] = _mm256_unpackhi_epi64(a[g + 1], a[g + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2x128_si256(b[j], b[4 + j], 0x20);
    r[4 + j] = _mm256_permute2x128_si256(b[j], b[4 + j], 0x31);
  }
}

// Columns [n0, n0 + w) of B as int16 (b - zb) in the layout [k/2][NR][2]; zeros past K and w.
QLAB_AVX2 void pack_b(const MatB& b, int64_t n0, int64_t w, int64_t K, int64_t kp2, int16_t* dst) {
  const __m256i zb = _mm256_set1_epi16(static_cast<int16_t>(b.zp));
  if (b.ks == 1) {
    // B^T is row-major (keys, a Linear weight): each column's k-pairs are 32-bit words once
    // widened; 8 columns x 8 pairs form an 8 x 8 word matrix to transpose.
    alignas(32) int8_t tmp[16];
    for (int64_t g = 0; g < NR; g += 8) {
      for (int64_t k0 = 0; k0 < kp2; k0 += 16) {
        __m256i r[8];
        for (int64_t j = 0; j < 8; ++j) {
          if (g + j >= w) {
            r[j] = _mm256_setzero_si256();
            continue;
          }
          const int8_t* src = b.data + (n0 + g + j) * b.ns + k0;
          __m128i v;
          if (k0 + 16 <= K) {
            v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
          } else {  // the last k: copy what exists, the rest contributes b - zb := 0 below
            std::memset(tmp, 0, sizeof(tmp));
            std::memcpy(tmp, src, static_cast<size_t>(K - k0));
            v = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
          }
          __m256i x = _mm256_sub_epi16(_mm256_cvtepi8_epi16(v), zb);
          if (k0 + 16 > K) {  // zero the padding after subtracting the zero point
            alignas(32) int16_t keep[16];
            for (int64_t t = 0; t < 16; ++t) keep[t] = k0 + t < K ? -1 : 0;
            x = _mm256_and_si256(x, _mm256_load_si256(reinterpret_cast<const __m256i*>(keep)));
          }
          r[j] = x;
        }
        transpose8x8(r);  // r[i] = k-pair k0/2 + i of the 8 columns
        const int64_t steps = std::min<int64_t>(8, (kp2 - k0) / 2);
        for (int64_t i = 0; i < steps; ++i) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + ((k0 / 2 + i) * NR + g) * 2), r[i]);
        }
      }
    }
  } else if (b.ns == 1 && w == NR) {
    // B is row-major (values for attn.v): interleave two rows, 16 columns at a time.
    for (int64_t k2 = 0; k2 < kp2 / 2; ++k2) {
      __m256i r[2];
      for (int t = 0; t < 2; ++t) {
        const int64_t k = 2 * k2 + t;
        r[t] =
            k < K ? _mm256_sub_epi16(
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.data + k * b.ks + n0))),
                        zb)
                  : _mm256_setzero_si256();
      }
      const __m256i lo = _mm256_unpacklo_epi16(r[0], r[1]);  // columns 0-3 | 8-11
      const __m256i hi = _mm256_unpackhi_epi16(r[0], r[1]);  // columns 4-7 | 12-15
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k2 * 2 * NR), _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k2 * 2 * NR + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
  } else {
    // Any other strides, or a partial panel: one element at a time.
    for (int64_t k2 = 0; k2 < kp2 / 2; ++k2) {
      for (int64_t j = 0; j < NR; ++j) {
        for (int64_t t = 0; t < 2; ++t) {
          const int64_t k = 2 * k2 + t;
          int16_t v = 0;
          if (j < w && k < K) v = static_cast<int16_t>(static_cast<int32_t>(b.data[k * b.ks + (n0 + j) * b.ns]) - b.zp);
          dst[(k2 * NR + j) * 2 + t] = v;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Epilogue: requantization and store, 8 lanes at a time. Same integers and floats as requant.h.

// Fixed-point requantization of 8 lanes (sat_lshift, srdhm, rounding_rshift of requant.h).
QLAB_AVX2_INLINE __m256i requant_fixed8(__m256i x, __m256i qm, __m256i ls, __m256i rs, bool any_lshift) {
  const __m256i imax = _mm256_set1_epi32(INT32_MAX), imin = _mm256_set1_epi32(INT32_MIN);
  const __m256i one = _mm256_set1_epi32(1);
  // saturating left shift (only for multipliers >= 1)
  __m256i y = x;
  if (any_lshift) {
    y = _mm256_sllv_epi32(x, ls);
    y = _mm256_blendv_epi8(y, imax, _mm256_cmpgt_epi32(x, _mm256_srav_epi32(imax, ls)));
    y = _mm256_blendv_epi8(y, imin, _mm256_cmpgt_epi32(_mm256_srav_epi32(imin, ls), x));
  }
  // srdhm(y, qm): gemmlowp's (ab + nudge) / 2^31 (truncating) equals floor((ab + 2^30) / 2^31)
  // for every ab (both nudges give the same quotient), i.e. the 64-bit (ab + 2^30) >> 31.
  const __m256i nudge = _mm256_set1_epi64x(int64_t{1} << 30);
  __m256i pe = _mm256_add_epi64(_mm256_mul_epi32(y, qm), nudge);  // even lanes, 64-bit
  __m256i po = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(y, 32), _mm256_srli_epi64(qm, 32)), nudge);
  pe = _mm256_srli_epi64(pe, 31);
  po = _mm256_slli_epi64(_mm256_srli_epi64(po, 31), 32);
  y = _mm256_blend_epi32(pe, po, 0xAA);
  // rounding right shift, ties away from zero
  const __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, rs), one);
  const __m256i rem = _mm256_and_si256(y, mask);
  const __m256i thr = _mm256_sub_epi32(_mm256_srli_epi32(mask, 1), _mm256_srai_epi32(y, 31));
  return _mm256_sub_epi32(_mm256_srav_epi32(y, rs), _mm256_cmpgt_epi32(rem, thr));
}

// The epilogue constants of one task, with the optional parts made branch-free:
// a missing float bias reads zeros, a disabled ReLU clamps at the type's minimum.
struct FinishConsts {
  const float* scale;
  const float* fbias;  // never null here (zeros without a float bias)
  const int32_t* qmul;
  const int32_t* lshift;
  const int32_t* rshift;
  bool any_lshift;
  bool uint8;
  int32_t zo, lo, hi;  // lo already includes the ReLU
  float relu_f;        // Float32 output: 0 with ReLU, -inf without
  int32_t relu_i;      // Int32 output: 0 with ReLU, INT32_MIN without
};

// cnt (1..8) elements of `size` bytes from a register image to dst.
QLAB_AVX2_INLINE void store_part(void* dst, const void* src, int64_t cnt, size_t size) {
  std::memcpy(dst, src, static_cast<size_t>(cnt) * size);
}

// 8 int32 codes, already clamped to the output range, as 8 bytes.
QLAB_AVX2_INLINE void store8_bytes(uint8_t* dst, __m256i q, bool uint8, int64_t cnt) {
  const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  const __m128i w8 = uint8 ? _mm_packus_epi16(w16, w16) : _mm_packs_epi16(w16, w16);
  if (cnt == 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), w8);
  } else {
    alignas(16) uint8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), w8);
    store_part(dst, tmp, cnt, 1);
  }
}

// One finisher per output kind: x = sum_k (a - za)(b - zb) + bias for the columns [c, c + cnt)
// of one output row, written at out[idx].
struct FinInt32 {
  QLAB_AVX2_INLINE static void run(__m256i x, int64_t c, int64_t cnt, const FinishConsts& f, void* out, int64_t idx) {
    (void)c;
    x = _mm256_max_epi32(x, _mm256_set1_epi32(f.relu_i));
    int32_t* dst = static_cast<int32_t*>(out) + idx;
    if (cnt == 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), x);
    } else {
      alignas(32) int32_t tmp[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), x);
      store_part(dst, tmp, cnt, 4);
    }
  }
};

struct FinFloat32 {  // float(x) * sa*sb[c] + bias[c]
  QLAB_AVX2_INLINE static void run(__m256i x, int64_t c, int64_t cnt, const FinishConsts& f, void* out, int64_t idx) {
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_loadu_ps(f.scale + c));
    y = _mm256_add_ps(y, _mm256_loadu_ps(f.fbias + c));
    y = _mm256_max_ps(y, _mm256_set1_ps(f.relu_f));
    float* dst = static_cast<float*>(out) + idx;
    if (cnt == 8) {
      _mm256_storeu_ps(dst, y);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, y);
      store_part(dst, tmp, cnt, 4);
    }
  }
};

struct FinQ8Float {  // clamp(nearbyint((float(x) + fbias[c]) * scale[c]) + zo, lo, hi), the clamp done in float
  QLAB_AVX2_INLINE static void run(__m256i x, int64_t c, int64_t cnt, const FinishConsts& f, void* out, int64_t idx) {
    __m256 y = _mm256_add_ps(_mm256_cvtepi32_ps(x), _mm256_loadu_ps(f.fbias + c));
    y = _mm256_mul_ps(y, _mm256_loadu_ps(f.scale + c));
    y = _mm256_max_ps(y, _mm256_set1_ps(static_cast<float>(f.lo - f.zo)));
    y = _mm256_min_ps(y, _mm256_set1_ps(static_cast<float>(f.hi - f.zo)));
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(y), _mm256_set1_epi32(f.zo));  // round half to even
    store8_bytes(static_cast<uint8_t*>(out) + idx, q, f.uint8, cnt);
  }
};

template <bool RELU, bool FBIAS>
struct FinQ8FloatNoOverflow {
  // Epilogue::no_overflow: |(float(x) + fbias) * scale| < 2^31 - 256, so the conversion cannot overflow.
  // The saturating packs (int32 -> int16, + zo with saturation, int16 -> 8 bits) are the clamp.
  QLAB_AVX2_INLINE static void run(__m256i x, int64_t c, int64_t cnt, const FinishConsts& f, void* out, int64_t idx) {
    __m256 y = _mm256_cvtepi32_ps(x);
    if (FBIAS) y = _mm256_add_ps(y, _mm256_loadu_ps(f.fbias + c));
    const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(y, _mm256_loadu_ps(f.scale + c)));
    __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    w16 = _mm_adds_epi16(w16, _mm_set1_epi16(static_cast<int16_t>(f.zo)));
    if (RELU) w16 = _mm_max_epi16(w16, _mm_set1_epi16(static_cast<int16_t>(f.lo)));
    const __m128i w8 = f.uint8 ? _mm_packus_epi16(w16, w16) : _mm_packs_epi16(w16, w16);
    uint8_t* dst = static_cast<uint8_t*>(out) + idx;
    if (cnt == 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), w8);
    } else {
      alignas(16) uint8_t tmp[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(tmp), w8);
      store_part(dst, tmp, cnt, 1);
    }
  }
};

struct FinQ8Fixed {  // clamp(rounding_rshift(srdhm(sat_lshift(x), qmul)) + zo, lo, hi), integers only
  QLAB_AVX2_INLINE static void run(__m256i x, int64_t c, int64_t cnt, const FinishConsts& f, void* out, int64_t idx) {
    __m256i q = requant_fixed8(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f.qmul + c)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f.lshift + c)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(f.rshift + c)), f.any_lshift);
    q = _mm256_max_epi32(q, _mm256_set1_epi32(f.lo - f.zo));
    q = _mm256_min_epi32(q, _mm256_set1_epi32(f.hi - f.zo));
    q = _mm256_add_epi32(q, _mm256_set1_epi32(f.zo));
    store8_bytes(static_cast<uint8_t*>(out) + idx, q, f.uint8, cnt);
  }
};

// ---------------------------------------------------------------------------------------------
// Micro-kernel: a 6 x 16 tile of C, accumulated in registers, finished in registers.
//   a: MR rows of packed A (row stride lda int16); bp: the packed B panel;
//   rows / w: how many rows and columns of the tile are real; (m, n): its position in C.

template <class Finish>
QLAB_AVX2 void tile(const int16_t* a, int64_t lda, const int16_t* bp, int64_t k2n, int64_t rows, int64_t w,
                    const int32_t* col_off, const FinishConsts& fin, void* out, int64_t ldc, int64_t m, int64_t n) {
  // The accumulators start at the int32 bias, so they end at sum_k (a - za)(b - zb) + bias.
  const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_off));
  const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_off + 8));
  __m256i acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = c0;
    acc[r][1] = c1;
  }
  for (int64_t k = 0; k < k2n; ++k) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 16));
    bp += 2 * NR;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;  // a[r, 2k] and a[r, 2k+1] as one 32-bit word, broadcast to all 8 lanes
      std::memcpy(&pair, a + r * lda + 2 * k, sizeof(pair));
      const __m256i av = _mm256_set1_epi32(pair);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
    }
  }
  const FinishConsts f = fin;  // a local copy: stores through `out` cannot alias it, so its fields stay in registers
  const int64_t cnt0 = std::min<int64_t>(8, w), cnt1 = w - cnt0;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (r >= rows) break;
    const int64_t idx = (m + r) * ldc + n;
    Finish::run(acc[r][0], n, cnt0, f, out, idx);
    if (cnt1 > 0) Finish::run(acc[r][1], n + 8, cnt1, f, out, idx + 8);
  }
}

using TileFn = void (*)(const int16_t*, int64_t, const int16_t*, int64_t, int64_t, int64_t, const int32_t*,
                        const FinishConsts&, void*, int64_t, int64_t, int64_t);

// Micro-kernel on a prepacked weight, read in place (no int16 copy of the panel): an MT x 8*NV tile.
// 16 bytes of the VNNI panel hold 4 columns x 4 consecutive k; vpmovsxbw widens them to 16 int16 and vpmaddwd
// against the row's quad (a[4k..4k+3] - za, broadcast as one 64-bit word) gives each column two int32 halves,
// (k, k+1) and (k+2, k+3). The halves stay apart in the accumulators until the end, where one vphaddd per
// 8 columns adds them: the same integer sums as the int16 panel, in a different (exact) order.
//   a: MT rows of packed A (row stride lda int16, 4*k4n each); bp: 16 columns' first quad; bstep: bytes per quad row.
template <int MT, int NV, class Finish>
QLAB_AVX2 void tile_packed(const int16_t* a, int64_t lda, const int8_t* bp, int64_t bstep, int64_t k4n, int64_t rows,
                           int64_t w, const int32_t* col_off, const int32_t* row_off, const FinishConsts& fin,
                           void* out, int64_t ldc, int64_t m, int64_t n) {
  __m256i acc[MT][2 * NV];
#pragma GCC unroll 8
  for (int r = 0; r < MT; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 2 * NV; ++v) acc[r][v] = _mm256_setzero_si256();
  }
  for (int64_t k = 0; k < k4n; ++k, bp += bstep) {
    __m256i bv[2 * NV];
#pragma GCC unroll 4
    for (int v = 0; v < 2 * NV; ++v) {
      bv[v] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + 16 * v)));
    }
#pragma GCC unroll 8
    for (int r = 0; r < MT; ++r) {
      int64_t quad;
      std::memcpy(&quad, a + r * lda + 4 * k, sizeof(quad));
      const __m256i av = _mm256_set1_epi64x(quad);
#pragma GCC unroll 4
      for (int v = 0; v < 2 * NV; ++v) acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(av, bv[v]));
    }
  }
  const FinishConsts f = fin;
#pragma GCC unroll 8
  for (int r = 0; r < MT; ++r) {
    if (r >= rows) break;
    const int64_t idx = (m + r) * ldc + n;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const int64_t cnt = std::min<int64_t>(8, w - 8 * v);
      if (cnt <= 0) break;
      // [c0 c1 c4 c5 | c2 c3 c6 c7] -> c0..c7, plus the int32 bias
      __m256i x = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][2 * v], acc[r][2 * v + 1]), 0xD8);
      x = _mm256_add_epi32(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_off + 8 * v)));
      if (row_off) x = _mm256_add_epi32(x, _mm256_set1_epi32(row_off[r]));
      Finish::run(x, n + 8 * v, cnt, f, out, idx + 8 * v);
    }
  }
}

using PackedTileFn = void (*)(const int16_t*, int64_t, const int8_t*, int64_t, int64_t, int64_t, int64_t,
                              const int32_t*, const int32_t*, const FinishConsts&, void*, int64_t, int64_t, int64_t);

// The 4-product step of the byte tiles: acc += a[4i..4i+3] . b[4i..4i+3] in each int32 lane (a uint8, b int8).
// Dot7, plain AVX2: vpmaddubsw -> 16 int16 pair sums, vpmaddwd(., 1) -> 8 int32 quad sums. Exact only when every code
// of a is below 128 (|a0*b0 + a1*b1| <= 2*127*128 = 32512); 255*127*2 = 64770 would saturate the int16.
struct Dot7 {
  static constexpr bool kAnyByte = false;
  QLAB_AVX2_INLINE static __m256i run(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
  }
};
// DotVnni, AVX-VNNI: one vpdpbusd, the four products summed in int32 (no int16 step): exact for every byte.
struct DotVnni {
  static constexpr bool kAnyByte = true;
  QLAB_AVX2_INLINE static __m256i run(__m256i acc, __m256i a, __m256i b) {
    asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "xm"(b));
    return acc;
  }
};

// The byte tile: A read as bytes (a itself; za goes to the column offsets, -za * colsum_B), a 32-bit quad broadcast
// per row, 32 bytes of the panel (8 columns x 4 k) per register. An MT x 16 tile: MT * 2 accumulators, 2 panel
// registers, the broadcast (and Dot7's ones): 16 ymm for MT = 6.
//   a: MT rows of A bytes (row stride lda, 4*k4n each, zero padded); other arguments as tile_packed.
template <int MT, class Dot, class Finish>
QLAB_AVX2 void tile_bytes(const uint8_t* a, int64_t lda, const int8_t* bp, int64_t bstep, int64_t k4n, int64_t rows,
                          int64_t w, const int32_t* col_off, const int32_t* row_off, const FinishConsts& fin, void* out,
                          int64_t ldc, int64_t m, int64_t n) {
  __m256i acc[MT][2];
#pragma GCC unroll 8
  for (int r = 0; r < MT; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t k = 0; k < k4n; ++k, bp += bstep) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 32));
#pragma GCC unroll 8
    for (int r = 0; r < MT; ++r) {
      int32_t quad;
      std::memcpy(&quad, a + r * lda + 4 * k, sizeof(quad));
      const __m256i av = _mm256_set1_epi32(quad);
      acc[r][0] = Dot::run(acc[r][0], av, b0);
      acc[r][1] = Dot::run(acc[r][1], av, b1);
    }
  }
  const FinishConsts f = fin;
#pragma GCC unroll 8
  for (int r = 0; r < MT; ++r) {
    if (r >= rows) break;
    const int64_t idx = (m + r) * ldc + n;
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      const int64_t cnt = std::min<int64_t>(8, w - 8 * v);
      if (cnt <= 0) break;
      __m256i x = _mm256_add_epi32(acc[r][v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_off + 8 * v)));
      if (row_off) x = _mm256_add_epi32(x, _mm256_set1_epi32(row_off[r]));
      Finish::run(x, n + 8 * v, cnt, f, out, idx + 8 * v);
    }
  }
}

using ByteTileFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int64_t, int64_t, const int32_t*,
                            const int32_t*, const FinishConsts&, void*, int64_t, int64_t, int64_t);
template <class Dot, class Finish>
constexpr std::array<ByteTileFn, 4> byte_tiles_for = {tile_bytes<1, Dot, Finish>, tile_bytes<2, Dot, Finish>,
                                                      tile_bytes<4, Dot, Finish>, tile_bytes<MR, Dot, Finish>};

// True when no byte of A's rows [m0, m0 + M) has its top bit set: uint8 codes below 128, or int8 codes in [0, 128).
QLAB_AVX2 bool seven_bit(const MatA& a, int64_t m0, int64_t M, int64_t K) {
  __m256i any = _mm256_setzero_si256();
  uint8_t tail = 0;
  for (int64_t r = 0; r < M; ++r) {
    const uint8_t* src = a.data + (m0 + r) * a.rs;
    int64_t k = 0;
    if (a.cs == 1) {
      for (; k + 32 <= K; k += 32) {
        any = _mm256_or_si256(any, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k)));
      }
    }
    for (; k < K; ++k) tail |= src[k * a.cs];
  }
  return _mm256_movemask_epi8(any) == 0 && (tail & 0x80) == 0;
}

// Rows [m0, m0 + rows) of A as bytes, row length kp4 (K rounded up to 4, zero padded); flip: XOR each byte with
// 0x80, which maps int8 a to the uint8 a + 128 (the caller adds 128 to the zero point).
void pack_a_bytes(const MatA& a, int64_t m0, int64_t rows, int64_t K, int64_t kp4, bool flip, uint8_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = a.data + (m0 + r) * a.rs;
    uint8_t* d = dst + r * kp4;
    if (a.cs == 1) {
      std::memcpy(d, src, static_cast<size_t>(K));
    } else {
      for (int64_t k = 0; k < K; ++k) d[k] = src[k * a.cs];
    }
    if (flip) {
      for (int64_t k = 0; k < K; ++k) d[k] ^= 0x80;
    }
    std::memset(d + K, 0, static_cast<size_t>(kp4 - K));
  }
}
// [rows class]: 1 and 2 rows take 16 columns at once (8 or 16 accumulators + 4 panel registers), 3-4 and 5-6 rows
// 8 columns (16 ymm registers in all).
template <class Finish>
constexpr std::array<PackedTileFn, 4> packed_tiles_for = {tile_packed<1, 2, Finish>, tile_packed<2, 2, Finish>,
                                                          tile_packed<4, 1, Finish>, tile_packed<MR, 1, Finish>};
inline int rows_class(int64_t rows) { return rows >= 5 ? 3 : rows >= 3 ? 2 : static_cast<int>(rows) - 1; }

// kTiles[finisher]; the finisher is chosen once per task from the Epilogue.
constexpr TileFn kTiles[] = {
    tile<FinInt32>,
    tile<FinFloat32>,
    tile<FinQ8Float>,
    tile<FinQ8Fixed>,
    tile<FinQ8FloatNoOverflow<false, false>>,
    tile<FinQ8FloatNoOverflow<true, false>>,
    tile<FinQ8FloatNoOverflow<false, true>>,
    tile<FinQ8FloatNoOverflow<true, true>>,
};

int finisher_index(const Epilogue& e) {
  if (e.kind == OutKind::Int32) return 0;
  if (e.kind == OutKind::Float32) return 1;
  if (e.mode == Requant::Fixed) return 3;
  if (e.no_overflow) return 4 + (e.relu ? 1 : 0) + (e.fbias ? 2 : 0);
  return 2;
}

template <class Dot>
constexpr std::array<ByteTileFn, 4> kByteTiles[] = {
    byte_tiles_for<Dot, FinInt32>,
    byte_tiles_for<Dot, FinFloat32>,
    byte_tiles_for<Dot, FinQ8Float>,
    byte_tiles_for<Dot, FinQ8Fixed>,
    byte_tiles_for<Dot, FinQ8FloatNoOverflow<false, false>>,
    byte_tiles_for<Dot, FinQ8FloatNoOverflow<true, false>>,
    byte_tiles_for<Dot, FinQ8FloatNoOverflow<false, true>>,
    byte_tiles_for<Dot, FinQ8FloatNoOverflow<true, true>>,
};

constexpr std::array<PackedTileFn, 4> kPackedTiles[] = {
    packed_tiles_for<FinInt32>,
    packed_tiles_for<FinFloat32>,
    packed_tiles_for<FinQ8Float>,
    packed_tiles_for<FinQ8Fixed>,
    packed_tiles_for<FinQ8FloatNoOverflow<false, false>>,
    packed_tiles_for<FinQ8FloatNoOverflow<true, false>>,
    packed_tiles_for<FinQ8FloatNoOverflow<false, true>>,
    packed_tiles_for<FinQ8FloatNoOverflow<true, true>>,
};

// The epilogue constants of one task (the fbias zeros live in `zeros` when there is no float bias).
FinishConsts finish_consts(const Task& t, const Epilogue& e, std::vector<float>* zeros) {
  FinishConsts fin{};
  fin.scale = e.scale;
  fin.fbias = e.fbias;
  if (!fin.fbias) {
    zeros->assign(static_cast<size_t>(t.n1 + NR), 0.0f);
    fin.fbias = zeros->data();
  }
  fin.qmul = e.qmul;
  fin.lshift = e.lshift;
  fin.rshift = e.rshift;
  fin.any_lshift = e.any_lshift;
  fin.uint8 = e.kind == OutKind::UInt8;
  fin.zo = e.zo;
  fin.lo = e.lo;
  fin.hi = e.hi;
  fin.relu_f = e.relu ? 0.0f : -std::numeric_limits<float>::infinity();
  fin.relu_i = e.relu ? 0 : INT32_MIN;
  return fin;
}

// What both routes on a packed B need: the 16-column strip at column n (n - packed_n0 is a multiple of 16, the AVX2
// panel), and -zb * sum_k (a - za) per row when B has a zero point (attention's k and v; a weight has none).
struct Strip {
  const int8_t* panel;  // the 48-column panel holding the strip (its column sums follow its data)
  const int8_t* bp;     // the strip's first quad row
  int64_t j;            // the strip's first column within its panel
  int64_t w, W;         // real columns in the strip; columns per quad row of the panel
};

Strip strip_at(const Task& t, int64_t n) {
  const int64_t p = (n - t.packed_n0) / kPackedPanel, j = (n - t.packed_n0) % kPackedPanel;
  const int8_t* panel = t.packed + p * t.packed_stride;
  return {panel, panel + 64 * (j / 16), j, std::min<int64_t>(NR, t.n1 - n),
          (std::min<int64_t>(kPackedPanel, t.packed_n - p * kPackedPanel) + 15) / 16 * 16};
}

// apack: M rows of K values (row stride kp4) still holding the zero point za (0 when packing subtracted it).
template <class T>
std::vector<int32_t> row_corrections(const Task& t, const T* apack, int64_t M, int64_t kp4, int64_t za) {
  std::vector<int32_t> rc;
  if (t.b.zp == 0) return rc;
  rc.assign(static_cast<size_t>(M), 0);
  for (int64_t m = 0; m < M; ++m) {
    int64_t sum = 0;
    for (int64_t k = 0; k < t.K; ++k) sum += apack[m * kp4 + k];
    rc[m] = static_cast<int32_t>(-t.b.zp * (sum - t.K * za));
  }
  return rc;
}

// The byte route (tile_bytes): A's bytes as they are (int8 A flipped to uint8 when the Dot takes any byte, with
// za + 128); za and zb as offsets,
//   sum_k (a - za)(b - zb) = sum_k a*b  - za * colsum_B[n]  - zb * (sum_k a - K * za)
// with colsum_B the column sums each packed panel stores after its data. B prepacked (t.packed), or packed here one
// 48-column panel at a time, which every row tile then reads while it is hot.
template <class Dot>
void gemm_bytes(const Task& t, const Epilogue& e, const FinishConsts& fin) {
  const int64_t M = t.m1 - t.m0, K = t.K;
  const int64_t kp4 = (K + 3) / 4 * 4, k4n = kp4 / 4;
  const int64_t mtiles = (M + MR - 1) / MR;
  const bool flip = Dot::kAnyByte && t.a.is_signed;
  const int64_t za = t.a.zp + (flip ? 128 : 0);
  std::vector<uint8_t> apack(static_cast<size_t>(mtiles * MR * kp4 + 32), 0);
  pack_a_bytes(t.a, t.m0, M, K, kp4, flip, apack.data());
  const std::vector<int32_t> row_corr = row_corrections(t, apack.data(), M, kp4, za);
  const auto& tiles = kByteTiles<Dot>[finisher_index(e)];
  Task tp = t;  // B as the tiles read it
  std::vector<int8_t> own;
  if (!t.packed) {
    own.resize(static_cast<size_t>(packed_panel_bytes(K)));
    tp.packed = own.data();
    tp.packed_stride = packed_panel_bytes(K);
    tp.packed_colsum = packed_kp(K) * kPackedPanel;
  }
  alignas(32) int32_t col_off[NR] = {};
  for (int64_t n = t.n0; n < t.n1; n += NR) {
    if (!t.packed && (n - t.n0) % kPackedPanel == 0) {  // the next 48 columns of B
      tp.packed_n0 = n;
      tp.packed_n = std::min<int64_t>(kPackedPanel, t.n1 - n);
      MatB b = t.b;
      b.data += n * b.ns;
      pack_b_vnni_avx2(b, tp.packed_n, K, own.data());
    }
    const Strip s = strip_at(tp, n);
    int32_t colsum[NR];
    std::memcpy(colsum, s.panel + tp.packed_colsum + 4 * s.j, sizeof(colsum));
    for (int64_t j = 0; j < NR; ++j) {  // bias - za * colsum, wrapping as the accumulator does (no signed overflow)
      const uint32_t bias = e.bias && j < s.w ? static_cast<uint32_t>(e.bias[n + j]) : 0u;
      col_off[j] = static_cast<int32_t>(bias - static_cast<uint32_t>(za) * static_cast<uint32_t>(colsum[j]));
    }
    for (int64_t mt = 0; mt < M; mt += MR) {
      const int64_t rows = std::min<int64_t>(MR, M - mt);
      const int32_t* ro = row_corr.empty() ? nullptr : row_corr.data() + mt;
      tiles[rows_class(rows)](apack.data() + mt * kp4, kp4, s.bp, 4 * s.W, k4n, rows, s.w, col_off, ro, fin, t.out,
                              t.ldc, t.m0 + mt, n);
    }
  }
}

// A prepacked B (a weight, or attention's k and v), read in place 16 columns at a time; A packed as int16 quads
// (a - za), or, when every code of A is below 128, the byte route above with Dot7.
void gemm_avx2_packed(const Task& t, const Epilogue& e, const FinishConsts& fin) {
  const int64_t M = t.m1 - t.m0, K = t.K;
  if (seven_bit(t.a, t.m0, M, K)) {
    gemm_bytes<Dot7>(t, e, fin);
    return;
  }
  const int64_t kp4 = (K + 3) / 4 * 4, k4n = kp4 / 4;
  const int64_t mtiles = (M + MR - 1) / MR;
  std::vector<int16_t> apack(static_cast<size_t>(mtiles * MR * kp4 + 16), 0);
  pack_a(t.a, t.m0, M, K, kp4, apack.data());
  const std::vector<int32_t> row_corr = row_corrections(t, apack.data(), M, kp4, 0);
  const auto& tiles = kPackedTiles[finisher_index(e)];
  alignas(32) int32_t col_off[NR] = {};
  for (int64_t n = t.n0; n < t.n1; n += NR) {
    const Strip s = strip_at(t, n);
    const int64_t w = s.w;
    for (int64_t j = 0; j < NR; ++j) col_off[j] = e.bias && j < w ? e.bias[n + j] : 0;
    for (int64_t mt = 0; mt < M; mt += MR) {
      const int64_t rows = std::min<int64_t>(MR, M - mt);
      const int16_t* ab = apack.data() + mt * kp4;
      const int rc = rows_class(rows);
      const int32_t* ro = row_corr.empty() ? nullptr : row_corr.data() + mt;
      if (rc < 2) {
        tiles[rc](ab, kp4, s.bp, 4 * s.W, k4n, rows, w, col_off, ro, fin, t.out, t.ldc, t.m0 + mt, n);
      } else {  // 8 columns at a time
        for (int64_t h = 0; h < 2 && 8 * h < w; ++h) {
          tiles[rc](ab, kp4, s.bp + 32 * h, 4 * s.W, k4n, rows, w - 8 * h, col_off + 8 * h, ro, fin, t.out, t.ldc,
                    t.m0 + mt, n + 8 * h);
        }
      }
    }
  }
}

}  // namespace

QLAB_AVX2 void pack_b_vnni_avx2(const MatB& b, int64_t N, int64_t K, int8_t* dst) {
  const int64_t pb = packed_panel_bytes(K), k4n = (K + 3) / 4;
  for (int64_t p = 0; p * kPackedPanel < N; ++p) {
    const int64_t width = std::min<int64_t>(kPackedPanel, N - p * kPackedPanel);
    const int64_t W = (width + 15) / 16 * 16;
    const int64_t n0 = p * kPackedPanel;
    int8_t* panel = dst + p * pb;
    if (b.ns == 1 && width == W) {
      // B row-major (v): 16 columns of 4 consecutive rows, interleaved byte by byte
      for (int64_t k4 = 0; k4 < k4n; ++k4) {
        for (int64_t g = 0; g < W; g += 16) {
          __m128i r[4];
          for (int t = 0; t < 4; ++t) {
            const int64_t k = 4 * k4 + t;
            r[t] = k < K ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.data + k * b.ks + n0 + g))
                         : _mm_setzero_si128();
          }
          const __m128i lo01 = _mm_unpacklo_epi8(r[0], r[1]), hi01 = _mm_unpackhi_epi8(r[0], r[1]);
          const __m128i lo23 = _mm_unpacklo_epi8(r[2], r[3]), hi23 = _mm_unpackhi_epi8(r[2], r[3]);
          int8_t* d = panel + (k4 * W + g) * 4;
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_unpacklo_epi16(lo01, lo23));       // columns 0-3
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 16), _mm_unpackhi_epi16(lo01, lo23));  // 4-7
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 32), _mm_unpacklo_epi16(hi01, hi23));  // 8-11
          _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 48), _mm_unpackhi_epi16(hi01, hi23));  // 12-15
        }
      }
    } else if (b.ks == 1) {
      // B^T row-major (k): a column's 4 consecutive k are one 32-bit word
      for (int64_t j = 0; j < W; ++j) {
        const int8_t* col = b.data + (n0 + j) * b.ns;
        for (int64_t k4 = 0; k4 < k4n; ++k4) {
          int8_t quad[4] = {0, 0, 0, 0};
          if (j < width) {
            if (4 * k4 + 4 <= K) {
              std::memcpy(quad, col + 4 * k4, 4);
            } else {
              for (int64_t k = 4 * k4; k < K; ++k) quad[k - 4 * k4] = col[k];
            }
          }
          std::memcpy(panel + (k4 * W + j) * 4, quad, 4);
        }
      }
    } else {  // any other strides, or a partial panel
      for (int64_t k4 = 0; k4 < k4n; ++k4) {
        for (int64_t j = 0; j < W; ++j) {
          for (int64_t t = 0; t < 4; ++t) {
            const int64_t k = 4 * k4 + t;
            panel[(k4 * W + j) * 4 + t] = j < width && k < K ? b.data[k * b.ks + (n0 + j) * b.ns] : 0;
          }
        }
      }
    }
    // the column sums after the data, as pack_linear_weight stores them (the byte route reads them)
    int32_t colsum[kPackedPanel] = {};
    for (int64_t k4 = 0; k4 < k4n; ++k4) {
      for (int64_t j = 0; j < W; ++j) {
        const int8_t* q = panel + (k4 * W + j) * 4;
        colsum[j] += q[0] + q[1] + q[2] + q[3];
      }
    }
    std::memcpy(panel + packed_kp(K) * kPackedPanel, colsum, sizeof(colsum));
  }
}

void gemm_avx2(const Task& t, const Epilogue& e) {
  std::vector<float> zeros;
  const FinishConsts fin = finish_consts(t, e, &zeros);
  if (t.packed) {
    gemm_avx2_packed(t, e, fin);
    return;
  }
  const int64_t M = t.m1 - t.m0, K = t.K;
  const int64_t kp2 = (K + 1) / 2 * 2;
  const int64_t mtiles = (M + MR - 1) / MR;
  std::vector<int16_t> apack(static_cast<size_t>(mtiles * MR * kp2 + 16), 0);  // rows past M stay 0
  std::vector<int16_t> bpack(static_cast<size_t>(kp2 * NR + 16));
  pack_a(t.a, t.m0, M, K, kp2, apack.data());
  const TileFn tile_fn = kTiles[finisher_index(e)];

  alignas(32) int32_t col_off[NR];
  for (int64_t n = t.n0; n < t.n1; n += NR) {
    const int64_t w = std::min<int64_t>(NR, t.n1 - n);
    pack_b(t.b, n, w, K, kp2, bpack.data());
    for (int64_t j = 0; j < NR; ++j) col_off[j] = e.bias ? e.bias[n + j] : 0;
    for (int64_t mt = 0; mt < mtiles; ++mt) {
      tile_fn(apack.data() + mt * MR * kp2, kp2, bpack.data(), kp2 / 2, std::min<int64_t>(MR, M - mt * MR), w, col_off,
              fin, t.out, t.ldc, t.m0 + mt * MR, n);
    }
  }
}

void gemm_avx_vnni(const Task& t, const Epilogue& e) {
  std::vector<float> zeros;
  const FinishConsts fin = finish_consts(t, e, &zeros);
  gemm_bytes<DotVnni>(t, e, fin);
}

}  // namespace qlab

#else  // not x86: never selected (ops.cpp only offers the scalar path)

namespace qlab {
void gemm_avx2(const Task& t, const Epilogue& e) { gemm_scalar(t, e); }
void gemm_avx_vnni(const Task& t, const Epilogue& e) { gemm_scalar(t, e); }
void pack_b_vnni_avx2(const MatB&, int64_t, int64_t, int8_t*) {}
}  // namespace qlab

#endif
