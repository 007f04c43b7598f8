"""The one-command GPU plan (``scripts/gpu/run.sh``): setup, GPU tests, speed, training and
evaluation as stages with their own time budgets under one hard limit.

- :mod:`msat.harness.gpu.budget`: the stage runner. It gives each stage the smaller of its budget and
  the time left, skips what no longer fits, and writes ``status.json`` after every stage, so a
  run cut short still returns everything finished.
- :mod:`msat.harness.gpu.packed`: CIFAR-10's JPEG files packed into two binary parts (evaluation:
  test + calibration images; training: the rest), decoded once into a uint8 tensor.
- :mod:`msat.harness.gpu.stages`: what each stage does; every line also runs on the CPU (``--dry-run``).
- :mod:`msat.harness.gpu.cli`: ``python -m msat.harness.gpu.cli [stages...]``.
"""
