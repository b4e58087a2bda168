// qlab custom ops: schemas, argument checks, threading and the choice of CPU path.
//
//   torch.ops.qlab.int8_bmm     batched int8 matmul with fused requantization (attention)
//   torch.ops.qlab.int8_linear  int8 linear, per-channel weights, int32 or float bias, ReLU
//   torch.ops.qlab.pack_linear_weight / int8_linear_packed  the same linear on a weight packed once (the VNNI and
//                               AMX paths read its panels and column sums in place), plus a 256-entry table epilogue
//                               (8-bit outputs) or a residual add (float32 outputs)
//   torch.ops.qlab.int8_attention  the fused attention (q·kᵀ, softmax, P·v per block of rows)
//   torch.ops.qlab.quantize_per_tensor  float32 -> uint8/int8 codes, PyTorch's arithmetic (quantize.cpp)
//
// The arithmetic lives in gemm_*.cpp and requant.h; this file turns tensors into
// raw pointers and strides, builds the per-column epilogue arrays, splits the work
// into tasks and runs them on ATen's thread pool (at::parallel_for). Every output
// element is computed by exactly one task with the same integer arithmetic, so the
// result does not depend on the path, the thread count or the split.
// Python wrappers, fake kernels and the pure-PyTorch reference: qlab/kernels/.
// Taught in notebooks/08-vit-attention-int8.ipynb.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <optional>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "qlab_kernels.h"
#include "requant.h"

namespace qlab {
namespace {

// ---------------------------------------------------------------------------------------------
// CPU path selection

const char* const kIsaNames[] = {"scalar", "avx2", "avx512_vnni", "amx", "avx_vnni"};
constexpr int kNumIsas = 5;

bool cpu_supports(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports reads CPUID (and checks, via XGETBV, that the OS saves the
  // AVX / AVX-512 registers), the same facts /proc/cpuinfo lists as flags.
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
    case Isa::AvxVnni: return cpu_supports(Isa::Avx2) && __builtin_cpu_supports("avxvnni");
    case Isa::Amx: {
      // the AMX path also runs AVX-512 VNNI code (packing, finishing); the OS grant is asked once
      static const bool usable = cpu_supports(Isa::Avx512Vnni) && amx_usable();
      return usable;
    }
  }
  return false;
#else
  return isa == Isa::Scalar;
#endif
}

// AVX-512 VBMI (vpermi2b): only the table epilogue uses it, beside the AVX-512 paths.
bool cpu_has_vbmi() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx512vbmi");
  return has;
#else
  return false;
#endif
}

// The paths from slowest to fastest: the last one the CPU supports is the default.
constexpr Isa kByPreference[kNumIsas] = {Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx};

Isa best_isa() {
  Isa best = Isa::Scalar;
  for (Isa isa : kByPreference) {
    if (cpu_supports(isa)) best = isa;
  }
  return best;
}

std::atomic<int> g_isa{-1};  // -1: not chosen yet (best available on first use)

Isa active_isa() {
  int v = g_isa.load();
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_isa.store(v);
  }
  return static_cast<Isa>(v);
}

// Each path's matrix product and the column-block width it prefers, indexed by Isa. The AVX-VNNI path is the AVX2
// path with vpdpbusd: its packing, softmax and quantize loops are AVX2's; zmm(isa) says which paths use AVX-512's.
using GemmFn = void (*)(const Task&, const Epilogue&);
struct Path {
  GemmFn gemm;
  int64_t panel;
};
constexpr Path kPaths[kNumIsas] = {{gemm_scalar, kPanelScalar},
                                   {gemm_avx2, kPanelAvx2},
                                   {gemm_avx512_vnni, kPanelVnni},
                                   {gemm_amx, kPanelAmx},
                                   {gemm_avx_vnni, kPanelAvx2}};
bool zmm(Isa isa) { return isa == Isa::Avx512Vnni || isa == Isa::Amx; }

// the float softmax loop of a path, and how many rows it computes together (its scratch holds that many)
using SoftmaxRowsFn = void (*)(const float*, int64_t, int64_t, float, float*, uint8_t*);
SoftmaxRowsFn softmax_rows_of(Isa isa) {
  return zmm(isa) ? softmax_rows_u8_avx512 : (isa == Isa::Scalar ? softmax_rows_u8_scalar : softmax_rows_u8_avx2);
}
int64_t softmax_rows_together(Isa isa) { return zmm(isa) ? kSoftmaxRows : (isa == Isa::Scalar ? 1 : kSoftmaxRowsAvx2); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (Isa isa : kByPreference) {
    if (cpu_supports(isa)) out.emplace_back(kIsaNames[static_cast<int>(isa)]);
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", '" : "'") + v[i] + "'";
  return s + "]";
}

void set_isa_op(std::string name) {
  if (name == "auto") {
    g_isa.store(static_cast<int>(best_isa()));
    return;
  }
  for (int i = 0; i < kNumIsas; ++i) {
    if (name == kIsaNames[i]) {
      TORCH_CHECK_VALUE(cpu_supports(static_cast<Isa>(i)), "isa '", name,
                        "' is not supported by this CPU; supported: ", join(supported_isas()), " or 'auto'");
      g_isa.store(i);
      return;
    }
  }
  TORCH_CHECK_VALUE(false, "isa must be one of ['auto', 'scalar', 'avx2', 'avx_vnni', 'avx512_vnni', 'amx'], got '",
                    name, "'");
}

std::string get_isa_op() { return kIsaNames[static_cast<int>(active_isa())]; }

std::vector<std::string> supported_isas_op() { return supported_isas(); }

// The probes behind notebook 12's roofline (probes.cpp). n is capped so one call stays under about a second.
int64_t peak_burst_op(std::string name, int64_t n) {
  TORCH_CHECK_VALUE(n >= 1 && n <= (int64_t{1} << 26), "n must be in [1, 2**26], got ", n);
  for (int i = 1; i < kNumIsas; ++i) {
    if (name == kIsaNames[i]) {
      TORCH_CHECK_VALUE(cpu_supports(static_cast<Isa>(i)), "isa '", name,
                        "' is not supported by this CPU; supported: ", join(supported_isas()));
      return peak_burst(static_cast<Isa>(i), n);
    }
  }
  TORCH_CHECK_VALUE(false, "isa must be one of 'avx2', 'avx_vnni', 'avx512_vnni', 'amx' (the scalar path has no one ",
                    "multiply-add instruction), got '", name, "'");
  return 0;
}

int64_t clock_burst_op(int64_t n) {
  TORCH_CHECK_VALUE(n >= 1 && n <= (int64_t{1} << 26), "n must be in [1, 2**26], got ", n);
  return clock_burst(n);
}

std::tuple<int64_t, int64_t> quantize_multiplier_op(double m) {
  TORCH_CHECK_VALUE(std::isfinite(m) && m >= 0.0, "m must be a finite non-negative float, got ", m);
  int32_t q = 0, s = 0;
  quantize_multiplier(m, &q, &s);
  return {q, s};
}

