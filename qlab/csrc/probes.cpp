// Two probes of the core the kernels run on (notebook 12's roofline, benchmarks/bench_kernels.py):
//
//   peak_burst(isa, n)  n rounds of the path's multiply-add instruction on registers only (no memory, independent
//                       accumulators): multiply-adds done / elapsed time is the most that path can do per second.
//   clock_burst(n)      n rounds of 8 dependent 64-bit multiplications: imul r64 has a 3-cycle latency on every x86
//                       core of the last decade (Intel and AMD), so 24 n / elapsed time is the clock.
//
// ops.cpp checks the arguments (the path must be one this CPU runs) and registers them as
// torch.ops.qlab._peak_burst / _clock_burst; qlab/roofline.py times them.
#include <cstdint>

#include "qlab_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define QLAB_AVX2 __attribute__((target("avx2,fma")))
#define QLAB_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define QLAB_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))

namespace qlab {
namespace {

// AVX2 (qlab's path widens to int16): 8 independent vpmaddwd (8 lanes x 2 int16 products) with their vpaddd.
QLAB_AVX2 int64_t burst_avx2(int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(
        "vpmaddwd %%ymm14, %%ymm15, %%ymm8\n\tvpaddd %%ymm8, %%ymm0, %%ymm0\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm9\n\tvpaddd %%ymm9, %%ymm1, %%ymm1\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm10\n\tvpaddd %%ymm10, %%ymm2, %%ymm2\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm11\n\tvpaddd %%ymm11, %%ymm3, %%ymm3\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm8\n\tvpaddd %%ymm8, %%ymm4, %%ymm4\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm9\n\tvpaddd %%ymm9, %%ymm5, %%ymm5\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm10\n\tvpaddd %%ymm10, %%ymm6, %%ymm6\n\t"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm11\n\tvpaddd %%ymm11, %%ymm7, %%ymm7" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm14",
              "xmm15");
  }
  _mm256_zeroupper();
  return n * 8 * 16;
}

// AVX-512 VNNI: 12 independent vpdpbusd (16 lanes x 4 products), enough to cover its latency on two ports.
QLAB_VNNI int64_t burst_vnni(int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(
        "vpdpbusd %%zmm30, %%zmm31, %%zmm0\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm1\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm2\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm3\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm4\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm5\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm6\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm7\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm8\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm9\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm10\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm11" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm30",
              "xmm31");
  }
  _mm256_zeroupper();
  return n * 12 * 64;
}

// AVX-VNNI: 12 independent VEX vpdpbusd on ymm (8 lanes x 4 products); written {vex} so the assembler does not
// choose the EVEX (AVX-512) encoding, which a client core without AVX-512 cannot run.
QLAB_AVX2 int64_t burst_avx_vnni(int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm0\n\t%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm1\n\t"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm2\n\t%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm3\n\t"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm4\n\t%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm5\n\t"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm6\n\t%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm7\n\t"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm8\n\t%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm9\n\t"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm10\n\t%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm11" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm14",
              "xmm15");
  }
  _mm256_zeroupper();
  return n * 12 * 32;
}

struct alignas(64) TileConfig {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// AMX: 4 independent tdpbusd (16 x 16 x 64 each) on zeroed tiles.
QLAB_AMX int64_t burst_amx(int64_t n) {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 6; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  // Not _tile_loadconfig: GCC's version tells the compiler it reads only 8 bytes of cfg, so the stores of rows/colsb
  // may be dropped as dead, and the first tile instruction then raises SIGILL (as gemm_amx.cpp's amx_config says).
  asm volatile("ldtilecfg %0" : : "m"(cfg));
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  for (int64_t i = 0; i < n; ++i) {
    _tile_dpbusd(0, 4, 5);
    _tile_dpbusd(1, 4, 5);
    _tile_dpbusd(2, 4, 5);
    _tile_dpbusd(3, 4, 5);
  }
  _tile_release();
  return n * 4 * 16 * 16 * 64;
}

}  // namespace

int64_t peak_burst(Isa isa, int64_t n) {
  switch (isa) {
    case Isa::Avx2: return burst_avx2(n);
    case Isa::Avx512Vnni: return burst_vnni(n);
    case Isa::Amx: return burst_amx(n);
    case Isa::AvxVnni: return burst_avx_vnni(n);
    default: return 0;  // the scalar path has no one instruction to probe (ops.cpp refuses it)
  }
}

int64_t clock_burst(int64_t n) {
  uint64_t x = 3;
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(
        "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\t"
        "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0"
        : "+r"(x));
  }
  return 24 * n;
}

}  // namespace qlab

#else  // not x86: no probes (ops.cpp refuses every path but scalar)

namespace qlab {
int64_t peak_burst(Isa, int64_t) { return 0; }
int64_t clock_burst(int64_t) { return 0; }
}  // namespace qlab

#endif
