"""Reference solutions for the exercises of 07-x86-performance.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("07.1", int8_linear_bytes)``.
"""


def int8_linear_bytes(n_in, n_out):
    # int8 codes (1 B each) + fp32 bias + per output channel a float64 scale and an int64 zero point
    return n_in * n_out + 4 * n_out + 8 * n_out + 8 * n_out


# vpdpbusd ymm: 8 int32 lanes x 4 u8*s8 products = 256 / 8 = 32 multiply-adds; vfmadd231ps ymm: 256 / 32 = 8.
AVX_VNNI_YMM = (32, 4.0)

# From the recorded sweep: Linear(1024, 1024) on one row (x1.92), Linear(512, 512) on 128 rows (x3.11) and
# the 3x3 conv on 28x28 (x2.01) beat fp32; the 64- and 256-wide Linears on one row and the conv on 4x4 lose.
INT8_WINS = {"b", "c", "e"}

SOLUTIONS = {
    "07.1": int8_linear_bytes,
    "07.2": AVX_VNNI_YMM,
    "07.3": INT8_WINS,
}
