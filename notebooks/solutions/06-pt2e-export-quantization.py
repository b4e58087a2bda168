"""Reference solutions for the exercises of 06-pt2e-export-quantization.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("06.1", ptq_pt2e)``.
"""
import torch


def ptq_pt2e(model, calibration):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    batch = torch.export.Dim("batch", max=1024)               # any batch size, not only the example's
    gm = torch.export.export(model, (calibration[0],), dynamic_shapes={"x": {0: batch}}).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for xb in calibration:                                 # every batch through the observers
            prepared(xb)
    return convert_pt2e(prepared)


# a: freezing makes the weights constants: prepacked int8 weights, fused int8 conv/linear kernels.
# d: without it the patterns do not match and the q/dq graph runs as float ops + quantize/dequantize.
# b, c, e: observers, batch-norm folding and annotation all happened before torch.compile.
FREEZING_TRUE = {"a", "d"}

SOLUTIONS = {
    "06.1": ptq_pt2e,
    "06.2": FREEZING_TRUE,
}
