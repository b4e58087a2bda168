// The AVX-512 VNNI path: vpdpbusd, 64 uint8 x int8 multiply-adds per instruction.
//
// vpdpbusd(acc, a, b) adds, in each of the 16 int32 lanes, a[4i]*b[4i] + ... + a[4i+3]*b[4i+3]
// with a read as uint8 and b as int8, in full int32 precision: unlike AVX2's
// vpmaddubsw there is no int16 intermediate, so it never saturates.
//
// Zero points, the int8-A shift and the packing are vnni_common.h's (shared with the AMX path).
//
// The int32 accumulator is then requantized and stored straight from the registers
// (the finishers below), one branch-free variant per output type chosen once per task.
//
// Blocking: micro-tile of MR = 8 rows x up to 48 columns (3 zmm): 24 accumulators.
// Packed B panel: [k/4][48 columns][4] int8, so one 64-byte load holds 16 columns x 4 k.
// uint8 A rows with unit column stride are read in place, also when K % 4 != 0 (see RowsA);
// other A is copied (with the top bit flipped for int8, zero padded to a multiple of 4).
// Every SIMD function carries a target attribute, so the file builds with generic
// flags; ops.cpp calls it only when CPUID reports AVX-512F/BW/VL/DQ and VNNI.
#include "vnni_common.h"

#if defined(__x86_64__) || defined(__i386__)

namespace qlab {
namespace {

constexpr int MR = 8;  // rows per micro-tile
#ifndef QLAB_PF
#define QLAB_PF 768
#endif
constexpr int PF = QLAB_PF;

// ---------------------------------------------------------------------------------------------
// Micro-kernel: an MT x 16*NV tile of C (MT = MR, or 1, 2, 4 for the last rows: a one-token linear would
// otherwise spend 7/8 of its vpdpbusd on padding), accumulated in registers, finished in registers.
//   a: MR rows of A (row stride lda, 4*k4n bytes each); bp: the packed B panel;
//   rows / w: how many rows and columns of the tile are real; (m, n): its position in C.

template <int MT, int NV, class Finish>
QLAB_VNNI void tile(const uint8_t* a, int64_t lda, const int8_t* bp, int64_t k4n, int64_t rows, int64_t w,
                    const int32_t* col_off, const int32_t* row_off, const FinishConsts& fin, void* out, int64_t ldc,
                    int64_t m, int64_t n) {
  // The accumulators start at the zero-point (and bias) corrections, so they end at
  // sum_k (a - za)(b - zb) + bias with no extra work after the loop.
  __m512i acc[MT][NV];
  __m512i coff[NV];
#pragma GCC unroll 3
  for (int v = 0; v < NV; ++v) coff[v] = _mm512_loadu_si512(col_off + 16 * v);
#pragma GCC unroll 8
  for (int r = 0; r < MT; ++r) {
    const __m512i roff = _mm512_set1_epi32(row_off ? row_off[r] : 0);
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[r][v] = row_off ? _mm512_add_epi32(coff[v], roff) : coff[v];
  }
  for (int64_t k = 0; k < k4n; ++k) {
    __m512i bv[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp + 64 * v);
    bp += 64 * NV;
#pragma GCC unroll 8
    for (int r = 0; r < MT; ++r) {
      int32_t quad;  // a[r, 4k .. 4k+3] as one 32-bit word, broadcast to the 16 lanes
      std::memcpy(&quad, a + r * lda + 4 * k, sizeof(quad));
      const __m512i av = _mm512_set1_epi32(quad);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
    }
  }
  const FinishConsts f = fin;  // a local copy: stores through `out` cannot alias it, so its fields stay in registers
  __mmask16 mk[NV];
#pragma GCC unroll 3
  for (int v = 0; v < NV; ++v) {  // the valid columns of each vector (the last panel may be partial)
    const int64_t cnt = std::min<int64_t>(16, w - 16 * v);  // >= 1: NV = ceil(w / 16)
    mk[v] = cnt >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1);
  }
#pragma GCC unroll 8
  for (int r = 0; r < MT; ++r) {
    if (r >= rows) break;
    const int64_t idx = (m + r) * ldc + n;
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) Finish::run(acc[r][v], n + 16 * v, mk[v], f, out, idx + 16 * v);
  }
}

using TileFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int64_t, const int32_t*,
                        const int32_t*, const FinishConsts&, void*, int64_t, int64_t, int64_t);

template <int MT, class Finish>
constexpr std::array<TileFn, NV_MAX + 1> tiles_mt = {nullptr, tile<MT, 1, Finish>, tile<MT, 2, Finish>,
                                                     tile<MT, 3, Finish>};
// [rows class][nv]: rows 1, 2, 3-4, 5-8
template <class Finish>
constexpr std::array<std::array<TileFn, NV_MAX + 1>, 4> tiles_for = {tiles_mt<1, Finish>, tiles_mt<2, Finish>,
                                                                     tiles_mt<4, Finish>, tiles_mt<MR, Finish>};
inline int rows_class(int64_t rows) { return rows >= 5 ? 3 : rows >= 3 ? 2 : static_cast<int>(rows) - 1; }

// kTiles[finisher][rows class][nv]; the finisher is chosen once per task from the Epilogue.
constexpr std::array<std::array<TileFn, NV_MAX + 1>, 4> kTiles[] = {
    tiles_for<FinishInt32>,
    tiles_for<FinishFloat32>,
    tiles_for<FinishQ8Float>,
    tiles_for<FinishQ8Fixed>,
    tiles_for<FinishQ8FloatNoOverflow<false, false>>,
    tiles_for<FinishQ8FloatNoOverflow<true, false>>,
    tiles_for<FinishQ8FloatNoOverflow<false, true>>,
    tiles_for<FinishQ8FloatNoOverflow<true, true>>,
};

}  // namespace

void gemm_avx512_vnni(const Task& t, const Epilogue& e) {
  const int64_t M = t.m1 - t.m0;
  const int64_t kp = round_up(t.K, 4), k4n = kp / 4;
  TaskSetup s;
  setup_task(t, e, kp, MR, &s);
  const auto& tiles = kTiles[finisher_index(e)];

  const int64_t panel_bytes = kp * NR;
  auto run_tile = [&](int64_t p, int64_t mt, const int8_t* bp, const int32_t* coff) {
    const int64_t n = t.n0 + p * NR;
    const int64_t w = std::min<int64_t>(NR, t.n1 - n);
    int64_t ld = 0;
    const uint8_t* ab = s.rows.block(mt, &ld);
    const int64_t rows = std::min<int64_t>(MR, M - mt);
    tiles[rows_class(rows)][(w + 15) / 16](ab, ld, bp, k4n, rows, w, coff, s.row_offsets(mt), s.fin, t.out, t.ldc,
                                           t.m0 + mt, n);
  };

  sweep_panels(t, e, s, MR, panel_bytes, run_tile);
}

void pack_b_vnni(const MatB& b, int64_t N, int64_t K, int8_t* dst) {
  const int64_t kp = packed_kp(K), pb = packed_panel_bytes(K);
  for (int64_t p = 0; p * NR < N; ++p) {
    const int64_t w = std::min<int64_t>(NR, N - p * NR);
    alignas(64) int32_t colsum[NR] = {};
    pack_b(b, p * NR, w, K, kp, static_cast<int>((w + 15) / 16), dst + p * pb, colsum);
    std::memcpy(dst + p * pb + kp * NR, colsum, sizeof(colsum));
  }
}

}  // namespace qlab

#else  // not x86: never selected

namespace qlab {
void gemm_avx512_vnni(const Task& t, const Epilogue& e) { gemm_scalar(t, e); }
void pack_b_vnni(const MatB&, int64_t, int64_t, int8_t*) {}
}  // namespace qlab

#endif
