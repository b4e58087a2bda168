"""Reference solutions for the exercises of 09-fake-vs-real-mismatch.ipynb (for instructors)."""

K = 0.8
# The fused kernel: range [0, k] does not straddle 0, so it uses the affine formula (k - 0) / 255.
# convert: the observer's symmetric formula max(|min|, max) / ((127 - (-128)) / 2) = k / 127.5.
FAKE_SCALE, CONVERT_SCALE = K / 255, K / 127.5


def real_code(i):
    # int32 accumulator 127 * i, requantized by (1/255)(2k/255)/(k/255) = 2/255, rounded to nearest
    return round(127 * i * 2 / 255)


SOLUTIONS = {
    "09.1": (FAKE_SCALE, CONVERT_SCALE),
    "09.2": real_code,
}