std::string build_info_op() {
  std::string s = "compiler: ";
#if defined(__clang__)
  s += "clang " __clang_version__;
#elif defined(__GNUC__)
  s += "gcc " __VERSION__;
#endif
#ifdef _OPENMP
  s += "; openmp: yes (at::parallel_for runs on ATen's OpenMP pool)";
#else
  s += "; openmp: no (at::parallel_for runs single-threaded)";
#endif
  s += "; at::get_num_threads(): " + std::to_string(at::get_num_threads());
  return s;
}

// ---------------------------------------------------------------------------------------------
// Argument checks (ValueError / TypeError naming the argument and what is allowed)

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kInt: return "torch.int32";
    case at::kFloat: return "torch.float32";
    case at::kLong: return "torch.int64";
    case at::kShort: return "torch.int16";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU (device 'cpu'), got device '", t.device().str(),
                    "'");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, name, " must be a dense (strided) tensor");
}

void check_zero_point(int64_t zp, at::ScalarType t, const char* name) {
  const int64_t lo = t == at::kByte ? 0 : -128, hi = t == at::kByte ? 255 : 127;
  TORCH_CHECK_VALUE(zp >= lo && zp <= hi, name, " must lie in [", lo, ", ", hi, "] for ", dtype_name(t), ", got ", zp);
}

void check_scale(double s, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(s) && s > 0.0 && static_cast<float>(s) > 0.0f && std::isfinite(static_cast<float>(s)),
                    name, " must be a positive finite float (representable in float32), got ", s);
}

OutKind out_kind(at::ScalarType t) {
  switch (t) {
    case at::kByte: return OutKind::UInt8;
    case at::kChar: return OutKind::Int8;
    case at::kInt: return OutKind::Int32;
    case at::kFloat: return OutKind::Float32;
    default:
      TORCH_CHECK_VALUE(false, "out_dtype must be one of [torch.uint8, torch.int8, torch.int32, torch.float32], got ",
                        dtype_name(t));
  }
}

Requant requant_mode(c10::string_view s) {
  if (s == "float") return Requant::Float;
  if (s == "fixed") return Requant::Fixed;
  TORCH_CHECK_VALUE(false, "requant must be one of ['float', 'fixed'], got '", std::string(s), "'");
}

// ---------------------------------------------------------------------------------------------
// The epilogue arrays (one entry per output column, padded with zeros for whole-vector loads)

struct EpilogueData {
  std::vector<int32_t> bias, qmul, lshift, rshift;
  std::vector<float> scale, fbias;
  Epilogue e{};
};

