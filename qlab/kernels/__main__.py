"""``python -m qlab.kernels``: build the C++ extension (if not cached) and say which path runs.

The project's set-up (``make setup``) calls it, so a learner's first notebook does
not wait for the compiler. Options: ``--verbose`` shows the compiler output of a
failed build; ``--strict`` exits with status 1 when the extension is not available
(by default the pure-PyTorch fallback is reported and the status is 0). A failing
self-check (a path disagreeing with the reference) always exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

import torch


def _self_check() -> str:
    """Every available path against the pure-PyTorch reference, on awkward shapes."""
    from . import available_isas, int8_bmm, int8_linear, reference, use_isa

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 19, 67), dtype=torch.uint8, generator=g)
    b = torch.randint(-128, 128, (3, 53, 67), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (37, 67), dtype=torch.int8, generator=g)
    ws = torch.rand(37, generator=g) * 0.01 + 1e-3
    bias = torch.randn(37, generator=g)
    want_bmm = reference.int8_bmm(a, b, 0.02, 131, 0.01, -3, 0.05, 7, torch.uint8, True, "fixed")
    want_lin = reference.int8_linear(a[0], w, ws, bias, 0.02, 131, 0.05, 7, torch.uint8, True, "float")
    for name in available_isas():
        with use_isa(name):
            got_bmm = int8_bmm(
                a,
                b,
                a_scale=0.02,
                a_zero_point=131,
                b_scale=0.01,
                b_zero_point=-3,
                out_scale=0.05,
                out_zero_point=7,
                transpose_b=True,
                requant="fixed",
            )
            got_lin = int8_linear(
                a[0], w, ws, bias, x_scale=0.02, x_zero_point=131, out_scale=0.05, out_zero_point=7, relu=True
            )
        if not (torch.equal(got_bmm, want_bmm) and torch.equal(got_lin, want_lin)):
            return f"FAILED on the {name} path"
    return "ok"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlab.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the compiler output if the build failed")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 without the C++ extension")
    args = parser.parse_args(argv)

    from .. import _env
    from . import _ops, available_isas, backend, build, isa

    st = _ops.state
    if backend() == "native":
        how = "cached" if st["compiled_s"] is None else f"compiled now in {st['compiled_s']:.0f} s"
        print(f"qlab.kernels: C++ extension {st['library_path']} ({how})")
        print(
            f"ISA path: {isa()} (this CPU runs: {', '.join(available_isas())}; force one with QLAB_ISA=... "
            "or qlab.kernels.set_isa)"
        )
        print(f"build: {torch.ops.qlab._build_info()}")
    else:
        print(f"qlab.kernels: pure-PyTorch reference, no C++ extension ({st['error'].splitlines()[0][:300]})")
        print("ISA path: reference")
        if args.verbose and "QLAB_NO_EXT" not in st["error"]:
            try:
                build(verbose=True)
            except RuntimeError as exc:
                print(exc)
    print(f"CPU: {_env.cpu_name()}; int8 ISA: {' '.join(_env.isa_summary()) or 'none of AVX2/AVX-512/VNNI/AMX'}")
    check = _self_check()
    print(f"self-check against qlab.kernels.reference: {check}")
    if check != "ok":
        return 1
    return 1 if args.strict and backend() != "native" else 0


if __name__ == "__main__":
    sys.exit(main())
