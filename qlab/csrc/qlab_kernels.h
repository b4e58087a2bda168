// qlab int8 kernels: the data structures shared by the four CPU paths.
//
// One "problem" is an int8 matrix product with a fused epilogue:
//
//   acc[m, n]  = sum_k (A[m, k] - za) * (B[k, n] - zb)          (int32, wraps mod 2^32)
//   acc[m, n] += bias[n]                                          (int32 bias, optional)
//   out[m, n]  = epilogue(acc[m, n])                              (see Epilogue below)
//
// A holds uint8 or int8 activations, B int8 weights/keys/values. The five
// implementations of the product (gemm_scalar.cpp, gemm_avx2.cpp (AVX2 and AVX-VNNI), gemm_avx512_vnni.cpp and
// gemm_amx.cpp) compute the *same integers* in different orders; as
// int32 addition is exact modulo 2^32, every path, thread count and blocking
// gives bit-identical results. ops.cpp owns argument checking, threading and
// the choice of path; these files only see raw pointers.
//
// This header deliberately includes no torch header, so the SIMD files
// compile quickly and cannot accidentally call into ATen.
// Taught in notebooks/08-vit-attention-int8.ipynb.
#pragma once

#include <cstdint>

namespace qlab {

// Which code path runs the matrix product. Values are stable (used as array indices). AvxVnni is AVX2 plus the
// 256-bit VEX vpdpbusd of Intel's client cores (Alder Lake and newer) and of Sapphire Rapids Xeons.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512Vnni = 2, Amx = 3, AvxVnni = 4 };

enum class OutKind : int { UInt8 = 0, Int8 = 1, Int32 = 2, Float32 = 3 };
enum class Requant : int { Float = 0, Fixed = 1 };

// A[m, k] lives at data + m * rs + k * cs (strides in elements, may be any value).
struct MatA {
  const uint8_t* data;  // int8 data is read through the same pointer, see is_signed
  int64_t rs, cs;
  bool is_signed;  // true: the bytes are int8 two's complement
  int32_t zp;      // zero point, in the range of the dtype
};

// B[k, n] lives at data + k * ks + n * ns (a transposed view simply swaps the strides).
struct MatB {
  const int8_t* data;
  int64_t ks, ns;
  int32_t zp;
};

// The epilogue turns an int32 accumulator into the output element.
// All per-column arrays are indexed by the output column n and are readable
// up to a padded length (ops.cpp pads them to a multiple of 64 with zeros),
// so the SIMD paths may load whole vectors past the last column.
//
//   Int32  : out = acc                                   (relu: max(out, 0))
//   Float32: out = float(acc) * scale[n] (+ fbias[n])    (relu: max(out, 0))
//   UInt8/Int8, Requant::Float (PyTorch/fbgemm arithmetic, all float32):
//            out = clamp(nearbyint((float(acc) (+ fbias[n])) * scale[n]) + zo, lo, hi)
//   UInt8/Int8, Requant::Fixed (gemmlowp/TFLite, integers only):
//            out = clamp(rounding_rshift(srdhm(sat_lshift(acc, lshift[n]), qmul[n]), rshift[n]) + zo, lo, hi)
//
// fbias is the *float* bias term of PyTorch's quantized Linear, already
// divided by input_scale * weight_scale exactly as fbgemm does it; it is only
// used when non-null. The int32 bias is folded into the accumulator by the
// path (it is part of the per-panel column offsets).
struct Epilogue {
  OutKind kind;
  Requant mode;
  bool relu;
  const int32_t* bias;    // int32 bias per column, or nullptr
  const float* fbias;     // float bias term per column, or nullptr (Float mode / Float32 output only)
  const float* scale;     // Float mode: requantization multiplier; Float32 output: sa * sb[n]
  const int32_t* qmul;    // Fixed mode: 31-bit quantized multiplier per column
  const int32_t* lshift;  // Fixed mode: left shift (>= 0) per column
  const int32_t* rshift;  // Fixed mode: right shift (>= 0) per column
  bool any_lshift;        // Fixed mode: some lshift[n] > 0 (a multiplier >= 1); else the shift is skipped
  bool no_overflow;       // Float mode: |(float(acc) + fbias[n]) * scale[n]| < 2^31 - 256 for every acc (e.g. all
                          // multipliers < 1 and no bias): the SIMD paths may skip the float clamp and saturate
                          // while narrowing instead
  int32_t zo;             // output zero point
  int32_t lo, hi;         // output clamp range (relu raises lo to zo)
};

// One task: rows [m0, m1) and columns [n0, n1) of one matrix product C = A B.
// out points at C[0, 0]; C is row-major with row stride ldc (elements).
struct Task {
  MatA a;
  MatB b;
  int64_t K;
  int64_t m0, m1, n0, n1;
  void* out;
  int64_t ldc;
  // A weight packed ahead of time (torch.ops.qlab.pack_linear_weight), read in place instead of packing b (the AVX2
  // path widens 16 bytes at a time in registers): panel p (columns [48p, 48p + 48)) starts at packed
  // + p * packed_stride and holds [kp/4][16 * ceil(w / 16)][4] int8 (kp = K rounded up to 64, w the panel's columns),
  // then, at byte packed_colsum, the 48 column sums as int32. null: pack b per call.
  const int8_t* packed = nullptr;
  int64_t packed_stride = 0, packed_colsum = 0;
  int64_t packed_n = 0;   // all the weight's columns (the last panel's width, for paths whose tasks split elsewhere)
  int64_t packed_n0 = 0;  // the column of C the first panel starts at (0 but for a B packed per task)
};

// The prepacked weight layout (one place; ops.cpp packs, the AVX2, VNNI and AMX paths read it): a 1-D int8 tensor,
// a 64-byte header (int32: kPackedMagic, N, K, then zeros) and ceil(N / 48) panels of packed_panel_bytes(K).
constexpr int64_t kPackedPanel = 48;
constexpr int64_t kPackedHeader = 64;
constexpr int32_t kPackedMagic = 0x31424C51;  // "QLB1" read as little-endian bytes
inline int64_t packed_kp(int64_t K) { return ((K < 1 ? 1 : K) + 63) / 64 * 64; }
inline int64_t packed_panel_bytes(int64_t K) { return packed_kp(K) * kPackedPanel + 4 * kPackedPanel; }

// B ([K, N] as MatB reads it) into the prepacked layout's panels (no header): what pack_linear_weight writes for a
// weight, with the VNNI packing loops; the fused attention packs each head's k and v with it once (VNNI/AMX only).
void pack_b_vnni(const MatB& b, int64_t N, int64_t K, int8_t* dst);
// The same panels and column sums with AVX2 only (the AVX2 and AVX-VNNI paths: the fused attention's k and v, and
// gemm_avx_vnni's B when it is not prepacked).
void pack_b_vnni_avx2(const MatB& b, int64_t N, int64_t K, int8_t* dst);

// The paths. Each computes out[m0:m1, n0:n1] for one task.
void gemm_scalar(const Task& t, const Epilogue& e);
void gemm_avx2(const Task& t, const Epilogue& e);
void gemm_avx_vnni(const Task& t, const Epilogue& e);  // gemm_avx2.cpp: its byte tiles with vpdpbusd (ymm)
void gemm_avx512_vnni(const Task& t, const Epilogue& e);
void gemm_amx(const Task& t, const Epilogue& e);  // shares the VNNI path's packing (vnni_common.h)

// AMX-INT8 reported by CPUID and tile state granted by the OS (asks Linux for it; call once).
bool amx_usable();

// float32 -> 8-bit codes (quantize.cpp): q = clamp(nearbyint(x * inv) + zp, lo, hi), all in float32.
struct QuantizeArgs {
  float inv, zp, lo, hi;
  bool is_signed;  // int8 output, else uint8
};
void quantize_scalar(const float* x, int64_t n, const QuantizeArgs& q, void* out);
void quantize_avx2(const float* x, int64_t n, const QuantizeArgs& q, void* out);
void quantize_avx512(const float* x, int64_t n, const QuantizeArgs& q, void* out);

// A 256-entry table on a block of 8-bit codes, in place (quantize.cpp): o = table[o ^ flip]. The VBMI loop needs
// AVX-512 VBMI (ops.cpp checks); both give the same bytes.
void table_rows_scalar(uint8_t* o, int64_t ld, int64_t rows, int64_t cols, const uint8_t* table, uint8_t flip);
void table_rows_vbmi(uint8_t* o, int64_t ld, int64_t rows, int64_t cols, const uint8_t* table, uint8_t flip);

// The fused attention's softmax, one row -> uint8 codes of scale 1/255 (softmax.cpp; the definition is
// qlab/kernels/attention_reference.py). Float variant: masked logits are -inf (exp gives exactly 0; a row with
// nothing kept gives all zeros); the three loops give the same bits. Integer variant (I-BERT's, qlab/intonly.py):
// keep: 1 = attend, 0 = masked (nullptr: all kept). e: S floats / int64s of scratch.
float exp_f32(float x);
// rows x S logits and codes, row after row; pinv: float32(1 / p_scale), the codes' inverse scale (255 for codes of
// 1/255); e: kSoftmaxRows x S floats of scratch.
constexpr int64_t kSoftmaxRows = 4;      // rows the AVX-512 loop computes together
constexpr int64_t kSoftmaxRowsAvx2 = 2;  // and the AVX2 one
void softmax_rows_u8_scalar(const float* logits, int64_t rows, int64_t S, float pinv, float* e, uint8_t* out);
void softmax_rows_u8_avx2(const float* logits, int64_t rows, int64_t S, float pinv, float* e, uint8_t* out);
void softmax_rows_u8_avx512(const float* logits, int64_t rows, int64_t S, float pinv, float* e, uint8_t* out);
struct ISoftmax {
  int64_t q_ln2, qb, qc;  // floor(ln2 / s), floor(b / s), floor(c / (a s^2)) for the logits' scale s
};
void isoftmax_row_u8(const int32_t* acc, const uint8_t* keep, int64_t S, const ISoftmax& c, int64_t* e, uint8_t* out);
void isoftmax_row_u8_avx512(const int32_t* acc, const uint8_t* keep, int64_t S, const ISoftmax& c, int64_t* e,
                            uint8_t* out);  // the same integers, 8 lanes (AVX-512F/DQ)
// rows x S of them (keep: rows x S or nullptr; e: kSoftmaxRows x (S + 8) of scratch) in float64 lanes, exact where
// 256 S (qb^2 + qc) < 2^50 (the caller checks)
void isoftmax_rows_u8_avx512_f64(const int32_t* acc, const uint8_t* keep, int64_t rows, int64_t S, const ISoftmax& c,
                                 int64_t* e, uint8_t* out);
void isoftmax_rows_u8_avx2_f64(const int32_t* acc, const uint8_t* keep, int64_t rows, int64_t S, const ISoftmax& c,
                               int64_t* e, uint8_t* out);  // the same on 4 lanes (AVX2)

// The core's probes (probes.cpp): n rounds of the path's multiply-add instruction on registers, returning the
// multiply-adds done (the path must be one cpu_supports() and not scalar); n rounds of 8 dependent imul r64,
// returning the cycles they take (3 each).
int64_t peak_burst(Isa isa, int64_t n);
int64_t clock_burst(int64_t n);

// Column-block width each path prefers (tasks split N at multiples of it).
constexpr int64_t kPanelScalar = 16;
constexpr int64_t kPanelAvx2 = 16;
constexpr int64_t kPanelVnni = 48;
constexpr int64_t kPanelAmx = 48;

}  // namespace qlab