// w_scale: 1 value (per-tensor) or N values (per-channel); bias_i32 / bias_f32: N values or null.
void make_epilogue(EpilogueData& d, OutKind kind, Requant mode, bool relu, int64_t N, float sa, const float* w_scale,
                   bool per_channel, float so, int64_t zo, const int32_t* bias_i32, const float* bias_f32,
                   const char* a_scale_name, const char* b_scale_name) {
  const size_t padded = static_cast<size_t>((N + 63) / 64 * 64 + 64);
  Epilogue& e = d.e;
  e.kind = kind;
  e.mode = mode;
  e.relu = relu;
  e.any_lshift = false;
  e.no_overflow = false;
  e.zo = 0;
  e.lo = 0;
  e.hi = 0;
  if (bias_i32) {
    d.bias.assign(padded, 0);
    std::copy(bias_i32, bias_i32 + N, d.bias.begin());
    e.bias = d.bias.data();
  }
  const bool quantized_out = kind == OutKind::UInt8 || kind == OutKind::Int8;
  if (kind == OutKind::Float32 || (quantized_out && mode == Requant::Float)) {
    d.scale.assign(padded, 0.0f);
    if (bias_f32) d.fbias.assign(padded, 0.0f);
    float rcp = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      // fbgemm / PyTorch: act_times_w_scale = float(sa * sw), multiplier = float(act_times_w_scale / so)
      const float ats = sa * w_scale[per_channel ? n : 0];
      TORCH_CHECK_VALUE(std::isfinite(ats) && ats > 0.0f, a_scale_name, " * ", b_scale_name, " = ", ats,
                        " is not a positive finite float32");
      if (kind == OutKind::Float32) {
        d.scale[n] = ats;
        if (bias_f32) d.fbias[n] = bias_f32[n];
      } else {
        const float mult = ats / so;
        TORCH_CHECK_VALUE(std::isfinite(mult) && mult > 0.0f, "the requantization multiplier ", a_scale_name, " * ",
                          b_scale_name, " / out_scale = ", mult, " is not a positive finite float32");
        d.scale[n] = mult;
        if (bias_f32) {
          // fbgemm adds the float bias as bias / act_times_w_scale: a division per channel,
          // a multiplication by float(1.0 / act_times_w_scale) (computed in double) per tensor.
          if (per_channel) {
            d.fbias[n] = bias_f32[n] / ats;
          } else {
            if (n == 0) rcp = static_cast<float>(1.0 / static_cast<double>(ats));
            d.fbias[n] = bias_f32[n] * rcp;
          }
        }
      }
    }
    e.scale = d.scale.data();
    if (bias_f32) e.fbias = d.fbias.data();
    if (quantized_out && mode == Requant::Float) {
      // |float(acc)| <= 2^31, so |(float(acc) + fbias) * m| stays below 2^31 - 256 when
      // (2^31 + |fbias|) * m does, with a margin for the two float32 roundings.
      e.no_overflow = true;
      for (int64_t n = 0; n < N; ++n) {
        const double fb = bias_f32 ? std::fabs(static_cast<double>(d.fbias[n])) : 0.0;
        if ((2147483648.0 + fb) * static_cast<double>(d.scale[n]) * (1.0 + 1e-6) > 2147483648.0 - 256.0) {
          e.no_overflow = false;
        }
      }
    }
  }
  if (quantized_out) {
    e.zo = static_cast<int32_t>(zo);
    e.lo = kind == OutKind::UInt8 ? 0 : -128;
    e.hi = kind == OutKind::UInt8 ? 255 : 127;
    if (relu) e.lo = std::max(e.lo, e.zo);
    if (mode == Requant::Fixed) {
      d.qmul.assign(padded, 0);
      d.lshift.assign(padded, 0);
      d.rshift.assign(padded, 0);
      for (int64_t n = 0; n < N; ++n) {
        // TFLite: real multiplier in double from the float32 scales.
        const double m =
            static_cast<double>(sa) * static_cast<double>(w_scale[per_channel ? n : 0]) / static_cast<double>(so);
        int32_t q = 0, s = 0;
        quantize_multiplier(m, &q, &s);
        d.qmul[n] = q;
        d.lshift[n] = s > 0 ? s : 0;
        if (s > 0) e.any_lshift = true;
        d.rshift[n] = s > 0 ? 0 : -s;
      }
      e.qmul = d.qmul.data();
      e.lshift = d.lshift.data();
      e.rshift = d.rshift.data();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The driver: split batch x rows x columns into tasks, run them on ATen's thread pool.

// residual: float32 [M, N] added to a float32 output after the epilogue (out = epilogue(acc) + residual), or null.
// packed: a prepacked weight (linear only, batch 1; the SIMD paths), or null. table: 256 codes applied to
// every 8-bit output code (index = the code's byte, top bit flipped for int8), or null.
void run(int64_t batch, const std::vector<int64_t>& a_off, const std::vector<int64_t>& b_off, const MatA& a,
         const MatB& b, int64_t M, int64_t N, int64_t K, const Epilogue& e, at::Tensor& out,
         const int8_t* packed = nullptr, const uint8_t* table = nullptr, const float* residual = nullptr) {
  if (batch == 0 || M == 0 || N == 0) return;
  const Isa isa = active_isa();
  const GemmFn gemm = kPaths[static_cast<int>(isa)].gemm;
  const int64_t panel = kPaths[static_cast<int>(isa)].panel;

  // Rows per task: about 1 MB of A, a multiple of 48 (every path's block height divides it). Each task sweeps the
  // whole weight: 512 KB split ViT's fc2 (197 x 3072) into 144 + 53 rows and read its 2.4 MB weight twice, 3-12%
  // slower on every path of a Sapphire Rapids core.
  const int64_t mc = std::max<int64_t>(96, std::min<int64_t>(4096, (1024 * 1024) / std::max<int64_t>(K, 1)) / 48 * 48);
  const int64_t m_blocks = (M + mc - 1) / mc;
  const int64_t n_panels = (N + panel - 1) / panel;
  const int64_t threads = at::get_num_threads();
  const int64_t base = batch * m_blocks;
  // Too few (batch, row block) tasks to keep every thread busy, or row blocks of unequal height (16 x 197 rows of
  // K = 768: 1344 + 1344 + 464): split the columns too. The column chunk varies slowest, so each thread's contiguous
  // share of the tasks is whole column chunks across every row block, and the shares are equal.
  int64_t n_chunks = 1;
  const bool uneven = m_blocks > 1 && M % mc != 0;
  if (threads > 1 && base < 4 * threads && (base % threads != 0 || uneven)) n_chunks = std::min(n_panels, threads);
  const int64_t panels_per_chunk = (n_panels + n_chunks - 1) / n_chunks;
  n_chunks = (n_panels + panels_per_chunk - 1) / panels_per_chunk;
  const int64_t ntasks = base * n_chunks;
  const double work = static_cast<double>(batch) * M * N * std::max<int64_t>(K, 1);
  const int64_t grain = work < 262144.0 ? ntasks : 1;  // tiny problems: not worth waking threads

  const size_t elem = out.element_size();
  uint8_t* out_base = static_cast<uint8_t*>(out.data_ptr());
  const bool vbmi = table && zmm(isa) && cpu_has_vbmi();
  at::parallel_for(0, ntasks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t chunk = ti / base;
      const int64_t mb = (ti % base) % m_blocks;
      const int64_t bi = (ti % base) / m_blocks;
      Task t;
      t.a = a;
      t.a.data = a.data + a_off[bi];
      t.b = b;
      t.b.data = b.data + b_off[bi];
      t.K = K;
      t.m0 = mb * mc;
      t.m1 = std::min(M, t.m0 + mc);
      t.n0 = chunk * panels_per_chunk * panel;
      t.n1 = std::min(N, t.n0 + panels_per_chunk * panel);
      t.out = out_base + static_cast<size_t>(bi * M * N) * elem;
      t.ldc = N;
      if (packed) {
        t.packed = packed;
        t.packed_stride = packed_panel_bytes(K);
        t.packed_colsum = packed_kp(K) * kPackedPanel;
        t.packed_n = N;
      }
      gemm(t, e);
      if (residual) {  // one float32 add per element, in any order the same bits; the output is still in cache
        float* o = static_cast<float*>(t.out);
        for (int64_t m = t.m0; m < t.m1; ++m) {
          for (int64_t n = t.n0; n < t.n1; ++n) o[m * N + n] = o[m * N + n] + residual[m * N + n];
        }
      }
      if (table) {  // the codes just written are still in cache
        (vbmi ? table_rows_vbmi : table_rows_scalar)(static_cast<uint8_t*>(t.out) + t.m0 * N + t.n0, N, t.m1 - t.m0,
                                                     t.n1 - t.n0, table, e.kind == OutKind::Int8 ? 0x80 : 0x00);
      }
    }
  });
}

// Element offsets of each batch entry of t (batch dims = all but the last two).
std::vector<int64_t> batch_offsets(const at::Tensor& t, int64_t nbatch_dims, int64_t batch) {
  std::vector<int64_t> off(static_cast<size_t>(batch), 0);
  std::vector<int64_t> idx(static_cast<size_t>(nbatch_dims), 0);
  for (int64_t bi = 0; bi < batch; ++bi) {
    int64_t o = 0;
    for (int64_t d = 0; d < nbatch_dims; ++d) o += idx[d] * t.stride(d);
    off[bi] = o;
    for (int64_t d = nbatch_dims - 1; d >= 0; --d) {  // increment the multi-index
      if (++idx[d] < t.size(d)) break;
      idx[d] = 0;
    }
  }
  return off;
}

// ---------------------------------------------------------------------------------------------
// The ops

