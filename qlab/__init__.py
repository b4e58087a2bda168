"""qlab: the support package of the INT8 quantization workbook.

Small modules a learner can open next to the notebook that uses them. Every module, and where it is taught:

========================================  ==========================================================  ========
module                                    what it holds                                               notebook
========================================  ==========================================================  ========
:mod:`qlab.primitives`                    ``choose_qparams``, ``quantize``, ``dequantize``,            01
                                          ``fake_quantize``, the integer-range table (bit-exact
                                          with PyTorch)
:mod:`qlab.fundamentals`                  SQNR, error vs bits, ``vpmaddubsw`` saturation, the          01
                                          interactive quantization figure
:mod:`qlab.observers`                     torch.ao's observers bit for bit, Percentile, MSE, and       02 (03, 04)
                                          their figures (``observers.figures``)
:mod:`qlab.data`                          scikit-learn's digits, offline                               02-09
:mod:`qlab.models`                        the digits CNN; evaluate, train, capture activations         02-06
:mod:`qlab.checkpoints`                   the trained checkpoints in ``data/`` (one registry)          02-09, 13
:mod:`qlab.flows`                         torch.ao's eager PTQ/QAT and FX PTQ in one call each,       03-05, 07
                                          models run on their engine; the engine and QAT figures
:mod:`qlab.fake_quant`                    ``FakeQuantize``, torch.ao's twin                            04
:mod:`qlab.fxviz`                         FX graphs classified and drawn                               05, 06
:mod:`qlab.pt2e`                          the PT2E flow: export with a dynamic batch (strict or not),  06-08, 10, 11
                                          quantize (per-channel or per-tensor weights, float layers),
                                          lower with Inductor and count its kernels, graph sizes
:mod:`qlab.timing`                        the one timer: interleaved rounds, medians with spread       03-08, 10, 11
:mod:`qlab.perf`                          benchmark results, geomeans (broken models left out) and     07
                                          their figures
:mod:`qlab.engines`                       which library (FBGEMM or oneDNN) the x86 engine hands each   07
                                          layer: the rule, measured in oneDNN's log, applied to models
:mod:`qlab.kernels`                       C++ int8 kernels (``int8_bmm``, ``int8_linear``,              07, 08
                                          ``quantize_per_tensor``) and their pure-PyTorch reference
:mod:`qlab.requant`                       requantization arithmetic, float and fixed point             08, 09
:mod:`qlab.attention`                     the report's attention module and four int8 versions         08, 10
:mod:`qlab.vit`                           the digits ViT and the four fixes of seed 000                 08
:mod:`qlab.vit_inspect`                   attention maps, int8 call checks, the attention figure       08
:mod:`qlab.pt2e_lowering`                 a PT2E graph lowered to qlab's kernels                        08
:mod:`qlab.support_matrix`                which ops run on quantized tensors, generated                08
:mod:`qlab.support_table`                 the support matrix filtered, saved, shown                     08
:mod:`qlab.mismatch`                      seed 001: the fake-vs-real off-by-one and its cause          09
:mod:`qlab.mismatch_sources`              every other source of fake-vs-real difference, measured      09
:mod:`qlab.int_conv`                      an integer reference of a quantized convolution              09
:mod:`qlab.diagnose`                      fake vs real, layer by layer                                 09
:mod:`qlab.onnx_check`                    the same integers on ONNX Runtime                            09
:mod:`qlab.transformer`                   all-MiniLM-L6-v2 offline, its sentences, embeddings; cosine, 10
                                          retrieval agreement, STS Spearman with bootstrap intervals
:mod:`qlab.transformer_int8`              every int8 path for an encoder in one call each (torch.ao    10
                                          dynamic, torchao, PT2E static, bf16); the PT2E dead-code fix
:mod:`qlab.transformer_errors`            why accuracy drops: outlier channels, each quantization      10
                                          choice emulated alone
:mod:`qlab.transformer_plots`             profiler tables, the SmoothQuant figure, the recorded sweep 10
:mod:`qlab.smoothquant`                   SmoothQuant for a post-LayerNorm BERT                        10
:mod:`qlab.bert_attention`                the padding-mask convention, float reference, BERT attention 10
                                          on qlab's int8 kernels
:mod:`qlab.effnet`                        EfficientNet-Lite0 with ImageNet weights offline, its        11
                                          export shims, photos, agreement/KL/SQNR per photo with
                                          cluster-bootstrap intervals
:mod:`qlab.sensitivity`                   the PT2E numeric debugger, per-layer sensitivity scans,      11
                                          mixed precision to an accuracy budget
:mod:`qlab.cle`                           BN folding, cross-layer equalization (exact under ReLU6),    11
                                          bias correction (Nagel et al. 2019)
:mod:`qlab.deploy`                        ``torch.export`` save/load, dead fp32 weights, AOTInductor   14
                                          packages, a run in a fresh process
:mod:`qlab.debug_figures`                 notebook 11's figures and its recorded benchmark             11, 14
:mod:`qlab.intonly`                       integer-only softmax, GELU, LayerNorm (I-BERT): references   12
                                          for the fused kernels
:mod:`qlab.inside`                        VNNI instructions in PyTorch, integer-only GELU/LayerNorm in 12
                                          a model, notebook 12's recordings
:mod:`qlab.int8_mlp`                      timm's Mlp in int8: the exact GELU table in fc1's epilogue   12
:mod:`qlab.int8_block`                    timm's Block with both skip connections added in the int8   12
                                          epilogues of proj and fc2 (the same bits)
:mod:`qlab.roofline`                      this CPU's roofline: the peak of its int8 instruction, its   12
                                          memory bandwidth, int8 linears measured between the two
:mod:`qlab.capstone`                      the capstone: the held-out model, the checker's measurements 13
                                          (accuracy, int8 kernels, speed-up with its noise rule) and
                                          its diagnoses
:mod:`qlab.widgets`                       the live-figure pattern behind every interactive plot        01-11
:mod:`qlab.show`                          library source and expected errors, shown short and exact    01-11
:mod:`qlab.check`                         the environment checks of notebook 00                         00
:mod:`qlab.exercises`                     the exercise checkers, one module per notebook               01-14
========================================  ==========================================================  ========

Global state (the quantized engine, the random generators, threads, Inductor's flags) changes only
inside :func:`qlab.scoped`, which restores it.
"""

__version__ = "0.1.0"

from . import data, fake_quant, models, observers  # noqa: E402
from ._env import drop_log_message, engine, env_info, isa_summary, scoped, setup  # noqa: E402
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
    "scoped",
    "engine",
    "drop_log_message",
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
