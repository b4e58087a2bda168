// What the AVX-512 VNNI and AMX paths share: packing A and B, the zero-point corrections, and the
// finishers that requantize and store 16 int32 accumulators at a time (the same arithmetic as
// requant.h). Included by gemm_avx512_vnni.cpp and gemm_amx.cpp only; everything here lives in an
// anonymous namespace, so each of the two files gets its own copy, compiled with its own target.
//
// Zero points are not subtracted inside the loops. The correction terms are computed once
// (column sums while packing B, row sums of A) and are the accumulators' starting values:
//
//   sum_k (a - za)(b - zb) = sum_k a*b  - za * colsum_B[n]  - zb * rowsum_A[m]  + K * za * zb
//                            ^ dpbusd   ^ column offsets (per panel)  ^ row offsets    ^ constant
//
// int8 A: vpdpbusd / tdpbusd need unsigned A, so A is stored as a' = a + 128 (flip the top bit,
// a ^ 0x80) with zero point za' = za + 128; (a - za) = (a' - za'), so the same formula holds.
// Packed B panel: [k/4][48 columns][4] int8, so one 64-byte load holds 16 columns x 4 k; it is also
// the AMX B-tile layout.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "qlab_kernels.h"
#include "requant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define QLAB_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define QLAB_VNNI_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"), always_inline)) inline

namespace qlab {
namespace {

constexpr int NV_MAX = 3;        // zmm vectors (16 columns each) per micro-tile
constexpr int NR = 16 * NV_MAX;  // columns per panel (= kPanelVnni)
static_assert(NR == kPanelVnni, "panel width");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------
// Packing

// Copy rows [m0, m0 + rows) of A into dst (row length kp, zero padded), flipping the
// top bit of int8 data so that it can be read as uint8.
QLAB_VNNI void pack_a(const MatA& a, int64_t m0, int64_t rows, int64_t K, int64_t kp, uint8_t* dst) {
  const uint8_t flip = a.is_signed ? 0x80 : 0x00;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = a.data + (m0 + r) * a.rs;
    uint8_t* d = dst + r * kp;
    if (a.cs == 1) {
      for (int64_t k = 0; k < K; ++k) d[k] = src[k] ^ flip;
    } else {
      for (int64_t k = 0; k < K; ++k) d[k] = src[k * a.cs] ^ flip;
    }
    for (int64_t k = K; k < kp; ++k) d[k] = 0;
  }
}

// Sum of the first K bytes (as uint8) of each row.
QLAB_VNNI void row_sums(const uint8_t* a, int64_t lda, int64_t rows, int64_t K, int32_t* out) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* p = a + r * lda;
    __m512i acc = zero;
    for (int64_t k = 0; k < K; k += 64) {
      const int64_t left = K - k;
      const __mmask64 mk = left >= 64 ? ~__mmask64{0} : ((__mmask64{1} << left) - 1);
      acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(mk, p + k), zero));
    }
    out[r] = static_cast<int32_t>(_mm512_reduce_add_epi64(acc));
  }
}

// A buffer whose data starts on a 64-byte boundary (a cache line), contents uninitialized: packed
// panels are read with whole-line loads, which cost about twice as much when they straddle two lines
// (malloc only promises 16 bytes, so an unaligned buffer made timings depend on the heap's state).
template <class T>
struct Aligned64 {
  explicit Aligned64(size_t n) : raw(new uint8_t[n * sizeof(T) + 64]) {}
  T* data() const {
    const auto p = reinterpret_cast<uintptr_t>(raw.get());
    return reinterpret_cast<T*>((p + 63) & ~uintptr_t{63});
  }
  std::unique_ptr<uint8_t[]> raw;
};

// A's rows as the micro-kernels read them: blocks of mr rows, each row kp bytes (K rounded up).
// uint8 A with unit column stride is read in place: a row read runs past K into whatever follows
// (the next row), which B's zero padding cancels, so only rows whose read could leave A's memory --
// past the end of the task's last row -- and the last partial block are copied, zero padded, into
// `tail`. Other A (int8: top bit flipped; other strides) is packed whole.
struct RowsA {
  const uint8_t* a = nullptr;
  int64_t lda = 0;
  int64_t direct_rows = 0;  // rows [0, direct_rows) are read from a (a multiple of mr)
  int64_t kp = 0;
  std::unique_ptr<Aligned64<uint8_t>> pack, tail;
  // The block starting at row m (a multiple of mr): its first row and row stride.
  const uint8_t* block(int64_t m, int64_t* ld) const {
    if (m < direct_rows) {
      *ld = lda;
      return a + m * lda;
    }
    *ld = kp;
    return tail->data() + (m - direct_rows) * kp;
  }
};

