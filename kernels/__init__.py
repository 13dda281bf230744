"""Fused ops of the AEF affine layers, installed as `aef_hpc.kernels` (floor 0).

Each op lives in its own module holding the plain-PyTorch reference of its math; model code calls the
functions exported here and never a kernel directly. Every op works per sample: inputs are `[B, ...]`,
reductions are over all non-batch dims and return `[B]`, accumulated in float32 or wider.
"""

from .affine_coupling import affine_coupling, affine_coupling_inverse, bound_log_scale
from .decoder_layer import decoder_layer, decoder_layer_inverse, softplus_inverse
from .encoder_layer import encoder_layer, encoder_layer_inverse
from .logit import logit_preprocess, logit_preprocess_inverse

__all__ = [
    "affine_coupling",
    "affine_coupling_inverse",
    "bound_log_scale",
    "decoder_layer",
    "decoder_layer_inverse",
    "softplus_inverse",
    "encoder_layer",
    "encoder_layer_inverse",
    "logit_preprocess",
    "logit_preprocess_inverse",
]
