// The AMX path (Sapphire Rapids and newer): tdpbusd multiplies a 16 x 64 uint8 tile of A by a
// 64 x 16 int8 tile of B into a 16 x 16 int32 tile of C, 16384 multiply-adds per instruction,
// in full int32 precision like vpdpbusd. B's tile layout is the VNNI panel layout of vnni_common.h
// ([k/4][columns][4], rows of 16 columns x 4 bytes), so pack_b serves both paths; K is padded
// with zeros to a multiple of 64 (one tile row of A). The corrections and the finishers are the
// VNNI path's: C goes through a small int32 buffer, then every 16-lane vector gets
// column offset + row offset and is finished as on the VNNI path.
//
// Block: 32 rows x 32 columns, C in tmm0-3, A in tmm4-5, B in tmm6-7.
// Every AMX function carries a target attribute; ops.cpp calls it only when amx_usable().
#include <type_traits>

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
  for (int i = 0; i < 8; ++i) {  // every tile used is 16 rows x 64 bytes
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  // Not _tile_loadconfig: GCC's version tells the compiler it reads only 8 bytes of cfg, so the
  // stores of rows/colsb may be dropped as dead (tiles left unconfigured: SIGILL on first use).
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

// Block mb of 16 rows of A: in place (row stride ld, a k step 64 bytes further), or copied into tile order (block
// mb, k step ks at tiles + (mb * ksteps + ks) * 1024, so a tile load reads 1 KB in one piece). The copy pays when
// many column pairs read A: a 197 x 768 x 2304 product's tile loop ran a quarter faster; with two pairs (a head's
// P·v) it did not.
struct RowBlocks {
  const RowsA* rows = nullptr;
  const uint8_t* tiles = nullptr;
  int64_t ksteps = 0, kstep = 64;
  const uint8_t* at(int64_t mb, int64_t* ld) const {
    if (tiles) {
      *ld = 64;
      return tiles + mb * ksteps * 1024;
    }
    return rows->block(mb * AMX_MR, ld);  // 16 readable rows (the tail is padded to 16)
  }
};

QLAB_AMX void copy_a_tiles(const TaskSetup& s, int64_t mblocks, int64_t ksteps, uint8_t* dst) {
  for (int64_t mb = 0; mb < mblocks; ++mb) {
    int64_t ld = 0;
    const uint8_t* src = s.rows.block(mb * AMX_MR, &ld);
    for (int64_t ks = 0; ks < ksteps; ++ks) {
      for (int r = 0; r < 16; ++r) {
        _mm512_store_si512(dst + (mb * ksteps + ks) * 1024 + r * 64, _mm512_loadu_si512(src + r * ld + ks * 64));
      }
    }
  }
}

// A block of up to 32 rows x 32 columns: A tiles a0 (rows 0-15) and a1 (rows 16-31, TwoA), B tiles b0 and b1 (the
// next 16 columns, TwoB) with their row strides, C in tmm0-3, stored as int32 to c ([32][32]). Four products per
// four tile loads (a 16 x 48 block needs four loads for three).
template <bool TwoA, bool TwoB, class Between>
QLAB_AMX void amx_block(const RowBlocks& a, int64_t mb, const int8_t* b0, int64_t s0, const int8_t* b1, int64_t s1,
                        const int32_t* coff, int64_t ksteps, int32_t* c, Between&& between) {
  int64_t ld0 = 0, ld1 = 0;
  const uint8_t* a0 = a.at(mb, &ld0);
  const uint8_t* a1 = TwoA ? a.at(mb + 1, &ld1) : nullptr;
  // GCC's tile load/store intrinsics are asm statements that take only the addresses: they do not
  // tell the compiler that memory is read or written. The barriers keep the packing stores before
  // the tile loads and the reads of c after the tile stores.
  asm volatile("" : : : "memory");
  // C starts at the column offsets: 16 int32 loaded with row stride 0 into all 16 rows (no add per output later)
  _tile_loadd(0, coff, 0);
  if (TwoB) _tile_loadd(1, coff + 16, 0);
  if (TwoA) _tile_loadd(2, coff, 0);
  if (TwoA && TwoB) _tile_loadd(3, coff + 16, 0);
  for (int64_t ks = 0; ks < ksteps; ++ks) {
    _tile_loadd(4, a0 + ks * a.kstep, ld0);
    _tile_loadd(6, b0 + ks * 16 * s0, s0);
    _tile_dpbusd(0, 4, 6);
    if (TwoB) {
      _tile_loadd(7, b1 + ks * 16 * s1, s1);
      _tile_dpbusd(1, 4, 7);
    }
    if (TwoA) {
      _tile_loadd(5, a1 + ks * a.kstep, ld1);
      _tile_dpbusd(2, 5, 6);
      if (TwoB) _tile_dpbusd(3, 5, 7);
    }
    between(ks);  // vector work of the previous block while these products run
  }
  asm volatile("" : : : "memory");
  _tile_stored(0, c, 4 * 32);
  if (TwoB) _tile_stored(1, c + 16, 4 * 32);
  if (TwoA) _tile_stored(2, c + 16 * 32, 4 * 32);
  if (TwoA && TwoB) _tile_stored(3, c + 16 * 32 + 16, 4 * 32);
  asm volatile("" : : : "memory");
}

// A block whose int32 results the tiles just stored to a buffer, to be finished.
struct AmxPending {
  const int32_t* c;        // [32][32] int32, column offsets included
  const int32_t* row_off;  // the block's row offsets, or null
  int64_t rows, w, m, n;
};

// Finishers whose per-column constants can be loaded once per block (FinishQ8FloatNoOverflow: Cols, run_with)
template <class F>
struct ColsOnce : std::false_type {};
template <bool RELU, bool FBIAS>
struct ColsOnce<FinishQ8FloatNoOverflow<RELU, FBIAS>> : std::true_type {};

// Row offsets and the finisher for one stored block: the VNNI path's arithmetic, read from memory.
template <class Finish, bool RowOff>
QLAB_AMX void amx_finish_rows(const AmxPending& b, const FinishConsts& f, void* out, int64_t ldc) {
  const int nt = static_cast<int>((b.w + 15) / 16);
  __mmask16 mk[2];
  for (int v = 0; v < nt; ++v) {
    const int64_t cnt = std::min<int64_t>(16, b.w - 16 * v);
    mk[v] = cnt >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1);
  }
  if constexpr (ColsOnce<Finish>::value) {
    typename Finish::Cols k[2];
    for (int v = 0; v < nt; ++v) k[v] = Finish::cols(b.n + 16 * v, f);
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t idx = (b.m + r) * ldc + b.n;
      for (int v = 0; v < nt; ++v) {
        __m512i x = _mm512_load_si512(b.c + r * 32 + 16 * v);
        if (RowOff) x = _mm512_add_epi32(x, _mm512_set1_epi32(b.row_off[r]));
        Finish::run_with(x, k[v], mk[v], f, out, idx + 16 * v);
      }
    }
  } else {
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t idx = (b.m + r) * ldc + b.n;
      for (int v = 0; v < nt; ++v) {
        __m512i x = _mm512_load_si512(b.c + r * 32 + 16 * v);
        if (RowOff) x = _mm512_add_epi32(x, _mm512_set1_epi32(b.row_off[r]));
        Finish::run(x, b.n + 16 * v, mk[v], f, out, idx + 16 * v);
      }
    }
  }
}