QLAB_VNNI void prepare_a(const MatA& A, int64_t m0, int64_t M, int64_t K, int64_t kp, int64_t mr, RowsA* r) {
  r->a = A.data + m0 * A.rs;
  r->lda = A.rs;
  r->kp = kp;
  if (!A.is_signed && A.cs == 1 && A.rs > 0 && M > 0) {
    const int64_t slack = (M - 1) * A.rs + K - kp;  // row i may be read in place when i * lda <= slack
    r->direct_rows = slack < 0 ? 0 : std::min<int64_t>(M, slack / A.rs + 1) / mr * mr;
  } else if (M > 0) {
    r->pack = std::make_unique<Aligned64<uint8_t>>(static_cast<size_t>(M * kp));  // pack_a writes every byte
    pack_a(A, m0, M, K, kp, r->pack->data());
    r->a = r->pack->data();
    r->lda = kp;
    r->direct_rows = M / mr * mr;
  }
  if (r->direct_rows < M) {
    const size_t bytes = static_cast<size_t>(round_up(M - r->direct_rows, mr) * kp);
    r->tail = std::make_unique<Aligned64<uint8_t>>(bytes);
    std::memset(r->tail->data(), 0, bytes);
    for (int64_t i = r->direct_rows; i < M; ++i) {
      std::memcpy(r->tail->data() + (i - r->direct_rows) * kp, r->a + i * r->lda, K);
    }
  }
}