at::Tensor int8_bmm_cpu(const at::Tensor& a, const at::Tensor& b, double a_scale, int64_t a_zero_point, double b_scale,
                        int64_t b_zero_point, double out_scale, int64_t out_zero_point, at::ScalarType out_dtype,
                        bool transpose_b, c10::string_view requant) {
  check_cpu(a, "a");
  check_cpu(b, "b");
  TORCH_CHECK_TYPE(a.scalar_type() == at::kByte || a.scalar_type() == at::kChar,
                   "a must have dtype torch.uint8 or torch.int8, got ", dtype_name(a.scalar_type()));
  TORCH_CHECK_TYPE(b.scalar_type() == at::kChar, "b must have dtype torch.int8, got ", dtype_name(b.scalar_type()));
  TORCH_CHECK_VALUE(a.dim() >= 2, "a must have at least 2 dimensions [..., M, K], got shape ", a.sizes());
  TORCH_CHECK_VALUE(b.dim() == a.dim(), "b must have as many dimensions as a (", a.dim(), "), got shape ", b.sizes());
  const int64_t nb = a.dim() - 2;
  TORCH_CHECK_VALUE(a.sizes().slice(0, nb) == b.sizes().slice(0, nb),
                    "a and b must have the same batch dimensions, got shapes ", a.sizes(), " and ", b.sizes());
  const int64_t M = a.size(-2), K = a.size(-1);
  const int64_t Kb = transpose_b ? b.size(-1) : b.size(-2);
  const int64_t N = transpose_b ? b.size(-2) : b.size(-1);
  TORCH_CHECK_VALUE(Kb == K,
                    transpose_b ? "b must have shape [..., N, K] with K = a.shape[-1] = "
                                : "b must have shape [..., K, N] with K = a.shape[-1] = ",
                    K, " (transpose_b=", transpose_b ? "True" : "False", "), got shape ", b.sizes());
  check_scale(a_scale, "a_scale");
  check_scale(b_scale, "b_scale");
  check_zero_point(a_zero_point, a.scalar_type(), "a_zero_point");
  check_zero_point(b_zero_point, at::kChar, "b_zero_point");
  const OutKind kind = out_kind(out_dtype);
  const Requant mode = requant_mode(requant);
  if (kind == OutKind::UInt8 || kind == OutKind::Int8) {
    check_scale(out_scale, "out_scale");
    check_zero_point(out_zero_point, out_dtype, "out_zero_point");
  }

  EpilogueData ed;
  const float sb = static_cast<float>(b_scale);
  make_epilogue(ed, kind, mode, false, N, static_cast<float>(a_scale), &sb, false, static_cast<float>(out_scale),
                out_zero_point, nullptr, nullptr, "a_scale", "b_scale");

  std::vector<int64_t> out_shape(a.sizes().begin(), a.sizes().end() - 2);
  int64_t batch = 1;
  for (int64_t s : out_shape) batch *= s;
  out_shape.push_back(M);
  out_shape.push_back(N);
  at::Tensor out = at::empty(out_shape, a.options().dtype(out_dtype));

  MatA ma{static_cast<const uint8_t*>(a.data_ptr()), a.stride(-2), a.stride(-1), a.scalar_type() == at::kChar,
          static_cast<int32_t>(a_zero_point)};
  MatB mb{static_cast<const int8_t*>(b.data_ptr()), transpose_b ? b.stride(-1) : b.stride(-2),
          transpose_b ? b.stride(-2) : b.stride(-1), static_cast<int32_t>(b_zero_point)};
  run(batch, batch_offsets(a, nb, batch), batch_offsets(b, nb, batch), ma, mb, M, N, K, ed.e, out);
  return out;
}

// The packed weight (pack_linear_weight): the header, then [ceil(N / 48), packed_panel_bytes(K)] int8 panels (see
// Task::packed). One pass over the weight, scalar: it runs once, when a model is converted.
at::Tensor pack_linear_weight_cpu(const at::Tensor& weight) {
  check_cpu(weight, "weight");
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, "weight must have dtype torch.int8, got ",
                   dtype_name(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight must have shape [out_features, in_features], got shape ",
                    weight.sizes());
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t np = (N + kPackedPanel - 1) / kPackedPanel, kp = packed_kp(K), pb = packed_panel_bytes(K);
  at::Tensor out = at::zeros({kPackedHeader + np * pb}, weight.options());
  const at::Tensor w = weight.contiguous();
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  const int32_t header[3] = {kPackedMagic, static_cast<int32_t>(N), static_cast<int32_t>(K)};
  TORCH_CHECK_VALUE(N <= INT32_MAX && K <= INT32_MAX, "weight is too large to pack: shape ", weight.sizes());
  std::memcpy(dst, header, sizeof(header));
  dst += kPackedHeader;
  for (int64_t p = 0; p < np; ++p) {
    const int64_t width = std::min<int64_t>(kPackedPanel, N - p * kPackedPanel);
    const int64_t W = (width + 15) / 16 * 16;  // the columns a tile reads: whole groups of 16
    int8_t* panel = dst + p * pb;
    int32_t colsum[kPackedPanel] = {};
    for (int64_t j = 0; j < width; ++j) {
      const int8_t* row = src + (p * kPackedPanel + j) * K;
      for (int64_t k = 0; k < K; ++k) {
        panel[((k / 4) * W + j) * 4 + k % 4] = row[k];
        colsum[j] += row[k];
      }
    }
    std::memcpy(panel + kp * kPackedPanel, colsum, sizeof(colsum));
  }
  return out;
}

// The inverse of pack_linear_weight: the [N, K] weight (the scalar path reads a plain weight).
at::Tensor unpack_linear_weight(const at::Tensor& packed, int64_t N, int64_t K) {
  at::Tensor w = at::empty({N, K}, packed.options());
  const int8_t* src = packed.data_ptr<int8_t>() + kPackedHeader;
  int8_t* dst = w.data_ptr<int8_t>();
  const int64_t pb = packed_panel_bytes(K);
  for (int64_t p = 0; p * kPackedPanel < N; ++p) {  // panel by panel, 4 bytes (4 k of one column) at a time
    const int64_t width = std::min<int64_t>(kPackedPanel, N - p * kPackedPanel);
    const int64_t W = (width + 15) / 16 * 16;
    const int8_t* panel = src + p * pb;
    for (int64_t j = 0; j < width; ++j) {  // one row of the weight, written in order; the panel stays in L1
      int8_t* row = dst + (p * kPackedPanel + j) * K;
      const int8_t* q = panel + 4 * j;
      int64_t k = 0;
      for (; k + 4 <= K; k += 4, q += 4 * W) std::memcpy(row + k, q, 4);
      for (int64_t t = 0; k + t < K; ++t) row[k + t] = q[t];
    }
  }
  return w;
}

