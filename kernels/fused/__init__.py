"""The Triton side of the fused ops, imported only when a Triton path runs (``import aef_hpc`` needs no Triton).

``rowwise`` holds the one driver every op runs through (operand views, launch, tuning, autograd); the other
modules hold each op's elementwise math as ``@triton.jit`` functions.
"""