// Transpose a 16 x 16 matrix of 32-bit words held in 16 registers (row i in r[i]).
QLAB_VNNI_INLINE void transpose16x16(__m512i* r) {
  __m512i a[16], c[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows, 32-bit interleave within each 128-bit lane
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // b[g + j], lane l = rows g..g+3 of word 4l + j
    r[g + 0] = _mm512_unpacklo_epi64(a[g], a[g + 2]);
    r[g + 1] = _mm512_unpackhi_epi64(a[g], a[g + 2]);
    r[g + 2] = _mm512_unpacklo_epi64(a[g + 1], a[g + 3]);
    r[g + 3] = _mm512_unpackhi_epi64(a[g + 1], a[g + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // 4 x 4 transpose of 128-bit lanes across the row groups
    c[4 * j + 0] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44);
    c[4 * j + 1] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
    c[4 * j + 2] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
    c[4 * j + 3] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {  // word 4l + j of all 16 rows
    r[0 + j] = _mm512_shuffle_i32x4(c[4 * j + 0], c[4 * j + 2], 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(c[4 * j + 0], c[4 * j + 2], 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(c[4 * j + 1], c[4 * j + 3], 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(c[4 * j + 1], c[4 * j + 3], 0xDD);
  }
}

// Columns [n0, n0 + w) of B into the panel layout [kp/4][16*nv][4] (zeros past K and w),
// and their column sums over k.
QLAB_VNNI void pack_b(const MatB& b, int64_t n0, int64_t w, int64_t K, int64_t kp, int nv, int8_t* dst,
                      int32_t* colsum) {
  const int64_t W = 16 * nv;
  const int64_t k4n = kp / 4;
  if (b.ks == 1) {
    // B^T is row-major (keys for q.k^T, a Linear weight): column n is contiguous in k.
    // Load 64 bytes (16 groups of 4 k) of 16 columns and transpose the 16 x 16 dwords.
    for (int g = 0; g < nv; ++g) {
      const int64_t cols = std::max<int64_t>(0, std::min<int64_t>(16, w - 16 * g));
      const int8_t* base = b.data + (n0 + 16 * g) * b.ns;
      for (int64_t k0 = 0; k0 < kp; k0 += 64) {
        const int64_t left = K - k0;  // > 0: k0 < kp = K rounded up to 4
        const __mmask64 km = left >= 64 ? ~__mmask64{0} : ((__mmask64{1} << left) - 1);
        __m512i r[16];
        for (int j = 0; j < 16; ++j) {
          r[j] = j < cols ? _mm512_maskz_loadu_epi8(km, base + j * b.ns + k0) : _mm512_setzero_si512();
        }
        transpose16x16(r);  // r[i] = the 4 bytes k0 + 4i .. k0 + 4i + 3 of the 16 columns
        const int64_t steps = std::min<int64_t>(16, (kp - k0) / 4);
        for (int64_t i = 0; i < steps; ++i) _mm512_storeu_si512(dst + ((k0 / 4 + i) * W + 16 * g) * 4, r[i]);
      }
    }
  } else if (b.ns == 1) {
    // B is row-major (values for attn.v): interleave 4 rows byte by byte.
    for (int64_t k4 = 0; k4 < k4n; ++k4) {
      for (int g = 0; g < nv; ++g) {
        const int64_t cols = std::max<int64_t>(0, std::min<int64_t>(16, w - 16 * g));
        const __mmask16 mk = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
        __m128i r[4];
        for (int t = 0; t < 4; ++t) {
          const int64_t k = 4 * k4 + t;
          r[t] = k < K ? _mm_maskz_loadu_epi8(mk, b.data + k * b.ks + n0 + 16 * g) : _mm_setzero_si128();
        }
        const __m128i lo01 = _mm_unpacklo_epi8(r[0], r[1]), hi01 = _mm_unpackhi_epi8(r[0], r[1]);
        const __m128i lo23 = _mm_unpacklo_epi8(r[2], r[3]), hi23 = _mm_unpackhi_epi8(r[2], r[3]);
        int8_t* d = dst + (k4 * W + 16 * g) * 4;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 0), _mm_unpacklo_epi16(lo01, lo23));   // columns 0-3
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 16), _mm_unpackhi_epi16(lo01, lo23));  // columns 4-7
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 32), _mm_unpacklo_epi16(hi01, hi23));  // columns 8-11
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 48), _mm_unpackhi_epi16(hi01, hi23));  // columns 12-15
      }
    }
  } else {
    // Any other strides: one byte at a time.
    for (int64_t k4 = 0; k4 < k4n; ++k4) {
      for (int64_t j = 0; j < W; ++j) {
        for (int64_t t = 0; t < 4; ++t) {
          const int64_t k = 4 * k4 + t;
          dst[(k4 * W + j) * 4 + t] = (j < w && k < K) ? b.data[k * b.ks + (n0 + j) * b.ns] : 0;
        }
      }
    }
  }
  // Column sums with the same instruction: vpdpbusd(acc, ones, B) adds the 4 bytes of each column.
  const __m512i ones = _mm512_set1_epi8(1);
  for (int g = 0; g < nv; ++g) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < k4n; ++k4) {
      acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(dst + (k4 * W + 16 * g) * 4));
    }
    _mm512_storeu_si512(colsum + 16 * g, acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Epilogue: corrections, requantization, store, one 16-lane vector at a time.

QLAB_VNNI_INLINE __m512i requant_fixed16(__m512i x, __m512i qm, __m512i ls, __m512i rs, bool any_lshift) {
  const __m512i imax = _mm512_set1_epi32(INT32_MAX), imin = _mm512_set1_epi32(INT32_MIN);
  const __m512i one = _mm512_set1_epi32(1);
  // saturating left shift (only for multipliers >= 1)
  __m512i y = x;
  if (any_lshift) {
    y = _mm512_sllv_epi32(x, ls);
    y = _mm512_mask_mov_epi32(y, _mm512_cmpgt_epi32_mask(x, _mm512_srav_epi32(imax, ls)), imax);
    y = _mm512_mask_mov_epi32(y, _mm512_cmplt_epi32_mask(x, _mm512_srav_epi32(imin, ls)), imin);
  }
  // srdhm(y, qm) = floor((y*qm + 2^30) / 2^31), see gemm_avx2.cpp
  const __m512i nudge = _mm512_set1_epi64(int64_t{1} << 30);
  __m512i pe = _mm512_add_epi64(_mm512_mul_epi32(y, qm), nudge);
  __m512i po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(y, 32), _mm512_srli_epi64(qm, 32)), nudge);
  pe = _mm512_srli_epi64(pe, 31);
  po = _mm512_slli_epi64(_mm512_srli_epi64(po, 31), 32);
  y = _mm512_mask_blend_epi32(__mmask16(0xAAAA), pe, po);
  // rounding right shift, ties away from zero
  const __m512i mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, rs), one);
  const __m512i rem = _mm512_and_si512(y, mask);
  const __m512i thr = _mm512_sub_epi32(_mm512_srli_epi32(mask, 1), _mm512_srai_epi32(y, 31));
  const __m512i res = _mm512_srav_epi32(y, rs);
  return _mm512_mask_add_epi32(res, _mm512_cmpgt_epi32_mask(rem, thr), res, one);
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
  int32_t zo, lo, hi;  // lo already includes the ReLU
  float relu_f;        // Float32 output: 0 with ReLU, -inf without
  int32_t relu_i;      // Int32 output: 0 with ReLU, INT32_MIN without
  int8_t flip;         // 8-bit outputs: 0x80 for uint8 (stored as int8 + 128), 0 for int8
};

