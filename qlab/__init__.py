"""qlab: the support package of the INT8 quantization workbook.

Small, readable modules a learner can open next to the notebook that uses them:

* :mod:`qlab.primitives` -- ``choose_qparams``, ``quantize``, ``dequantize``,
  ``fake_quantize`` (bit-exact with PyTorch; notebook 01)
* :mod:`qlab.observers`, :mod:`qlab.fake_quant` -- torch.ao's observers and
  FakeQuantize re-implemented bit for bit, plus Percentile and MSE (notebooks 02-04)
* :mod:`qlab.data`, :mod:`qlab.models` -- sklearn's digits offline, small trained models in data/
* :mod:`qlab.diagnose`, :mod:`qlab.mismatch`, :mod:`qlab.int_conv` -- fake-vs-real analysis (notebook 09)
* :mod:`qlab.widgets` -- the live-figure pattern behind every interactive plot
* :mod:`qlab.plots` -- the figures the notebooks draw
* :mod:`qlab.exercises` -- workshop exercise checkers
"""
__version__ = "0.1.0"

from . import data, fake_quant, models, observers  # noqa: E402
from ._env import env_info, isa_summary, setup  # noqa: E402
from .fake_quant import FakeQuantize  # noqa: E402
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
    "FakeQuantize",
    "data",
    "models",
    "observers",
    "fake_quant",
]
