// One row of the fused int8 attention's softmax -> uint8 probability codes of scale 1/255.
//
// The definition is qlab/kernels/attention_reference.py (softmax_u8) and qlab/intonly.py (i_softmax); this file
// computes the same numbers. The float variant is written so that no instruction set, vector width or thread
// count can change a bit: exp is a fixed sequence of float32 multiplies and adds (the build forbids FMA
// contraction, -ffp-contract=off), and the row sum runs in 16 lanes folded 8-4-2-1, whatever the machine.
// Scalar code for now: a vector version must keep exactly this order (issue 15).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "qlab_kernels.h"

namespace qlab {

namespace {

constexpr float kExpFlush = -87.0f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187e-06f;
// 1/6!, 1/5!, ..., 1/0!, rounded to float32 as the reference's torch.tensor(1.0 / math.factorial(i)) is
constexpr float kPoly[7] = {static_cast<float>(1.0 / 720.0),
                            static_cast<float>(1.0 / 120.0),
                            static_cast<float>(1.0 / 24.0),
                            static_cast<float>(1.0 / 6.0),
                            static_cast<float>(1.0 / 2.0),
                            1.0f,
                            1.0f};

inline float pow2(int n) {  // 2^n for -126 <= n <= 127, from its exponent bits
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

float exp_f32(float x) {
  if (!(x >= kExpFlush)) return 0.0f;
  const float n = std::nearbyint(x * kLog2e);
  const float nl = n * kLn2Hi;
  const float nl2 = n * kLn2Lo;
  const float r = (x - nl) - nl2;
  float p = kPoly[0];
  for (int i = 1; i < 7; ++i) {
    const float pr = p * r;
    p = pr + kPoly[i];
  }
  return p * pow2(static_cast<int>(n));
}

void softmax_row_u8(const float* logits, const uint8_t* keep, int64_t S, float* e, uint8_t* out) {
  float m = -INFINITY;
  for (int64_t j = 0; j < S; ++j) {
    if ((!keep || keep[j]) && logits[j] > m) m = logits[j];
  }
  if (!std::isfinite(m)) m = 0.0f;
  float lanes[16] = {0.0f};
  for (int64_t j = 0; j < S; ++j) {
    const bool k = !keep || keep[j];
    e[j] = k ? exp_f32(logits[j] - m) : 0.0f;
    lanes[j % 16] = lanes[j % 16] + e[j];
  }
  for (int width = 8; width >= 1; width /= 2) {
    for (int i = 0; i < width; ++i) lanes[i] = lanes[i] + lanes[i + width];
  }
  const float total = lanes[0];
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int64_t j = 0; j < S; ++j) {
    const float pj = e[j] * inv;
    float r = std::nearbyint(pj * 255.0f);
    r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
    out[j] = static_cast<uint8_t>(r);
  }
}

void isoftmax_row_u8(const int32_t* acc, const uint8_t* keep, int64_t S, const ISoftmax& c, int64_t* e, uint8_t* out) {
  int64_t m = 0;
  bool any = false;
  for (int64_t j = 0; j < S; ++j) {
    if ((!keep || keep[j]) && (!any || acc[j] > m)) {
      m = acc[j];
      any = true;
    }
  }
  int64_t total = 0;
  for (int64_t j = 0; j < S; ++j) {
    if (keep && !keep[j]) {
      e[j] = 0;
      continue;
    }
    const int64_t q = static_cast<int64_t>(acc[j]) - m;  // <= 0
    const int64_t z = (-q) / c.q_ln2;                    // -q >= 0: the floor
    const int64_t qp = q + z * c.q_ln2;
    const int64_t t = qp + c.qb;
    const int64_t ql = t * t + c.qc;
    e[j] = ql >> (z < 62 ? z : 62);
    total += e[j];
  }
  const int64_t div = total > 0 ? total : 1;
  for (int64_t j = 0; j < S; ++j) {
    int64_t num = 255 * e[j] + total / 2;
    int64_t p = num / div;  // num >= 0: the floor
    out[j] = static_cast<uint8_t>(p < 0 ? 0 : (p > 255 ? 255 : p));
  }
}

}  // namespace qlab
