"""Reference solutions for the exercises of 05-fx-graph-mode.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("05.1", answer)``.
"""
import torch.ao.nn.intrinsic as nni
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping

# prepare_fx fuses conv1+bn1+relu1 and conv2+relu2 into ConvReLU2d, then observes:
# x, conv1 block, pool (shares conv1's), conv2 block, gap (shares conv2's), torch.flatten (shares again), fc.
# 7 observer calls; the input, the two conv blocks and fc own one each: 4 distinct observers.
OBSERVERS = (7, 4)

# set_object_type matches every module of a type, whatever its name (set_module_name matches one name).
# prepare_fx fuses fc + relu2 into nni.LinearReLU *before* it looks up qconfigs: that type needs None too.
# (set_module_name("fc", None).set_module_name("head", None) works as well: a fused module keeps its name.)
KEEP_LINEARS_FLOAT = (get_default_qconfig_mapping("x86")
                      .set_object_type(nn.Linear, None)
                      .set_object_type(nni.LinearReLU, None))

# a: `if` on a value, d: `if` on a shape (a proxy too under symbolic_trace), f: len() of a proxy.
# b (a Python range), c (self.training), e (torch.where) and g (shape arithmetic in a slice) trace.
TRACE_FAILS = {"a", "d", "f"}

SOLUTIONS = {
    "05.1": OBSERVERS,
    "05.2": KEEP_LINEARS_FLOAT,
    "05.3": TRACE_FAILS,
}