// int8_linear and int8_linear_packed: exactly one of weight / packed is defined.
at::Tensor linear_impl(const at::Tensor& x, const at::Tensor* weight, const at::Tensor* packed, int64_t N,
                       const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias, double x_scale,
                       int64_t x_zero_point, double out_scale, int64_t out_zero_point, at::ScalarType out_dtype,
                       bool relu, c10::string_view requant, const std::optional<at::Tensor>& table,
                       const std::optional<at::Tensor>& residual) {
  check_cpu(x, "x");
  check_cpu(weight_scale, "weight_scale");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kByte || x.scalar_type() == at::kChar,
                   "x must have dtype torch.uint8 or torch.int8, got ", dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension [..., in_features]");
  int64_t K = x.size(-1);
  if (weight) {
    check_cpu(*weight, "weight");
    TORCH_CHECK_TYPE(weight->scalar_type() == at::kChar, "weight must have dtype torch.int8, got ",
                     dtype_name(weight->scalar_type()));
    TORCH_CHECK_VALUE(weight->dim() == 2, "weight must have shape [out_features, in_features], got shape ",
                      weight->sizes());
    N = weight->size(0);
    K = weight->size(1);
    TORCH_CHECK_VALUE(x.size(-1) == K, "x must have shape [..., in_features] with in_features = weight.shape[1] = ", K,
                      ", got shape ", x.sizes());
  } else {
    check_cpu(*packed, "packed_weight");
    TORCH_CHECK_TYPE(packed->scalar_type() == at::kChar, "packed_weight must have dtype torch.int8, got ",
                     dtype_name(packed->scalar_type()));
    TORCH_CHECK_VALUE(N >= 1, "out_features must be >= 1, got ", N);
    const int64_t bytes = kPackedHeader + (N + kPackedPanel - 1) / kPackedPanel * packed_panel_bytes(K);
    int32_t header[3] = {0, 0, 0};
    const bool shaped = packed->dim() == 1 && packed->size(0) == bytes && packed->is_contiguous();
    if (shaped) std::memcpy(header, packed->data_ptr<int8_t>(), sizeof(header));
    TORCH_CHECK_VALUE(
        shaped && header[0] == kPackedMagic && header[1] == N && header[2] == K,
        "packed_weight must be pack_linear_weight(weight) of a weight [out_features, in_features] = [", N, ", ", K,
        "] (in_features = x.shape[-1]): a contiguous 1-D int8 tensor of ", bytes, " bytes whose header says [", N, ", ",
        K, "]; got shape ", packed->sizes(), packed->is_contiguous() ? "" : " (not contiguous)",
        shaped ? " packed for [" + std::to_string(header[1]) + ", " + std::to_string(header[2]) + "]" : std::string());
  }
  TORCH_CHECK_TYPE(weight_scale.scalar_type() == at::kFloat, "weight_scale must have dtype torch.float32, got ",
                   dtype_name(weight_scale.scalar_type()));
  const bool per_channel = weight_scale.dim() == 1;
  TORCH_CHECK_VALUE(weight_scale.dim() == 0 || (per_channel && weight_scale.size(0) == N),
                    "weight_scale must be a 0-d tensor (per-tensor) or have shape [out_features] = [", N,
                    "] (per-channel), got shape ", weight_scale.sizes());
  check_scale(x_scale, "x_scale");
  check_zero_point(x_zero_point, x.scalar_type(), "x_zero_point");
  const OutKind kind = out_kind(out_dtype);
  const Requant mode = requant_mode(requant);
  const bool quantized_out = kind == OutKind::UInt8 || kind == OutKind::Int8;
  if (quantized_out) {
    check_scale(out_scale, "out_scale");
    check_zero_point(out_zero_point, out_dtype, "out_zero_point");
  }
  at::Tensor table_c;
  if (table.has_value()) {
    check_cpu(*table, "table");
    TORCH_CHECK_VALUE(quantized_out,
                      "table maps 8-bit output codes: it needs out_dtype torch.uint8 or torch.int8, got ",
                      dtype_name(out_dtype));
    TORCH_CHECK_TYPE(table->scalar_type() == at::kByte || table->scalar_type() == at::kChar,
                     "table must have dtype torch.uint8 or torch.int8, got ", dtype_name(table->scalar_type()));
    TORCH_CHECK_VALUE(table->dim() == 1 && table->size(0) == 256, "table must have shape [256], got shape ",
                      table->sizes());
    table_c = table->contiguous();
  }
  at::Tensor residual_c;
  if (residual.has_value()) {
    check_cpu(*residual, "residual");
    TORCH_CHECK_VALUE(kind == OutKind::Float32,
                      "residual is added to a float32 output: it needs out_dtype "
                      "torch.float32, got ",
                      dtype_name(out_dtype));
    TORCH_CHECK_TYPE(residual->scalar_type() == at::kFloat, "residual must have dtype torch.float32, got ",
                     dtype_name(residual->scalar_type()));
    std::vector<int64_t> want(x.sizes().begin(), x.sizes().end() - 1);
    want.push_back(N);
    TORCH_CHECK_VALUE(residual->sizes() == at::IntArrayRef(want), "residual must have the output's shape [..., ",
                      "out_features] = ", at::IntArrayRef(want), ", got shape ", residual->sizes());
    residual_c = residual->contiguous();
  }
  const at::Tensor ws = weight_scale.contiguous();
  const float* wsp = ws.data_ptr<float>();
  for (int64_t n = 0; n < ws.numel(); ++n) {
    TORCH_CHECK_VALUE(std::isfinite(wsp[n]) && wsp[n] > 0.0f, "weight_scale must be positive and finite, got ", wsp[n],
                      " at index ", n);
  }
  at::Tensor bias_c;
  const int32_t* bias_i32 = nullptr;
  const float* bias_f32 = nullptr;
  if (bias.has_value()) {
    check_cpu(*bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "bias must have shape [out_features] = [", N,
                      "], got shape ", bias->sizes());
    bias_c = bias->contiguous();
    if (bias_c.scalar_type() == at::kInt) {
      bias_i32 = bias_c.data_ptr<int32_t>();
    } else if (bias_c.scalar_type() == at::kFloat) {
      TORCH_CHECK_VALUE(kind != OutKind::Int32 && !(quantized_out && mode == Requant::Fixed),
                        "a torch.float32 bias (PyTorch's convention) needs requant='float' and out_dtype "
                        "torch.uint8, torch.int8 or torch.float32; use an int32 bias with requant='fixed' or "
                        "out_dtype=torch.int32");
      bias_f32 = bias_c.data_ptr<float>();
      for (int64_t n = 0; n < N; ++n) {
        TORCH_CHECK_VALUE(std::isfinite(bias_f32[n]), "bias must be finite, got ", bias_f32[n], " at index ", n);
      }
    } else {
      TORCH_CHECK_TYPE(false, "bias must have dtype torch.int32 or torch.float32, got ",
                       dtype_name(bias_c.scalar_type()));
    }
  }

  EpilogueData ed;
  make_epilogue(ed, kind, mode, relu, N, static_cast<float>(x_scale), wsp, per_channel, static_cast<float>(out_scale),
                out_zero_point, bias_i32, bias_f32, "x_scale", "weight_scale");

  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  const at::Tensor x2 = x.reshape({M, K});  // a view when possible
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(N);
  at::Tensor out = at::empty(out_shape, x.options().dtype(table.has_value() ? table_c.scalar_type() : out_dtype));

  MatA ma{static_cast<const uint8_t*>(x2.data_ptr()), x2.stride(0), x2.stride(1), x2.scalar_type() == at::kChar,
          static_cast<int32_t>(x_zero_point)};
  const uint8_t* tp = table.has_value() ? static_cast<const uint8_t*>(table_c.data_ptr()) : nullptr;
  const Isa isa = active_isa();
  at::Tensor plain;
  const int8_t* pk = nullptr;
  if (weight) {
    plain = *weight;
  } else if (isa != Isa::Scalar) {
    pk = packed->data_ptr<int8_t>() + kPackedHeader;
  } else {
    plain = unpack_linear_weight(*packed, N, K);  // the scalar path reads a plain weight
  }
  MatB mb{pk ? nullptr : static_cast<const int8_t*>(plain.data_ptr()), pk ? 1 : plain.stride(1),
          pk ? K : plain.stride(0), 0};
  run(1, {0}, {0}, ma, mb, M, N, K, ed.e, out, pk, tp, residual.has_value() ? residual_c.data_ptr<float>() : nullptr);
  return out;
}

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                           const std::optional<at::Tensor>& bias, double x_scale, int64_t x_zero_point,
                           double out_scale, int64_t out_zero_point, at::ScalarType out_dtype, bool relu,
                           c10::string_view requant) {
  return linear_impl(x, &weight, nullptr, 0, weight_scale, bias, x_scale, x_zero_point, out_scale, out_zero_point,
                     out_dtype, relu, requant, std::nullopt, std::nullopt);
}

