"""Paper Table 2: MSAT's hyperparameters per architecture."""

from __future__ import annotations

# Table 2 of the paper, one row per architecture.
TABLE2 = {
    "vgg16": dict(alpha=0.03, k_a=1.0, k_i=1.0, C=5.0, tau_mp=1.0, tau_rd=1.0),
    "resnet20": dict(alpha=0.3, k_a=1.0, k_i=1.0, C=5.0, tau_mp=0.5, tau_rd=0.5),
    "resnet34": dict(alpha=1.0, k_a=1.0, k_i=1.0, C=5.0, tau_mp=0.5, tau_rd=0.5),
}
# Table 2 has no row for these; M5 is a plain chain of conv-BN-ReLU-pool blocks like VGG16 (the
# ResNet rows are tuned for residual sums)
TABLE2_ROW_OF = {"m5": "vgg16"}


def table2_row(model: str) -> dict:
    """The Table 2 hyperparameters of ``model`` (a copy)."""
    row = TABLE2_ROW_OF.get(model, model)
    if row not in TABLE2:
        raise ValueError(f"Table 2 has no row for model {model!r}; pass hparams= (rows: {', '.join(TABLE2)})")
    return dict(TABLE2[row])