// 16 bytes at dst, the valid ones only. The empty asm keeps the narrowing in a register:
// GCC would otherwise fuse it with the store into the memory form of vpmovdb / vpmovsdb,
// which is several times slower on AMD Zen 4.
QLAB_VNNI_INLINE void store16(void* dst, __mmask16 mk, __m128i b) {
  asm("" : "+v"(b));
  _mm_mask_storeu_epi8(dst, mk, b);
}

// One finisher per output kind: x = sum_k (a - za)(b - zb) + bias for the 16 columns
// [c, c + 16) of one output row (mk: the valid ones), written at out[idx]. Same arithmetic as requant.h.
struct FinishInt32 {
  QLAB_VNNI_INLINE static void run(__m512i x, int64_t c, __mmask16 mk, const FinishConsts& f, void* out, int64_t idx) {
    (void)c;
    x = _mm512_max_epi32(x, _mm512_set1_epi32(f.relu_i));
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(out) + idx, mk, x);
  }
};

struct FinishFloat32 {  // float(x) * sa*sb[c] + bias[c]
  QLAB_VNNI_INLINE static void run(__m512i x, int64_t c, __mmask16 mk, const FinishConsts& f, void* out, int64_t idx) {
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(f.scale + c));
    y = _mm512_add_ps(y, _mm512_loadu_ps(f.fbias + c));
    y = _mm512_max_ps(y, _mm512_set1_ps(f.relu_f));
    _mm512_mask_storeu_ps(static_cast<float*>(out) + idx, mk, y);
  }
};

struct FinishQ8Float {  // clamp(nearbyint((float(x) + fbias[c]) * scale[c]) + zo, lo, hi), the clamp done in float
  QLAB_VNNI_INLINE static void run(__m512i x, int64_t c, __mmask16 mk, const FinishConsts& f, void* out, int64_t idx) {
    __m512 y = _mm512_add_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(f.fbias + c));
    y = _mm512_mul_ps(y, _mm512_loadu_ps(f.scale + c));
    y = _mm512_max_ps(y, _mm512_set1_ps(static_cast<float>(f.lo - f.zo)));
    y = _mm512_min_ps(y, _mm512_set1_ps(static_cast<float>(f.hi - f.zo)));
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(y), _mm512_set1_epi32(f.zo));  // round half to even
    store16(static_cast<uint8_t*>(out) + idx, mk, _mm512_cvtepi32_epi8(q));  // in [lo, hi]: truncation is exact
  }
};

template <bool RELU, bool FBIAS>
struct FinishQ8FloatNoOverflow {
  // Epilogue::no_overflow: |(float(x) + fbias) * scale| < 2^31 - 256, so the conversion cannot
  // overflow and q + zo - 128 stays in int32: saturating to [-128, 127] while narrowing (vpmovsdb)
  // is the clamp, and uint8 is that range shifted by 128 (flip the top bit). Two float ops fewer
  // than FinishQ8Float.
  QLAB_VNNI_INLINE static void run(__m512i x, int64_t c, __mmask16 mk, const FinishConsts& f, void* out, int64_t idx) {
    const int32_t shift = f.flip ? 128 : 0;
    __m512 y = _mm512_cvtepi32_ps(x);
    if (FBIAS) y = _mm512_add_ps(y, _mm512_loadu_ps(f.fbias + c));
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(y, _mm512_loadu_ps(f.scale + c)));
    q = _mm512_add_epi32(q, _mm512_set1_epi32(f.zo - shift));
    if (RELU) q = _mm512_max_epi32(q, _mm512_set1_epi32(f.lo - shift));
    const __m128i b = _mm_xor_si128(_mm512_cvtsepi32_epi8(q), _mm_set1_epi8(f.flip));
    store16(static_cast<uint8_t*>(out) + idx, mk, b);
  }
};

