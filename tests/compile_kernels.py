"""Compile the fused ops' Triton kernels for a GPU that is not here: frontend, LLVM and ``ptxas`` (Triton's own
copy) for ``sm_90``, for every op, direction and dtype the models use. Triton's interpreter, which runs the
numerical tests on the CPU, executes Python and cannot see compile errors; this can. Run without
``TRITON_INTERPRET`` (the test starts it in a fresh process); prints ``compiled N kernels``."""

import math
import re
import sys

import triton
import triton.language as tl
from aef_hpc.kernels.fused import affine_coupling, decoder_layer, encoder_layer, logit, programs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

#: (op, CONST_A, CONST_B, VARIANT, UNREAD of its backward): each direction and variant a model runs
VARIANTS = [
    (decoder_layer.OP, 1e-5, 0.9189385332046727, 0, 0),
    (encoder_layer.OP, 1e-5, 0.0, 0, 1),  # density direction: mu's gradient is the incoming one
    (encoder_layer.OP, 1e-5, 0.0, 1, 0),
    (affine_coupling.OP, 2.0, 0.0, 0, 4),  # t's gradient is the incoming one
    (affine_coupling.OP, 2.0, 0.0, 1, 0),
    (affine_coupling.OP, 0.0, 0.0, 0, 4),  # unbounded log-scale
    (logit.OP, 0.05, 1e-6, 0, 0),
]
#: dtype -> forward WRITE_OUT choices and backward (GRAD_A, GRAD_B, GRAD_C, HAS_GRAD_OUT) choices
PLANS = {
    "fp32": ([True, False], [(1, 1, 2, True), (0, 1, 0, False)]),
    "fp64": ([True], [(1, 1, 1, True)]),
    "bf16": ([False], [(0, 1, 2, True)]),
}


def _signature(kernel, dtype: str, constexprs: dict) -> dict:
    accumulator = "*fp64" if dtype == "fp64" else "*fp32"
    signature = {}
    for p in kernel.params:
        if p.name in constexprs:
            signature[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            signature[p.name] = accumulator if p.name in ("partial_ptr", "grow_ptr") else f"*{dtype}"
        else:
            signature[p.name] = "i32"
    return signature


def compile_for(target: GPUTarget, kernel, dtype: str, constexprs: dict):
    key = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    return triton.compile(ASTSource(kernel, _signature(kernel, dtype, constexprs), key), target=target)


def check_float64_constants(target: GPUTarget) -> None:
    """A float argument is float32 in a compiled kernel; the ops' constants are ``constexpr`` so that a float64
    kernel holds them exactly: the decoder's log(2 pi) / 2 to 17 digits, and no float32 constant at all."""
    meta = dict(MATH=decoder_layer.OP.forward, CONST_A=1e-5, CONST_B=0.5 * math.log(2 * math.pi), VARIANT=0)
    meta.update(OPERANDS=3, UNREAD=0, HAS_MASK=False, WRITE_OUT=False, ACC=tl.float64, ROWS=1, BLOCK=512)
    ir = compile_for(target, programs.forward_program, "fp64", meta).asm["ttir"]
    constants = set(re.findall(r"dense<([^>]*)> : tensor<512x(f\d+)>", ir))
    assert ("0.91893853320467266", "f64") in constants and ("1.000000e-05", "f64") in constants, constants
    assert not [c for c in constants if c[1] != "f64"], constants


def main() -> int:
    target = GPUTarget("cuda", 90, 32)
    check_float64_constants(target)
    count = 0
    for op, const_a, const_b, variant, unread in VARIANTS:
        inputs = 1 if op is logit.OP else 3
        masks = (True, False) if op is decoder_layer.OP else (False,)
        for dtype, (writes, backwards) in PLANS.items():
            common = dict(CONST_A=const_a, CONST_B=const_b, VARIANT=variant, OPERANDS=inputs)
            common.update(ACC=tl.float64 if dtype == "fp64" else tl.float32)
            for mask in masks:
                for write in writes:
                    meta = dict(common, MATH=op.forward, UNREAD=0, HAS_MASK=mask, WRITE_OUT=write, ROWS=1, BLOCK=512)
                    compile_for(target, programs.forward_program, dtype, meta)
                    count += 1
                for grad_a, grad_b, grad_c, has_grad_out in backwards:
                    meta = dict(common, MATH=op.backward, UNREAD=unread, HAS_MASK=mask, HAS_GRAD_OUT=has_grad_out)
                    meta.update(ROWS=16)
                    meta.update(GRAD_A=grad_a, GRAD_B=grad_b, GRAD_C=grad_c, BLOCK=512)
                    compile_for(target, programs.backward_program, dtype, meta)
                    count += 1
    print(f"compiled {count} kernels for sm_90; float64 constants exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