at::Tensor int8_linear_packed_cpu(const at::Tensor& x, const at::Tensor& packed_weight, int64_t out_features,
                                  const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias, double x_scale,
                                  int64_t x_zero_point, double out_scale, int64_t out_zero_point,
                                  at::ScalarType out_dtype, bool relu, const std::optional<at::Tensor>& table,
                                  c10::string_view requant, const std::optional<at::Tensor>& residual) {
  return linear_impl(x, nullptr, &packed_weight, out_features, weight_scale, bias, x_scale, x_zero_point, out_scale,
                     out_zero_point, out_dtype, relu, requant, table, residual);
}

// The fused attention (issue 15): q·kᵀ -> (+ bias, mask) -> softmax -> uint8 P -> P·v, a block of query rows at a
// time: the float scores never leave a (rows x S) scratch buffer. The definition: qlab/kernels/attention_reference.py.
// Rows per block: as many as keep the block's float scores within kAttnBlockBytes (so each block packs k and v
// once and reuses them for all its rows), at least 32, a multiple of 32.
constexpr int64_t kAttnBlockBytes = 256 * 1024;

int64_t attention_rows(int64_t T, int64_t S) {
  const int64_t fit = kAttnBlockBytes / (4 * std::max<int64_t>(S, 1));
  return std::min(T, std::max<int64_t>(32, fit / 32 * 32));
}

GemmFn active_gemm() { return kPaths[static_cast<int>(active_isa())].gemm; }

