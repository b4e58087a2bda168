// The AMX path (Sapphire Rapids and newer): tdpbusd multiplies a 16 x 64 uint8 tile of A by a
// 64 x 16 int8 tile of B into a 16 x 16 int32 tile of C, 16384 multiply-adds per instruction,
// in full int32 precision like vpdpbusd. B's tile layout is the VNNI panel layout of vnni_common.h
// ([k/4][columns][4], rows of 16 columns x 4 bytes), so pack_b serves both paths; K is padded
// with zeros to a multiple of 64 (one tile row of A). The corrections and the finishers are the
// VNNI path's: C goes through a small int32 buffer, then every 16-lane vector gets
// column offset + row offset and is finished as on the VNNI path.
//
// Block: 16 rows x 48 columns, C in tmm0-2, A in tmm3, B in tmm4-6.
// Every AMX function carries a target attribute; ops.cpp calls it only when amx_usable().
#include "vnni_common.h"

#if defined(__x86_64__) || defined(__i386__)

namespace qlab {
namespace {

constexpr int AMX_MR = 16;

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

#define QLAB_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))

QLAB_AMX void amx_config() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 7; ++i) {  // every tile used is 16 rows x 64 bytes
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  // Not _tile_loadconfig: GCC's version tells the compiler it reads only 8 bytes of cfg, so the
  // stores of rows/colsb may be dropped as dead (tiles left unconfigured: SIGILL on first use).
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

// One 16-row block of A (in tile layout, row stride lda, kp bytes per row, kp % 64 == 0) times the
// packed panel bp (nt = 1..3 tiles of 16 columns, packed with nv = nt), stored as int32 into c ([16][NR], row stride
// 4*NR bytes).
QLAB_AMX void amx_block(const uint8_t* a, int64_t lda, const int8_t* bp, int64_t kp, int nt, int32_t* c) {
  const int64_t bstride = 64 * nt;  // bytes between two k-quads of one column (pack_b with nv = nt)
  // GCC's tile load/store intrinsics are asm statements that take only the addresses: they do not
  // tell the compiler that memory is read or written. The barriers keep the packing stores before
  // the tile loads and the reads of c after the tile stores.
  asm volatile("" : : : "memory");
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  for (int64_t k = 0; k < kp; k += 64) {
    _tile_loadd(3, a + k, lda);
    const int8_t* b = bp + (k / 4) * bstride;
    _tile_loadd(4, b, bstride);
    _tile_dpbusd(0, 3, 4);
    if (nt > 1) {
      _tile_loadd(5, b + 64, bstride);
      _tile_dpbusd(1, 3, 5);
    }
    if (nt > 2) {
      _tile_loadd(6, b + 128, bstride);
      _tile_dpbusd(2, 3, 6);
    }
  }
  _tile_stored(0, c, 4 * NR);
  if (nt > 1) _tile_stored(1, c + 16, 4 * NR);
  if (nt > 2) _tile_stored(2, c + 32, 4 * NR);
  asm volatile("" : : : "memory");
}

// A block whose int32 results the tiles just stored to a buffer, to be finished.
struct AmxPending {
  const int32_t* c;        // [16][NR] int32
  const int32_t* col_off;  // the panel's column offsets
  const int32_t* row_off;  // the block's row offsets, or null
  int64_t rows, w, m, n;
};

// Corrections and the finisher for one stored block: the VNNI path's arithmetic, read from memory.
template <class Finish>
QLAB_AMX void amx_finish(const AmxPending& b, const FinishConsts& fin, void* out, int64_t ldc) {
  const FinishConsts f = fin;
  const int nt = static_cast<int>((b.w + 15) / 16);
  __m512i coff[NV_MAX];
  __mmask16 mk[NV_MAX];
  for (int v = 0; v < nt; ++v) {
    coff[v] = _mm512_loadu_si512(b.col_off + 16 * v);
    const int64_t cnt = std::min<int64_t>(16, b.w - 16 * v);
    mk[v] = cnt >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1);
  }
  if (b.row_off) {
    for (int64_t r = 0; r < b.rows; ++r) {
      const __m512i roff = _mm512_set1_epi32(b.row_off[r]);
      const int64_t idx = (b.m + r) * ldc + b.n;
      for (int v = 0; v < nt; ++v) {
        const __m512i x = _mm512_add_epi32(_mm512_load_si512(b.c + r * NR + 16 * v), coff[v]);
        Finish::run(_mm512_add_epi32(x, roff), b.n + 16 * v, mk[v], f, out, idx + 16 * v);
      }
    }
  } else {  // symmetric B (zb = 0): no row offsets
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t idx = (b.m + r) * ldc + b.n;
      for (int v = 0; v < nt; ++v) {
        Finish::run(_mm512_add_epi32(_mm512_load_si512(b.c + r * NR + 16 * v), coff[v]), b.n + 16 * v, mk[v], f, out,
                    idx + 16 * v);
      }
    }
  }
}

using AmxFinishFn = void (*)(const AmxPending&, const FinishConsts&, void*, int64_t);

constexpr AmxFinishFn kAmxFinish[] = {
    amx_finish<FinishInt32>,
    amx_finish<FinishFloat32>,
    amx_finish<FinishQ8Float>,
    amx_finish<FinishQ8Fixed>,
    amx_finish<FinishQ8FloatNoOverflow<false, false>>,
    amx_finish<FinishQ8FloatNoOverflow<true, false>>,
    amx_finish<FinishQ8FloatNoOverflow<false, true>>,
    amx_finish<FinishQ8FloatNoOverflow<true, true>>,
};

}  // namespace

bool amx_usable() {
  // CPUID.(EAX=7, ECX=0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8; then Linux must grant this
  // process the 8 KB of tile state (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18 XTILEDATA).
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!((edx >> 24) & 1) || !((edx >> 25) & 1)) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

QLAB_AMX void gemm_amx(const Task& t, const Epilogue& e) {
  const int64_t M = t.m1 - t.m0;
  const int64_t kp = round_up(std::max<int64_t>(t.K, 1), 64);
  TaskSetup s;
  setup_task(t, e, kp, AMX_MR, &s);
  const AmxFinishFn finish = kAmxFinish[finisher_index(e)];

  const int64_t panel_bytes = kp * NR;
  // Each block is finished as soon as its tiles are stored. (Finishing block i - 1 while block i's tiles are stored,
  // a software pipeline, was slower on a Sapphire Rapids core: the loop with a 197 x 768 x 3072 weight ~9% slower.)
  alignas(64) int32_t cbuf[AMX_MR * NR];
  auto run_block = [&](int64_t p, int64_t mt, const int8_t* bp, const int32_t* coff) {
    const int64_t n = t.n0 + p * NR;
    const int64_t w = std::min<int64_t>(NR, t.n1 - n);
    int64_t ld = 0;
    const uint8_t* ab = s.rows.block(mt, &ld);
    amx_block(ab, ld, bp, kp, static_cast<int>((w + 15) / 16), cbuf);
    finish(AmxPending{cbuf, coff, s.row_offsets(mt), std::min<int64_t>(AMX_MR, M - mt), w, t.m0 + mt, n}, s.fin, t.out,
           t.ldc);
  };

  amx_config();
  sweep_panels(t, e, s, AMX_MR, panel_bytes, run_block);

  _tile_release();
}

}  // namespace qlab

#else  // not x86: never selected

namespace qlab {
void gemm_amx(const Task& t, const Epilogue& e) { gemm_scalar(t, e); }
bool amx_usable() { return false; }
}  // namespace qlab

#endif
