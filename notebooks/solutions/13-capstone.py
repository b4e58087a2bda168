"""Reference solution for the capstone exercise of 13-capstone.ipynb (for instructors).

Check it in the notebook with ``qlab.exercises.check("13.1", quantize)``.
"""
import torch

import qlab


def quantize(model, calibration_batches, example_input):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from qlab.pt2e import export_batch_dynamic, x86_quantizer

    # 1. export: the ATen graph, batch dimension symbolic (notebook 06 section 1); the caller's model is not touched
    graph = export_batch_dynamic(model, example_input).module()
    # 2. annotate with X86InductorQuantizer's defaults and insert observers (section 2)
    prepared = prepare_pt2e(graph, x86_quantizer())
    # 3. calibrate on every batch: the activation scales come from what the observers see
    with torch.no_grad():
        for batch in calibration_batches:
            prepared(batch)
    converted = convert_pt2e(prepared)
    # 4. lower to oneDNN's int8 kernels: torch.compile compiles at the first call, so that call runs with
    #    Inductor's freezing on (section 6) and on the shape the result will be called with
    compiled = torch.compile(converted)
    with qlab.scoped(inductor={"freezing": True}), torch.no_grad():
        compiled(example_input)
    return compiled


SOLUTIONS = {"13.1": quantize}