template <class Finish>
QLAB_AMX void amx_finish(const AmxPending& b, const FinishConsts& fin, void* out, int64_t ldc) {
  const FinishConsts f = fin;
  if (b.row_off) {
    amx_finish_rows<Finish, true>(b, f, out, ldc);
  } else {  // symmetric B (zb = 0): no row offsets
    amx_finish_rows<Finish, false>(b, f, out, ldc);
  }
}

// Rows [r0, r1) of a stored block
AmxPending slice(const AmxPending& b, int64_t r0, int64_t r1) {
  return AmxPending{b.c + r0 * 32, b.row_off ? b.row_off + r0 : nullptr, r1 - r0, b.w, b.m + r0, b.n};
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
  const int64_t kp = round_up(std::max<int64_t>(t.K, 1), 64), ksteps = kp / 64;
  TaskSetup s;
  setup_task(t, e, kp, AMX_MR, &s);
  const AmxFinishFn finish = kAmxFinish[finisher_index(e)];
  const int64_t mblocks = (M + AMX_MR - 1) / AMX_MR;
  RowBlocks a;
  a.rows = &s.rows;
  a.ksteps = ksteps;
  std::unique_ptr<Aligned64<uint8_t>> at;
  if (t.n1 - t.n0 > 128 && mblocks > 1) {
    at = std::make_unique<Aligned64<uint8_t>>(static_cast<size_t>(mblocks * 16 * kp));
    copy_a_tiles(s, mblocks, ksteps, at->data());
    a.tiles = at->data();
    a.kstep = 1024;
  }

  const int64_t npanels = (t.n1 - t.n0 + NR - 1) / NR;
  const int64_t panel_bytes = kp * NR;
  // Panels in groups: all of them when B is prepacked or small, else two at a time (packed per group, so the buffer
  // stays 2 panels). Within a group, pairs of 16-column tiles (a pair may straddle two panels: each tile load takes
  // its own row stride), each pair for every 32 rows of A, finished as soon as its tiles are stored. (Finishing
  // block i - 1 while block i's tiles are stored, a software pipeline, was slower on a Sapphire Rapids core.)
  const bool whole = t.packed || npanels * panel_bytes <= 256 * 1024;
  const int64_t group = whole ? std::max<int64_t>(npanels, 1) : 2;
  std::unique_ptr<Aligned64<int8_t>> bpack;
  if (!t.packed) bpack = std::make_unique<Aligned64<int8_t>>(static_cast<size_t>(group * panel_bytes));
  std::vector<const int8_t*> bp(static_cast<size_t>(group));
  std::vector<int32_t> col_off(static_cast<size_t>(group * NR));
  alignas(64) int32_t cbuf[2][32 * 32];
  AmxPending prev{};
  bool have = false;
  int cur = 0;

  amx_config();
  for (int64_t p0 = 0; p0 < npanels; p0 += group) {
    const int64_t p1 = std::min(npanels, p0 + group);
    for (int64_t p = p0; p < p1; ++p) {
      bp[p - p0] = panel_at(t, e, s, t.n0 + p * NR, bpack ? bpack->data() + (p - p0) * panel_bytes : nullptr,
                            col_off.data() + (p - p0) * NR);
    }
    const int64_t nc0 = t.n0 + p0 * NR, nc1 = std::min(t.n1, t.n0 + p1 * NR);
    const int64_t tiles = (nc1 - nc0 + 15) / 16;
    // tile j of the group: panel j / 3, its 16-column group j % 3; a panel of nt tiles has rows of 64 * nt bytes
    const int64_t n_end = t.packed ? t.packed_n : t.n1;  // a prepacked weight's panels are as wide as the weight's
    auto tile = [&](int64_t j, int64_t* stride) {
      const int64_t p = j / 3, n = nc0 + p * NR;
      *stride = 64 * std::min<int64_t>(3, (n_end - n + 15) / 16);
      return bp[p] + (j % 3) * 64;
    };
    // One 32 x 32 block: tile pair j (columns 16j .. 16j + 31 of the group), row blocks mb, mb + 1
    auto block = [&](int64_t j, int64_t mb) {
      const bool two_b = j + 1 < tiles, two_a = mb + 1 < mblocks;
      int64_t s0 = 0, s1 = 0;
      const int8_t* b0 = tile(j, &s0);
      const int8_t* b1 = two_b ? tile(j + 1, &s1) : nullptr;
      int32_t* c = cbuf[cur];
      // the previous block's rows, finished a few per k step of this one
      const int64_t per = have ? (prev.rows + ksteps - 1) / ksteps : 0;
      auto between = [&](int64_t ks) {
        const int64_t r0 = ks * per, r1 = std::min(prev.rows, r0 + per);
        if (r0 < r1) finish(slice(prev, r0, r1), s.fin, t.out, t.ldc);
      };
      if (two_a && two_b) {
        amx_block<true, true>(a, mb, b0, s0, b1, s1, col_off.data() + 16 * j, ksteps, c, between);
      } else if (two_a) {
        amx_block<true, false>(a, mb, b0, s0, b1, s1, col_off.data() + 16 * j, ksteps, c, between);
      } else if (two_b) {
        amx_block<false, true>(a, mb, b0, s0, b1, s1, col_off.data() + 16 * j, ksteps, c, between);
      } else {
        amx_block<false, false>(a, mb, b0, s0, b1, s1, col_off.data() + 16 * j, ksteps, c, between);
      }
      const int64_t m = mb * AMX_MR, n = nc0 + 16 * j;
      prev = AmxPending{c, s.row_offsets(m), std::min<int64_t>(32, M - m), std::min<int64_t>(32, nc1 - n), t.m0 + m, n};
      have = true;
      cur ^= 1;
    };
    // A group's B within 256 KB stays in L2: rows outer, each 32-row band of C written whole. A larger B: column
    // pairs outer, the pair's B in L1 for every row block (B read once; with rows outer, a 197 x 768 x 2304
    // product ran at 41% of the tile loop's peak instead of 53%).
    if ((p1 - p0) * panel_bytes <= 256 * 1024) {
      for (int64_t mb = 0; mb < mblocks; mb += 2) {
        for (int64_t j = 0; j < tiles; j += 2) block(j, mb);
      }
    } else {
      for (int64_t j = 0; j < tiles; j += 2) {
        for (int64_t mb = 0; mb < mblocks; mb += 2) block(j, mb);
      }
    }
    if (have) finish(prev, s.fin, t.out, t.ldc);
    have = false;
  }
  _tile_release();
}

}  // namespace qlab

#else  // not x86: never selected

namespace qlab {
void gemm_amx(const Task& t, const Epilogue& e) { gemm_scalar(t, e); }
bool amx_usable() { return false; }
}  // namespace qlab

#endif
