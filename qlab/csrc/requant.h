// Scalar requantization: the definition every SIMD path must reproduce bit for bit.
//
// Two ways to turn an int32 accumulator into an 8-bit code (notebook
// notebooks/08-vit-attention-int8.ipynb compares them):
//
// * Requant::Float (PyTorch / fbgemm): multiplier = float32(float32(sa * sb) / so),
//     q = clamp(nearbyint(float32(acc) * multiplier) + zo, lo, hi)
//   float32(acc) and the product both round to nearest-even, nearbyint rounds
//   half to even: exactly what fbgemm's AVX2 code (cvtdq2ps, mulps, cvtps2dq)
//   does, so the result equals torch.ao.nn.quantized.Linear on the x86 engine.
//
// * Requant::Fixed (gemmlowp / TFLite): multiplier M = sa * sb / so (double)
//   written as M = qmul * 2^(shift - 31) with qmul a 31-bit integer, then
//     q = clamp(rounding_rshift(srdhm(acc << lshift, qmul), rshift) + zo, lo, hi)
//   using integers only, so every machine gives the same codes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "qlab_kernels.h"

namespace qlab {

// int32 addition that wraps modulo 2^32 (signed overflow is undefined in C++).
inline int32_t wrap_add(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}

inline int32_t wrap_mul(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) * static_cast<uint32_t>(b));
}

// gemmlowp's SaturatingRoundingDoublingHighMul: round(a * b / 2^31), with the
// single overflowing case (a == b == INT32_MIN) saturated.
inline int32_t srdhm(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));  // C++ division truncates toward 0
}

// gemmlowp's RoundingDivideByPOT: x / 2^e rounded to nearest, ties away from zero. 0 <= e <= 31.
inline int32_t rounding_rshift(int32_t x, int e) {
  const int32_t mask = static_cast<int32_t>((int64_t{1} << e) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (remainder > threshold ? 1 : 0);
}

// x * 2^s saturated to int32 (0 <= s <= 30). TFLite leaves the overflow undefined; qlab saturates.
inline int32_t sat_lshift(int32_t x, int s) {
  const int64_t v = static_cast<int64_t>(x) * (int64_t{1} << s);
  if (v > INT32_MAX) return INT32_MAX;
  if (v < INT32_MIN) return INT32_MIN;
  return static_cast<int32_t>(v);
}

// TFLite's QuantizeMultiplier: m = qmul * 2^(shift - 31), qmul in [2^30, 2^31).
inline void quantize_multiplier(double m, int32_t* qmul, int32_t* shift) {
  if (m == 0.0) {
    *qmul = 0;
    *shift = 0;
    return;
  }
  int e = 0;
  const double q = std::frexp(m, &e);                                                // m = q * 2^e, q in [0.5, 1)
  int64_t q_fixed = static_cast<int64_t>(std::round(q * double(int64_t{1} << 31)));  // ties away from 0
  if (q_fixed == (int64_t{1} << 31)) {                                               // q rounded up to 1.0
    q_fixed /= 2;
    ++e;
  }
  if (e < -31) {  // too small: the product is 0
    e = 0;
    q_fixed = 0;
  }
  if (e > 30) {  // too large: saturate
    e = 30;
    q_fixed = (int64_t{1} << 31) - 1;
  }
  *qmul = static_cast<int32_t>(q_fixed);
  *shift = e;
}

inline int32_t clamp_i32(int32_t x, int32_t lo, int32_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

// The whole epilogue for one element: acc already includes the int32 bias.
inline void epilogue_one(int32_t acc, int64_t n, const Epilogue& e, void* out, int64_t idx) {
  switch (e.kind) {
    case OutKind::Int32: {
      static_cast<int32_t*>(out)[idx] = (e.relu && acc < 0) ? 0 : acc;
      return;
    }
    case OutKind::Float32: {
      float f = static_cast<float>(acc) * e.scale[n];
      if (e.fbias) f = f + e.fbias[n];
      if (e.relu && !(f > 0.0f)) f = 0.0f;
      static_cast<float*>(out)[idx] = f;
      return;
    }
    default: break;
  }
  int32_t q;
  if (e.mode == Requant::Float) {
    float f = static_cast<float>(acc);  // rounds to nearest-even when |acc| > 2^24, like cvtdq2ps
    if (e.fbias) f = f + e.fbias[n];
    f = f * e.scale[n];
    // Clamping before rounding gives the same result as after (the bounds are integers)
    // and keeps the conversion to int in range.
    const float lo = static_cast<float>(e.lo - e.zo), hi = static_cast<float>(e.hi - e.zo);
    f = f < lo ? lo : (f > hi ? hi : f);
    q = static_cast<int32_t>(std::nearbyint(f)) + e.zo;  // round half to even (default FP mode)
  } else {
    int32_t x = sat_lshift(acc, e.lshift[n]);
    x = srdhm(x, e.qmul[n]);
    x = rounding_rshift(x, e.rshift[n]);
    q = clamp_i32(x, e.lo - e.zo, e.hi - e.zo) + e.zo;
  }
  if (e.kind == OutKind::UInt8) {
    static_cast<uint8_t*>(out)[idx] = static_cast<uint8_t>(q);
  } else {
    static_cast<int8_t*>(out)[idx] = static_cast<int8_t>(q);
  }
}

}  // namespace qlab
