// What limits an AMX int8 linear: the tile products alone, and with the AVX-512 epilogue that turns their int32
// results into uint8 codes. A stand-alone program (no torch, no qlab), built and run by bench_amx_tiles.py.
//
//   amx_tiles M K N rounds   ->   one JSON object: per variant, the milliseconds of every round
//
// The loops are qlab's gemm_amx for a prepacked weight (qlab/csrc/gemm_amx.cpp) reduced to their bones. B is in
// qlab's packed layout: 48-column panels ([K/4][48][4] int8, K * 48 + 192 bytes apart), so a 16-column tile of B is
// 16 rows of 64 bytes, 192 bytes apart. A is uint8, row-major. Variants, timed in turns within every round:
//   tiles_16x48           qlab's loop: per 16 rows of A (read in place) x one panel, 3 int32 tiles accumulate
//                         K/64 tdpbusd each (four tile loads per three products)
//   finish_16x48          + each block finished (int32 -> float * scale -> uint8) right after its tile stores
//   tiles_32x32           per 32 rows x 32 columns (two A tiles, two B tiles, four C tiles: four loads per four
//                         products), A read in place
//   tiles_32x32_a_tiles   the same with A copied once into tile order (each A tile 1 KB in one piece)
//   finish_32x32          + each block finished right after its tile stores
//   finish_32x32_spread   + the previous block finished a few rows per k step of this one (tried in qlab, not kept:
//                         see benchmarks/README.md)
//   finish_alone          the finishing of every block from a buffer in L1, no tile instruction
// Blocks run column pairs (or panels) outer, rows inner; the last 16 rows (M not a multiple of 32) use one A tile.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define AMX __attribute__((target("avx512f,avx512bw,avx512vl,amx-tile,amx-int8")))

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

AMX void configure() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  asm volatile("ldtilecfg %0" : : "m"(cfg));  // not _tile_loadconfig (see qlab/csrc/gemm_amx.cpp)
}

// 16 rows of A (row stride lda) times one 48-column panel: 3 tiles of 16 x 16 int32, stored to c ([16][48]).
AMX void block16x48(const uint8_t* a, int64_t lda, const int8_t* b, int64_t K, int32_t* c) {
  asm volatile("" : : : "memory");
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  for (int64_t k = 0; k < K; k += 64) {
    const int8_t* bk = b + (k / 4) * 192;
    _tile_loadd(3, a + k, lda);
    _tile_loadd(4, bk, 192);
    _tile_dpbusd(0, 3, 4);
    _tile_loadd(5, bk + 64, 192);
    _tile_dpbusd(1, 3, 5);
    _tile_loadd(6, bk + 128, 192);
    _tile_dpbusd(2, 3, 6);
  }
  _tile_stored(0, c, 192);
  _tile_stored(1, c + 16, 192);
  _tile_stored(2, c + 32, 192);
  asm volatile("" : : : "memory");
}

// The int32 -> uint8 epilogue of one row of a block (16 x nv columns, C row stride ldc_c), as qlab's
// FinishQ8FloatNoOverflow: (float(acc + offset) * scale) rounded, plus the zero point, saturated.
AMX inline void finish_row(const int32_t* c, int nv, const int32_t* off, const float* scale, uint8_t* out) {
  for (int v = 0; v < nv; ++v) {
    const __m512i x = _mm512_add_epi32(_mm512_load_si512(c + 16 * v), _mm512_loadu_si512(off + 16 * v));
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(scale + 16 * v)));
    q = _mm512_add_epi32(q, _mm512_set1_epi32(3 - 128));
    const __m128i b = _mm_xor_si128(_mm512_cvtsepi32_epi8(q), _mm_set1_epi8(static_cast<char>(0x80)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * v), b);
  }
}

// A finished-later block: its int32 results and where its codes go
struct Pending {
  const int32_t* c = nullptr;
  int rows = 0;
  uint8_t* out = nullptr;
  int64_t ldc = 0;
};

// Up to 32 rows x 32 columns: A tiles at a0 and a0 + 16 * arow (TwoA; a k step astep bytes further, row stride
// lda), B tiles b0 and b1 (row stride 192), C in tmm0-3, stored to c ([32][32]). While the products run, the rows of
// `prev` (if any) are finished a few per k step.
template <bool TwoA>
AMX void block32x32(const uint8_t* a0, int64_t lda, int64_t arow, int64_t astep, const int8_t* b0, const int8_t* b1,
                    int64_t K, int32_t* c, const Pending& prev, const int32_t* off, const float* scale) {
  asm volatile("" : : : "memory");
  _tile_zero(0);
  _tile_zero(1);
  if (TwoA) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t steps = K / 64, per = (prev.rows + steps - 1) / steps;
  int r = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t bo = s * 16 * 192;
    _tile_loadd(4, a0 + s * astep, lda);
    _tile_loadd(6, b0 + bo, 192);
    _tile_dpbusd(0, 4, 6);
    _tile_loadd(7, b1 + bo, 192);
    _tile_dpbusd(1, 4, 7);
    if (TwoA) {
      _tile_loadd(5, a0 + 16 * arow + s * astep, lda);
      _tile_dpbusd(2, 5, 6);
      _tile_dpbusd(3, 5, 7);
    }
    for (int64_t e = 0; e < per && r < prev.rows; ++e, ++r) {
      finish_row(prev.c + r * 32, 2, off, scale, prev.out + r * prev.ldc);
    }
  }
  asm volatile("" : : : "memory");
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  if (TwoA) {
    _tile_stored(2, c + 16 * 32, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
  asm volatile("" : : : "memory");
}

double seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

enum Variant { Tiles16x48, Finish16x48, Tiles32, Tiles32ATiles, Finish32, Finish32Spread, FinishAlone, kVariants };
const char* const kNames[kVariants] = {"tiles_16x48",  "finish_16x48",        "tiles_32x32", "tiles_32x32_a_tiles",
                                       "finish_32x32", "finish_32x32_spread", "finish_alone"};

}  // namespace