at::Tensor int8_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double q_scale,
                              int64_t q_zero_point, double k_scale, int64_t k_zero_point, double v_scale,
                              int64_t v_zero_point, const std::optional<at::Tensor>& bias, double out_scale,
                              int64_t out_zero_point, at::ScalarType out_dtype, c10::string_view softmax,
                              c10::string_view requant, double p_scale) {
  check_cpu(q, "q");
  check_cpu(k, "k");
  check_cpu(v, "v");
  TORCH_CHECK_TYPE(q.scalar_type() == at::kByte, "q must have dtype torch.uint8, got ", dtype_name(q.scalar_type()));
  TORCH_CHECK_TYPE(k.scalar_type() == at::kChar, "k must have dtype torch.int8, got ", dtype_name(k.scalar_type()));
  TORCH_CHECK_TYPE(v.scalar_type() == at::kChar, "v must have dtype torch.int8, got ", dtype_name(v.scalar_type()));
  TORCH_CHECK_VALUE(q.dim() >= 2, "q must have at least 2 dimensions [..., T, D], got shape ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == q.dim() && v.dim() == q.dim(), "k and v must have as many dimensions as q (", q.dim(),
                    "), got shapes ", k.sizes(), " and ", v.sizes());
  const int64_t nb = q.dim() - 2;
  TORCH_CHECK_VALUE(
      q.sizes().slice(0, nb) == k.sizes().slice(0, nb) && q.sizes().slice(0, nb) == v.sizes().slice(0, nb),
      "q, k and v must have the same batch dimensions, got shapes ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const int64_t T = q.size(-2), D = q.size(-1), S = k.size(-2), Dv = v.size(-1);
  TORCH_CHECK_VALUE(k.size(-1) == D, "k must have shape [..., S, D] with D = q.shape[-1] = ", D, ", got ", k.sizes());
  TORCH_CHECK_VALUE(v.size(-2) == S, "v must have shape [..., S, Dv] with S = k.shape[-2] = ", S, ", got ", v.sizes());
  check_scale(q_scale, "q_scale");
  check_scale(k_scale, "k_scale");
  check_scale(v_scale, "v_scale");
  check_zero_point(q_zero_point, at::kByte, "q_zero_point");
  check_zero_point(k_zero_point, at::kChar, "k_zero_point");
  check_zero_point(v_zero_point, at::kChar, "v_zero_point");
  TORCH_CHECK_VALUE(softmax == "float" || softmax == "int", "softmax must be one of ['float', 'int'], got '",
                    std::string(softmax), "'");
  const bool int_sm = softmax == "int";
  check_scale(p_scale, "p_scale");
  const float p_scale_f = static_cast<float>(p_scale), pinv = static_cast<float>(1.0 / p_scale);
  TORCH_CHECK_VALUE(std::isfinite(pinv), "p_scale = ", p_scale, " is too small: 1 / p_scale overflows float32");
  TORCH_CHECK_VALUE(!int_sm || p_scale_f == static_cast<float>(1.0 / 255.0),
                    "p_scale must be 1/255 with softmax='int' (the integer softmax makes codes of 1/255), got ",
                    p_scale);
  const OutKind kind = out_kind(out_dtype);
  const Requant mode = requant_mode(requant);
  if (kind == OutKind::UInt8 || kind == OutKind::Int8) {
    check_scale(out_scale, "out_scale");
    check_zero_point(out_zero_point, out_dtype, "out_zero_point");
  }
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end() - 2);
  int64_t batch = 1;
  for (int64_t s : shape) batch *= s;
  shape.push_back(T);
  at::Tensor bx;
  if (bias.has_value()) {
    check_cpu(*bias, "bias");
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, "bias must have dtype torch.float32, got ",
                     dtype_name(bias->scalar_type()));
    std::vector<int64_t> target(shape);
    target.push_back(S);
    bool ok = bias->dim() <= static_cast<int64_t>(target.size());
    for (int64_t i = 1; ok && i <= bias->dim(); ++i) {
      const int64_t b = bias->size(-i), t = target[target.size() - i];
      ok = b == t || b == 1;
    }
    TORCH_CHECK_VALUE(ok, "bias must broadcast to [..., T, S] = ", at::IntArrayRef(target), ", got shape ",
                      bias->sizes());
    bx = bias->expand(target);
    if (int_sm) {
      TORCH_CHECK_VALUE((bias->eq(0) | bias->le(-FLT_MAX)).all().item<bool>(),
                        "bias must hold only 0 and the mask value with softmax='int' (integer softmax cannot add "
                        "other float biases)");
    }
  }
  ISoftmax ic{1, 0, 0};
  if (int_sm) {
    const double s = q_scale * k_scale;
    TORCH_CHECK_VALUE(s < M_LN2, "q_scale * k_scale must be below ln 2 for the integer softmax, got ", s);
    ic.q_ln2 = static_cast<int64_t>(std::floor(M_LN2 / s));
    ic.qb = static_cast<int64_t>(std::floor(1.353 / s));
    ic.qc = static_cast<int64_t>(std::floor(0.344 / ((0.3585 * s) * s)));
  }
  EpilogueData e1, e2;
  const float skf = static_cast<float>(k_scale), svf = static_cast<float>(v_scale);
  make_epilogue(e1, int_sm ? OutKind::Int32 : OutKind::Float32, Requant::Float, false, S, static_cast<float>(q_scale),
                &skf, false, 1.0f, 0, nullptr, nullptr, "q_scale", "k_scale");
  make_epilogue(e2, kind, mode, false, Dv, p_scale_f, &svf, false, static_cast<float>(out_scale), out_zero_point,
                nullptr, nullptr, "p_scale", "v_scale");
  // The integer softmax's int64 sums (255 * e + sum / 2, each e <= qb^2 + qc) must not wrap: the same float64 test as
  // qlab.intonly.check_sum_fits, so the reference and this op refuse the same logit scales.
  const double qb = static_cast<double>(ic.qb), row_bound = 256.0 * static_cast<double>(S) * (qb * qb + ic.qc);
  TORCH_CHECK_VALUE(!int_sm || row_bound < 0x1p63, "scale (the logits' scale, q_scale * k_scale) = ", q_scale * k_scale,
                    " is too small for the integer softmax over ", S,
                    " keys: 255 x the row's sum of integer exps would overflow int64");
  shape.push_back(Dv);
  at::Tensor out = at::empty(shape, q.options().dtype(out_dtype));
  if (batch == 0 || T == 0 || Dv == 0) return out;

  const auto qoff = batch_offsets(q, nb, batch), koff = batch_offsets(k, nb, batch), voff = batch_offsets(v, nb, batch);
  std::vector<int64_t> boff;
  if (bx.defined()) boff = batch_offsets(bx, nb, batch);
  const uint8_t* qd = static_cast<const uint8_t*>(q.data_ptr());
  const int8_t* kd = static_cast<const int8_t*>(k.data_ptr());
  const int8_t* vd = static_cast<const int8_t*>(v.data_ptr());
  const float* bd = bx.defined() ? bx.data_ptr<float>() : nullptr;
  const size_t elem = out.element_size();
  uint8_t* od = static_cast<uint8_t*>(out.data_ptr());
  const GemmFn gemm = active_gemm();
  const Isa isa = active_isa();
  const SoftmaxRowsFn rows_softmax = softmax_rows_of(isa);
  // The 8-lane integer softmax needs 255 * (sum of a row's exps) at most half int64's range (its floors go through
  // float64); the logit scales between that and the limit checked above keep the scalar loop.
  void (*row_isoftmax)(const int32_t*, const uint8_t*, int64_t, const ISoftmax&, int64_t*, uint8_t*) =
      zmm(isa) && row_bound < 0x1p62 ? isoftmax_row_u8_avx512 : isoftmax_row_u8;
  // Below 2^50 the float64 lanes compute every integer of it exactly (softmax.cpp says why).
  void (*rows_isoftmax_f64)(const int32_t*, const uint8_t*, int64_t, int64_t, const ISoftmax&, int64_t*, uint8_t*) =
      row_bound >= 0x1p50 || isa == Isa::Scalar ? nullptr
                                                : (zmm(isa) ? isoftmax_rows_u8_avx512_f64 : isoftmax_rows_u8_avx2_f64);
  const int64_t kAttnRows = std::max<int64_t>(attention_rows(T, S), 1);
  const int64_t blocks = (T + kAttnRows - 1) / kAttnRows;
  // The SIMD paths read k and v prepacked (the layout of pack_linear_weight): each thread packs a head's k and v once,
  // when its first block of that head comes, instead of once per block of rows (785 tokens: 13 blocks).
  const bool prepack = isa != Isa::Scalar;
  void (*pack_kv)(const MatB&, int64_t, int64_t, int8_t*) = zmm(isa) ? pack_b_vnni : pack_b_vnni_avx2;
  const int64_t k_bytes = (S + kPackedPanel - 1) / kPackedPanel * packed_panel_bytes(D);
  const int64_t v_bytes = (Dv + kPackedPanel - 1) / kPackedPanel * packed_panel_bytes(S);
  at::parallel_for(0, batch * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int8_t> packs(prepack ? static_cast<size_t>(k_bytes + v_bytes + 64) : 0);
    int8_t* kpk = prepack ? reinterpret_cast<int8_t*>((reinterpret_cast<uintptr_t>(packs.data()) + 63) & ~uintptr_t{63})
                          : nullptr;  // 64-byte aligned: the panels are read a cache line at a time
    int8_t* vpk = prepack ? kpk + k_bytes : nullptr;
    int64_t packed_head = -1;
    std::vector<float> logits(static_cast<size_t>(kAttnRows * S) + 1);
    std::vector<int32_t> acc(int_sm ? static_cast<size_t>(kAttnRows * S) + 1 : 1);
    std::vector<float> ef(static_cast<size_t>(kSoftmaxRows * S) + 1);
    std::vector<int64_t> ei(static_cast<size_t>(kSoftmaxRows * (S + 8)));
    std::vector<uint8_t> p(static_cast<size_t>(kAttnRows * S) + 1), keep(static_cast<size_t>(kAttnRows * S) + 1);
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t bi = ti / blocks, r0 = (ti % blocks) * kAttnRows, rows = std::min(kAttnRows, T - r0);
      const MatB kb{kd + koff[bi], k.stride(-1), k.stride(-2), static_cast<int32_t>(k_zero_point)};
      const MatB vb{vd + voff[bi], v.stride(-2), v.stride(-1), static_cast<int32_t>(v_zero_point)};
      if (prepack && bi != packed_head) {
        pack_kv(kb, S, D, kpk);
        pack_kv(vb, Dv, S, vpk);
        packed_head = bi;
      }
      Task a;
      a.a = MatA{qd + qoff[bi] + r0 * q.stride(-2), q.stride(-2), q.stride(-1), false,
                 static_cast<int32_t>(q_zero_point)};
      a.b = kb;
      a.K = D;
      a.m0 = 0;
      a.m1 = rows;
      a.n0 = 0;
      a.n1 = S;
      a.out = int_sm ? static_cast<void*>(acc.data()) : static_cast<void*>(logits.data());
      a.ldc = S;
      if (prepack) {
        a.packed = kpk;
        a.packed_stride = packed_panel_bytes(D);
        a.packed_colsum = packed_kp(D) * kPackedPanel;
        a.packed_n = S;
      }
      if (S > 0) gemm(a, e1.e);
      for (int64_t i = 0; bd && i < rows; ++i) {  // keep: 1 = attend; the float logits get the bias (-inf: masked)
        const float* brow = bd + boff[bi] + (r0 + i) * bx.stride(-2);
        uint8_t* kr = keep.data() + i * S;
        for (int64_t j = 0; j < S; ++j) {
          const float bv = brow[j * bx.stride(-1)];
          kr[j] = !(bv <= -FLT_MAX || std::isnan(bv));
          if (!int_sm) logits[i * S + j] = kr[j] ? logits[i * S + j] + bv : -INFINITY;
        }
      }
      const uint8_t* kp = bd ? keep.data() : nullptr;
      if (!int_sm) {
        rows_softmax(logits.data(), rows, S, pinv, ef.data(), p.data());
      } else if (rows_isoftmax_f64) {
        rows_isoftmax_f64(acc.data(), kp, rows, S, ic, ei.data(), p.data());
      } else {
        for (int64_t i = 0; i < rows; ++i) {
          row_isoftmax(acc.data() + i * S, kp ? kp + i * S : nullptr, S, ic, ei.data(), p.data() + i * S);
        }
      }
      Task c;
      c.a = MatA{p.data(), S, 1, false, 0};
      c.b = vb;
      c.K = S;
      c.m0 = 0;
      c.m1 = rows;
      c.n0 = 0;
      c.n1 = Dv;
      c.out = od + static_cast<size_t>((bi * T + r0) * Dv) * elem;
      c.ldc = Dv;
      if (prepack) {
        c.packed = vpk;
        c.packed_stride = packed_panel_bytes(S);
        c.packed_colsum = packed_kp(S) * kPackedPanel;
        c.packed_n = Dv;
      }
      gemm(c, e2.e);
    }
  });
  return out;
}

