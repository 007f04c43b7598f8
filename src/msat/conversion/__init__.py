"""ANN-to-SNN conversion: tracing and folding the ANN, the sources of ``lam``, the corrections, SIN and
spike confidence, the recipes and the one pipeline that runs them."""
