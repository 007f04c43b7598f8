"""The methods: paper Table 2 (MSAT's hyperparameters per architecture)."""

from __future__ import annotations

# Table 2 of the paper, one row per architecture.
TABLE2 = {
    "vgg16": dict(alpha=0.03, k_a=1.0, k_i=1.0, C=5.0, tau_mp=1.0, tau_rd=1.0),
    "resnet20": dict(alpha=0.3, k_a=1.0, k_i=1.0, C=5.0, tau_mp=0.5, tau_rd=0.5),
    "resnet34": dict(alpha=1.0, k_a=1.0, k_i=1.0, C=5.0, tau_mp=0.5, tau_rd=0.5),
}