struct FinishQ8Fixed {  // clamp(rounding_rshift(srdhm(sat_lshift(x), qmul)) + zo, lo, hi), integers only
  QLAB_VNNI_INLINE static void run(__m512i x, int64_t c, __mmask16 mk, const FinishConsts& f, void* out, int64_t idx) {
    __m512i q = requant_fixed16(x, _mm512_loadu_si512(f.qmul + c), _mm512_loadu_si512(f.lshift + c),
                                _mm512_loadu_si512(f.rshift + c), f.any_lshift);
    q = _mm512_max_epi32(q, _mm512_set1_epi32(f.lo - f.zo));
    q = _mm512_min_epi32(q, _mm512_set1_epi32(f.hi - f.zo));
    q = _mm512_add_epi32(q, _mm512_set1_epi32(f.zo));
    store16(static_cast<uint8_t*>(out) + idx, mk, _mm512_cvtepi32_epi8(q));
  }
};

int finisher_index(const Epilogue& e) {
  if (e.kind == OutKind::Int32) return 0;
  if (e.kind == OutKind::Float32) return 1;
  if (e.mode == Requant::Fixed) return 3;
  if (e.no_overflow) return 4 + (e.relu ? 1 : 0) + (e.fbias ? 2 : 0);
  return 2;
}

// What the VNNI and AMX paths set up per task: A's rows, the row offsets -zb * rowsum(A) (zero when
// B is symmetric), K * za * zb, and the finishers' constants (a missing float bias reads zeros, a
// disabled ReLU clamps at the type's minimum). za is the zero point of A's uint8 view.
struct TaskSetup {
  RowsA rows;
  std::vector<int32_t> row_off;
  std::vector<float> zeros;
  FinishConsts fin{};
  int32_t za = 0, zb = 0, kzz = 0;
  int64_t kp = 0;
  const int32_t* row_offsets(int64_t m) const { return zb != 0 ? row_off.data() + m : nullptr; }
};

QLAB_VNNI void setup_task(const Task& t, const Epilogue& e, int64_t kp, int64_t mr, TaskSetup* s) {
  const int64_t M = t.m1 - t.m0, K = t.K;
  s->kp = kp;
  s->za = t.a.zp + (t.a.is_signed ? 128 : 0);
  s->zb = t.b.zp;
  s->kzz = static_cast<int32_t>(static_cast<int64_t>(K) * s->za * s->zb);  // wraps mod 2^32
  prepare_a(t.a, t.m0, M, K, kp, mr, &s->rows);
  s->row_off.assign(static_cast<size_t>(M + mr), 0);
  if (s->zb != 0) {
    row_sums(s->rows.a, s->rows.lda, M, K, s->row_off.data());
    for (int64_t r = 0; r < M; ++r) s->row_off[r] = wrap_mul(-s->zb, s->row_off[r]);
  }
  FinishConsts& fin = s->fin;
  fin.scale = e.scale;
  fin.fbias = e.fbias;
  if (!fin.fbias) {
    s->zeros.assign(static_cast<size_t>(t.n1 + NR), 0.0f);
    fin.fbias = s->zeros.data();
  }
  fin.qmul = e.qmul;
  fin.lshift = e.lshift;
  fin.rshift = e.rshift;
  fin.any_lshift = e.any_lshift;
  fin.zo = e.zo;
  fin.lo = e.lo;
  fin.hi = e.hi;
  fin.relu_f = e.relu ? 0.0f : -std::numeric_limits<float>::infinity();
  fin.relu_i = e.relu ? 0 : INT32_MIN;
  fin.flip = e.kind == OutKind::UInt8 ? static_cast<int8_t>(-128) : 0;
}

