"""Fused ops of the AEF affine layers, installed as `aef_hpc.kernels` (floor 0).

Each op lives in its own module holding the Triton forward and backward kernels, the autograd Function and the
plain-PyTorch reference of the same math; model code calls the functions exported here and never a kernel.
``set_kernels("auto" | "triton" | "eager")`` picks the implementation (``auto``: Triton on CUDA tensors). The
Triton side (``fused/``) is imported only when it runs: ``import aef_hpc`` works without Triton installed.
Every op works per sample: inputs are ``[B, ...]``, reductions are over all non-batch dims and return ``[B]``,
accumulated in float32 (float64 for float64 inputs).
"""

from ._rows import acc_dtype, row_sum
from .affine_coupling import affine_coupling, affine_coupling_inverse, bound_log_scale
from .decoder_layer import decoder_layer, decoder_layer_inverse, decoder_log_prob, softplus_inverse
from .dispatch import MODES, check_available, get_kernels, set_kernels, triton_bytes, triton_launches, use_kernels
from .encoder_layer import encoder_layer, encoder_layer_inverse
from .logit import logit_preprocess, logit_preprocess_inverse

__all__ = [
    "MODES",
    "acc_dtype",
    "row_sum",
    "affine_coupling",
    "affine_coupling_inverse",
    "bound_log_scale",
    "check_available",
    "decoder_layer",
    "decoder_layer_inverse",
    "decoder_log_prob",
    "encoder_layer",
    "encoder_layer_inverse",
    "get_kernels",
    "logit_preprocess",
    "logit_preprocess_inverse",
    "set_kernels",
    "softplus_inverse",
    "triton_bytes",
    "triton_launches",
    "use_kernels",
]
