// Benchmark probes for benchmarks/bench_kernels.py, kept out of qlab's op library: the clock, and the
// peak multiply-add rate of each int8 path's instruction on registers only (no memory), the ceiling
// that path can reach on this core. Built by bench_kernels.py with torch.utils.cpp_extension.load as
// torch.ops.qlab_probes.*; the kernels themselves are in qlab/csrc/.
#include <torch/library.h>

#include <cstdint>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define QLAB_AVX2 __attribute__((target("avx2,fma")))
#define QLAB_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define QLAB_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))

namespace {

// n iterations of 8 dependent 64-bit multiplications. imul r64 has a 3-cycle latency on every x86 core
// of the last decade (Intel and AMD), so 24n / elapsed time is the clock. (A chain of adds no longer
// works: recent Intel cores execute some immediate adds at register rename.)
int64_t dependent_muls(int64_t n) {
  uint64_t x = 3;
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(
        "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\t"
        "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0"
        : "+r"(x));
  }
  return static_cast<int64_t>(x);
}

// AVX2: n rounds of 8 independent vpmaddwd (8 lanes x 2 int16 products each)
// with their vpaddd, the inner loop's instruction pair, on registers only. Returns the MACs done.
QLAB_AVX2 int64_t macs_burst_avx2(int64_t n) {
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
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
  }
  return n * 8 * 16;
}

struct alignas(64) TileConfig {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool amx_granted() {  // CPUID AMX-TILE and AMX-INT8, then Linux's permission for the tile state
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !((edx >> 24) & 1) || !((edx >> 25) & 1)) return false;
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
}

QLAB_AMX void amx_config() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int i = 0; i < 6; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

// VNNI: 12 independent vpdpbusd (enough to cover its latency on two ports); returns the MACs done.
QLAB_VNNI int64_t macs_burst_vnni(int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(
        "vpdpbusd %%zmm30, %%zmm31, %%zmm0\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm1\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm2\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm3\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm4\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm5\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm6\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm7\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm8\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm9\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm10\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm11" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
  }
  return n * 12 * 64;
}

// AMX: 4 independent tdpbusd (16 x 16 x 64 each) on zeroed tiles.
QLAB_AMX int64_t macs_burst_amx(int64_t n) {
  amx_config();
  for (int t = 0; t < 6; ++t) {
    switch (t) {  // tile numbers must be constants
      case 0: _tile_zero(0); break;
      case 1: _tile_zero(1); break;
      case 2: _tile_zero(2); break;
      case 3: _tile_zero(3); break;
      case 4: _tile_zero(4); break;
      default: _tile_zero(5); break;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    _tile_dpbusd(0, 4, 5);
    _tile_dpbusd(1, 4, 5);
    _tile_dpbusd(2, 4, 5);
    _tile_dpbusd(3, 4, 5);
  }
  _tile_release();
  return n * 4 * 16 * 16 * 64;
}

int64_t macs_burst(std::string isa, int64_t n) {
  __builtin_cpu_init();
  if (isa == "avx2") {
    TORCH_CHECK_VALUE(__builtin_cpu_supports("avx2"), "this CPU has no AVX2");
    return macs_burst_avx2(n);
  }
  if (isa == "avx512_vnni") {
    TORCH_CHECK_VALUE(__builtin_cpu_supports("avx512vnni"), "this CPU has no AVX-512 VNNI");
    return macs_burst_vnni(n);
  }
  if (isa == "amx") {
    TORCH_CHECK_VALUE(amx_granted(), "this CPU has no AMX-INT8 (or Linux refused the tile state)");
    return macs_burst_amx(n);
  }
  TORCH_CHECK_VALUE(false, "isa must be one of ['avx2', 'avx512_vnni', 'amx'], got '", isa, "'");
}

}  // namespace

TORCH_LIBRARY(qlab_probes, m) {
  m.def("dependent_muls(int n) -> int", &dependent_muls);
  m.def("macs_burst(str isa, int n) -> int", &macs_burst);
}

#endif
