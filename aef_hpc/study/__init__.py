"""Experiments over many runs (floor 5, beside the CLI: it starts ``aef-hpc train`` processes and reads their
folders): ``aef-hpc sweep`` (one run per config and seed, locally or as one SLURM job array) and ``aef-hpc
compare`` (bits/dim per run and paired per-image differences against a baseline)."""
