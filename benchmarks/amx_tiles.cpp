// What limits an AMX int8 linear: the tile products alone, and with the AVX-512 epilogue that turns their int32
// results into uint8 codes. A stand-alone program (no torch, no qlab), built and run by bench_amx_tiles.py.
//
//   amx_tiles M K N rounds   ->   one JSON object: per variant, the milliseconds of every round
//
// The loop is qlab's gemm_amx for a prepacked weight (qlab/csrc/gemm_amx.cpp), reduced to its bones: for each
// 48-column panel of B ([K/4][48][4] int8, panels K * 48 + 192 bytes apart as in qlab's packed layout), for each
// block of 16 rows of A (uint8, row-major, read in place), 3 int32 tiles accumulate K/64 tdpbusd each, then are
// stored to a 16 x 48 int32 buffer. Variants, timed in turns within every round:
//   tiles               the products and the tile stores, nothing else
//   finish_at_once      + each block finished (int32 -> float * scale -> uint8) right after its stores
//   finish_pipelined    + block i - 1 finished after block i's stores (the order qlab used before)
//   finish_alone        the finishing of every block from a buffer in L1, no tile instruction
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
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
  for (int i = 0; i < 7; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  asm volatile("ldtilecfg %0" : : "m"(cfg));  // not _tile_loadconfig (see qlab/csrc/gemm_amx.cpp)
}

// 16 rows of A (row stride lda) times one 48-column panel: 3 tiles of 16 x 16 int32, stored to c ([16][48]).
AMX void block(const uint8_t* a, int64_t lda, const int8_t* b, int64_t K, int32_t* c) {
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

// The int32 -> uint8 epilogue of one block, as qlab's FinishQ8FloatNoOverflow: (float(acc + offset) * scale) rounded,
// plus the zero point, saturated.
AMX __attribute__((noinline)) void finish(const int32_t* c, const int32_t* off, const float* scale, uint8_t* out,
                                          int64_t ldc) {
  for (int r = 0; r < 16; ++r) {
    for (int v = 0; v < 3; ++v) {
      const __m512i x = _mm512_add_epi32(_mm512_load_si512(c + r * 48 + 16 * v), _mm512_loadu_si512(off + 16 * v));
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(scale + 16 * v)));
      q = _mm512_add_epi32(q, _mm512_set1_epi32(3 - 128));
      const __m128i b = _mm_xor_si128(_mm512_cvtsepi32_epi8(q), _mm_set1_epi8(static_cast<char>(0x80)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * ldc + 16 * v), b);
    }
  }
}

double seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

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
  const int64_t Mp = (M + 15) / 16 * 16, panels = N / 48, stride = K * 48 + 192;
  auto* a = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(Mp * K)));
  auto* b = static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>(panels * stride)));
  auto* out = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(Mp * N)));
  std::srand(0);
  for (int64_t i = 0; i < Mp * K; ++i) a[i] = static_cast<uint8_t>(std::rand());
  for (int64_t i = 0; i < panels * stride; ++i) b[i] = static_cast<int8_t>(std::rand());
  alignas(64) static int32_t cbuf[2][16 * 48];
  alignas(64) static int32_t off[48];
  alignas(64) static float scale[48];
  for (int i = 0; i < 48; ++i) scale[i] = 1e-3f;
  configure();

  const char* names[] = {"tiles", "finish_at_once", "finish_pipelined", "finish_alone"};
  std::vector<double> ms[4];
  for (int64_t round = -1; round < rounds; ++round) {  // round -1 warms up
    for (int variant = 0; variant < 4; ++variant) {
      const double t0 = seconds();
      for (int64_t p = 0; p < panels; ++p) {
        const int8_t* bp = b + p * stride;
        int cur = 0;
        int64_t prev = -1;
        for (int64_t m = 0; m < Mp; m += 16) {
          uint8_t* o = out + m * N + p * 48;
          if (variant == 3) {
            finish(cbuf[0], off, scale, o, N);
            continue;
          }
          block(a + m * K, K, bp, K, cbuf[cur]);
          if (variant == 1) finish(cbuf[cur], off, scale, o, N);
          if (variant == 2 && prev >= 0) finish(cbuf[cur ^ 1], off, scale, out + prev * N + p * 48, N);
          prev = m;
          cur ^= 1;
        }
        if (variant == 2) finish(cbuf[cur ^ 1], off, scale, out + prev * N + p * 48, N);
      }
      if (round >= 0) ms[variant].push_back((seconds() - t0) * 1e3);
    }
  }
  _tile_release();
  std::printf("{\"M\": %ld, \"K\": %ld, \"N\": %ld, \"rows_computed\": %ld", static_cast<long>(M), static_cast<long>(K),
              static_cast<long>(N), static_cast<long>(Mp));
  for (int variant = 0; variant < 4; ++variant) {
    std::printf(", \"%s\": [", names[variant]);
    for (size_t i = 0; i < ms[variant].size(); ++i) std::printf("%s%.5f", i ? ", " : "", ms[variant][i]);
    std::printf("]");
  }
  std::printf("}\n");
  std::free(a);
  std::free(b);
  std::free(out);
  return 0;
}