at::Tensor quantize_per_tensor_cpu(const at::Tensor& x, double scale, int64_t zero_point, at::ScalarType dtype) {
  check_cpu(x, "x");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "x must have dtype torch.float32, got ", dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(dtype == at::kByte || dtype == at::kChar, "dtype must be one of [torch.uint8, torch.int8], got ",
                    dtype_name(dtype));
  check_scale(scale, "scale");
  check_zero_point(zero_point, dtype, "zero_point");
  const bool is_signed = dtype == at::kChar;
  // float32(1 / scale) as PyTorch computes it; every step below is float32 as in its kernel
  const QuantizeArgs q{1.0f / static_cast<float>(scale), static_cast<float>(zero_point), is_signed ? -128.0f : 0.0f,
                       is_signed ? 127.0f : 255.0f, is_signed};
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  const Isa isa = active_isa();
  void (*fn)(const float*, int64_t, const QuantizeArgs&, void*) =
      zmm(isa) ? quantize_avx512 : (isa == Isa::Scalar ? quantize_scalar : quantize_avx2);
  const float* px = xc.data_ptr<float>();
  uint8_t* po = static_cast<uint8_t*>(out.data_ptr());
  at::parallel_for(0, xc.numel(), 32768, [&](int64_t b, int64_t e) { fn(px + b, e - b, q, po + b); });
  return out;
}

// The float softmax on its own, as the fused op runs it on the active path: (exps, codes) of float32 logits
// [rows, S] (-inf: masked). For tests: the codes hide most of an exp's low bits, the exps show them all.
std::tuple<at::Tensor, at::Tensor> softmax_rows_op(const at::Tensor& logits, double p_scale) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.device().is_cpu(),
                    "logits must be a 2-D float32 CPU tensor, got ", logits.dim(), "-D ", logits.scalar_type(), " on ",
                    logits.device());
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "logits must have at least one column, got shape ", logits.sizes());
  check_scale(p_scale, "p_scale");
  const float pinv = static_cast<float>(1.0 / p_scale);
  TORCH_CHECK_VALUE(std::isfinite(pinv), "p_scale = ", p_scale, " is too small: 1 / p_scale overflows float32");
  const at::Tensor x = logits.contiguous();
  const int64_t rows = x.size(0), S = x.size(1);
  at::Tensor e = at::empty_like(x), codes = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const Isa isa = active_isa();
  const SoftmaxRowsFn fn = softmax_rows_of(isa);
  // each call leaves in e only the exps of its last group of rows computed together: one group per call
  const int64_t group = softmax_rows_together(isa);
  for (int64_t i = 0; i < rows; i += group) {
    fn(x.data_ptr<float>() + i * S, std::min(group, rows - i), S, pinv, e.data_ptr<float>() + i * S,
       codes.data_ptr<uint8_t>() + i * S);
  }
  return {e, codes};
}

}  // namespace

TORCH_LIBRARY(qlab, m) {
  m.def(
      "int8_bmm(Tensor a, Tensor b, float a_scale, int a_zero_point, float b_scale, int b_zero_point, "
      "float out_scale, int out_zero_point, ScalarType out_dtype, bool transpose_b, str requant) -> Tensor");
  m.def(
      "int8_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias, float x_scale, int x_zero_point, "
      "float out_scale, int out_zero_point, ScalarType out_dtype, bool relu, str requant) -> Tensor");
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def(
      "int8_linear_packed(Tensor x, Tensor packed_weight, int out_features, Tensor weight_scale, Tensor? bias, "
      "float x_scale, int x_zero_point, float out_scale, int out_zero_point, ScalarType out_dtype, bool relu, "
      "Tensor? table, str requant, Tensor? residual=None) -> Tensor");
  m.def("quantize_per_tensor(Tensor x, float scale, int zero_point, ScalarType dtype) -> Tensor");
  m.def(
      "int8_attention(Tensor q, Tensor k, Tensor v, float q_scale, int q_zero_point, float k_scale, "
      "int k_zero_point, float v_scale, int v_zero_point, Tensor? bias, float out_scale, int out_zero_point, "
      "ScalarType out_dtype, str softmax, str requant, float p_scale=0.0039215686274509803) -> Tensor");
  m.def("_set_isa(str isa) -> ()", &set_isa_op);
  m.def("_get_isa() -> str", &get_isa_op);
  m.def("_supported_isas() -> str[]", &supported_isas_op);
  m.def("_quantize_multiplier(float m) -> (int, int)", &quantize_multiplier_op);
  m.def("_softmax_rows(Tensor logits, float p_scale) -> (Tensor, Tensor)", &softmax_rows_op);
  m.def("_build_info() -> str", &build_info_op);
  m.def("_peak_burst(str isa, int n) -> int", &peak_burst_op);
  m.def("_clock_burst(int n) -> int", &clock_burst_op);
}

TORCH_LIBRARY_IMPL(qlab, CPU, m) {
  m.impl("int8_bmm", &int8_bmm_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("pack_linear_weight", &pack_linear_weight_cpu);
  m.impl("int8_linear_packed", &int8_linear_packed_cpu);
  m.impl("quantize_per_tensor", &quantize_per_tensor_cpu);
  m.impl("int8_attention", &int8_attention_cpu);
}

}  // namespace qlab