// The column panel starting at column n: packed B (ceil(w / 16) groups of 16 columns, the groups a
// tile reads) and its column offsets bias - za * colsum + K * za * zb.
QLAB_VNNI void column_offsets(const Epilogue& e, const TaskSetup& s, int64_t n, int nv, const int32_t* colsum,
                              int32_t* coff) {
  for (int64_t j = 0; j < 16 * nv; ++j) {
    int32_t off = wrap_add(wrap_mul(-s.za, colsum[j]), s.kzz);
    if (e.bias) off = wrap_add(off, e.bias[n + j]);
    coff[j] = off;
  }
}

QLAB_VNNI void pack_panel(const Task& t, const Epilogue& e, const TaskSetup& s, int64_t n, int8_t* dst, int32_t* coff) {
  const int64_t w = std::min<int64_t>(NR, t.n1 - n);
  const int nv = static_cast<int>((w + 15) / 16);
  alignas(64) int32_t colsum[NR];
  pack_b(t.b, n, w, t.K, s.kp, nv, dst, colsum);
  column_offsets(e, s, n, nv, colsum, coff);
}

// The panel at column n (a multiple of NR): packed now into buf, or found in the prepacked weight (Task::packed,
// whose layout differs only in K's padding, to 64: a path that pads K less reads fewer k-quads of the same panel).
QLAB_VNNI const int8_t* panel_at(const Task& t, const Epilogue& e, const TaskSetup& s, int64_t n, int8_t* buf,
                                 int32_t* coff) {
  if (!t.packed) {
    pack_panel(t, e, s, n, buf, coff);
    return buf;
  }
  const int8_t* bp = t.packed + (n / NR) * t.packed_stride;
  int32_t colsum[NR];
  std::memcpy(colsum, bp + t.packed_colsum, sizeof(colsum));
  column_offsets(e, s, n, static_cast<int>((std::min<int64_t>(NR, t.n1 - n) + 15) / 16), colsum, coff);
  return bp;
}

// The order both paths go over C (the task's rows, panels of NR columns). All of B fits in L2 (attention: K or N is
// the head dim): pack it once, then sweep the rows, so each block of output rows is written left to right while its
// A rows stay in L1. A large B (a Linear weight): one panel at a time, used by every block of rows while it is hot.
// run(p, mt, panel, col_off) computes and finishes rows mt .. mt + mr - 1 of panel p.
template <class Run>
QLAB_VNNI void sweep_panels(const Task& t, const Epilogue& e, const TaskSetup& s, int64_t mr, int64_t panel_bytes,
                            Run&& run) {
  const int64_t M = t.m1 - t.m0, npanels = (t.n1 - t.n0 + NR - 1) / NR;
  if (npanels * panel_bytes <= 256 * 1024) {
    std::unique_ptr<Aligned64<int8_t>> bpack;
    if (!t.packed) bpack = std::make_unique<Aligned64<int8_t>>(static_cast<size_t>(npanels * panel_bytes));
    std::vector<const int8_t*> bp(static_cast<size_t>(npanels));
    std::vector<int32_t> col_off(static_cast<size_t>(npanels * NR));
    for (int64_t p = 0; p < npanels; ++p) {
      bp[p] =
          panel_at(t, e, s, t.n0 + p * NR, bpack ? bpack->data() + p * panel_bytes : nullptr, col_off.data() + p * NR);
    }
    for (int64_t mt = 0; mt < M; mt += mr) {
      for (int64_t p = 0; p < npanels; ++p) run(p, mt, bp[p], col_off.data() + p * NR);
    }
  } else {
    std::unique_ptr<Aligned64<int8_t>> bpack;
    if (!t.packed) bpack = std::make_unique<Aligned64<int8_t>>(static_cast<size_t>(panel_bytes));
    alignas(64) int32_t col_off[NR];
    for (int64_t p = 0; p < npanels; ++p) {
      const int8_t* bp = panel_at(t, e, s, t.n0 + p * NR, bpack ? bpack->data() : nullptr, col_off);
      for (int64_t mt = 0; mt < M; mt += mr) run(p, mt, bp, col_off);
    }
  }
}

}  // namespace
}  // namespace qlab

#endif  // x86