AMX int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: amx_tiles M K N rounds (K a multiple of 64, N of 48)\n");
    return 2;
  }
  const int64_t M = std::atol(argv[1]), K = std::atol(argv[2]), N = std::atol(argv[3]), rounds = std::atol(argv[4]);
  if (M < 1 || K < 64 || K % 64 != 0 || N < 48 || N % 48 != 0 || rounds < 1) {
    std::fprintf(stderr, "amx_tiles: M >= 1, K a positive multiple of 64, N of 48, rounds >= 1\n");
    return 2;
  }
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) {
    std::fprintf(stderr, "amx_tiles: Linux did not grant the AMX tile state\n");
    return 3;
  }
  const int64_t Mp = (M + 15) / 16 * 16, panels = N / 48, stride = K * 48 + 192, ksteps = K / 64;
  auto* a = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(Mp * K)));
  auto* at = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(Mp * K)));  // A in tile order
  auto* b = static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>(panels * stride)));
  auto* out = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(Mp * N)));
  std::srand(0);
  for (int64_t i = 0; i < Mp * K; ++i) a[i] = static_cast<uint8_t>(std::rand());
  for (int64_t i = 0; i < panels * stride; ++i) b[i] = static_cast<int8_t>(std::rand());
  for (int64_t m = 0; m < Mp; m += 16) {  // block m / 16, k step s: at + (m / 16 * ksteps + s) * 1024
    for (int64_t s = 0; s < ksteps; ++s) {
      for (int r = 0; r < 16; ++r)
        std::memcpy(at + (m / 16 * ksteps + s) * 1024 + r * 64, a + (m + r) * K + s * 64, 64);
    }
  }
  alignas(64) static int32_t cbuf[2][32 * 48];
  alignas(64) static int32_t off[48];
  alignas(64) static float scale[48];
  for (int i = 0; i < 48; ++i) scale[i] = 1e-3f;
  configure();

  std::vector<double> ms[kVariants];
  for (int64_t round = -1; round < rounds; ++round) {  // round -1 warms up
    for (int variant = 0; variant < kVariants; ++variant) {
      const double t0 = seconds();
      if (variant == Tiles16x48 || variant == Finish16x48 || variant == FinishAlone) {
        for (int64_t p = 0; p < panels; ++p) {
          for (int64_t m = 0; m < Mp; m += 16) {
            uint8_t* o = out + m * N + p * 48;
            if (variant != FinishAlone) block16x48(a + m * K, K, b + p * stride, K, cbuf[0]);
            if (variant == Tiles16x48) continue;
            for (int r = 0; r < 16; ++r) finish_row(cbuf[0] + r * 48, 3, off, scale, o + r * N);
          }
        }
      } else {
        const bool tiled = variant != Tiles32;
        const uint8_t* a_src = tiled ? at : a;
        const int64_t lda = tiled ? 64 : K, arow = tiled ? ksteps * 64 : K, astep = tiled ? 1024 : 64;
        Pending prev;
        int cur = 0;
        for (int64_t j = 0; j < N / 16; j += 2) {  // tile j: panel j / 3, 16-column group j % 3
          const int8_t* b0 = b + (j / 3) * stride + (j % 3) * 64;
          const int8_t* b1 = b + ((j + 1) / 3) * stride + ((j + 1) % 3) * 64;
          for (int64_t m = 0; m < Mp; m += 32) {
            const uint8_t* a0 = a_src + m * (tiled ? ksteps * 64 : K);
            const Pending none;
            const Pending& during = variant == Finish32Spread ? prev : none;
            if (Mp - m >= 32) {
              block32x32<true>(a0, lda, arow, astep, b0, b1, K, cbuf[cur], during, off, scale);
            } else {
              block32x32<false>(a0, lda, arow, astep, b0, b1, K, cbuf[cur], during, off, scale);
            }
            const Pending done{cbuf[cur], static_cast<int>(Mp - m < 32 ? Mp - m : 32), out + m * N + j * 16, N};
            if (variant == Finish32) {
              for (int r = 0; r < done.rows; ++r) finish_row(done.c + r * 32, 2, off, scale, done.out + r * N);
            }
            if (variant == Finish32Spread) {
              prev = done;
              cur ^= 1;
            }
          }
        }
        if (variant == Finish32Spread) {
          for (int r = 0; r < prev.rows; ++r) finish_row(prev.c + r * 32, 2, off, scale, prev.out + r * N);
        }
      }
      if (round >= 0) ms[variant].push_back((seconds() - t0) * 1e3);
    }
  }
  _tile_release();
  std::printf("{\"M\": %ld, \"K\": %ld, \"N\": %ld, \"rows_computed\": %ld", static_cast<long>(M), static_cast<long>(K),
              static_cast<long>(N), static_cast<long>(Mp));
  for (int variant = 0; variant < kVariants; ++variant) {
    std::printf(", \"%s\": [", kNames[variant]);
    for (size_t i = 0; i < ms[variant].size(); ++i) std::printf("%s%.5f", i ? ", " : "", ms[variant][i]);
    std::printf("]");
  }
  std::printf("}\n");
  std::free(a);
  std::free(at);
  std::free(b);
  std::free(out);
  return 0;
}
