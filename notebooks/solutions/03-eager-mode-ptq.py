"""Reference solutions for the exercises of 03-eager-mode-ptq.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("03.1", groups)``.
"""

# One [conv, bn, relu] group per convolution; the MaxPool2d layers features.6 and features.10 shift the indices.
GROUPS = [
    ["features.0", "features.1", "features.2"],
    ["features.3", "features.4", "features.5"],
    ["features.7", "features.8", "features.9"],
    ["features.11", "features.12", "features.13"],
]

# x86 and fbgemm: FBGEMM's AVX2 kernels sum pairs of uint8 x int8 products in a saturating int16 (vpmaddubsw);
# 2 x 255 x 127 = 64 770 would overflow it, 7-bit codes cannot. onednn relies on VNNI; qnnpack targets ARM.
REDUCE_RANGE = ({"x86", "fbgemm"}, "b")


def forward(self, x):
    x = self.quant(x)            # float -> quint8 (the Quantize module after convert)
    x = self.relu(self.conv(x))
    x = self.fc(self.flatten(x))
    return self.dequant(x)       # quint8 -> float logits


SOLUTIONS = {
    "03.1": GROUPS,
    "03.2": REDUCE_RANGE,
    "03.3": forward,
}
