"""qlab: the support package of the INT8 quantization workbook.

Small, readable modules a learner can open next to the notebook that uses them:

* :mod:`qlab.primitives` -- ``choose_qparams``, ``quantize``, ``dequantize``,
  ``fake_quantize`` (bit-exact with PyTorch; notebook 01)
* :mod:`qlab.widgets` -- the live-figure pattern behind every interactive plot
* :mod:`qlab.plots` -- the figures the notebooks draw
"""
__version__ = "0.1.0"

from ._env import env_info, isa_summary, setup  # noqa: E402
from .primitives import (  # noqa: E402
    PerChannel,
    PerTensor,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
)

__all__ = [
    "__version__",
    "setup",
    "env_info",
    "isa_summary",
    "qrange",
    "PerTensor",
    "PerChannel",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
]
