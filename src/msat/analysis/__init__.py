"""Analyses of a converted SNN: the per-layer error split, the energy estimate, the statistics."""
