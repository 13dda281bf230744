"""The Triton side of the fused ops, imported only when a Triton path runs (``import aef_hpc`` needs no Triton).

``programs`` holds the two Triton programs every op runs, ``operands`` the ``[rows, n]`` views of its operands,
``tuning`` the program shapes and the tuner, ``rowwise`` the driver and its autograd Function; the other modules
hold each op's elementwise math as ``@triton.jit`` functions.
"""
