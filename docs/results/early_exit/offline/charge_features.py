"""The residual charge of the last spiking layer as an exit feature, offline:
python charge_features.py RUN_DIR TRACES.pt [CHARGE.pt]

A converted net's output lags the ANN partly because the last spiking layer still holds charge it
has not fired. Read through the classifier, that charge says which way the output is about to
move: ``R_t = S_t + W pool(v_t * lam)``, with ``v_t`` the last spiking layer's membrane after step t
(in units of its threshold ``lam``), ``pool`` the global max over the last feature map (the VGG's
last max-pool, 2x2 to 1x1, is a lateral-inhibition pool in the SNN, so this is an approximation of
what it would pass on) and ``W`` the classifier's weight without its bias.

Records ``R_t - S_t`` for the held-out and test images of RUN_DIR (the images, order and batches of
evaluate.py's exit evaluation, as record_traces.py), checks that its ``S_t`` equals TRACES.pt's
bit for bit, then fits feature_ablation.py's learned rule with four more features (the top-1 minus
top-2 of ``R_t / t`` for the class order of ``S_t``, max softmax of ``R_t / t``, whether ``argmax
R_t == argmax S_t``, and the charge's own advantage of the top class) and prints the chosen point
and the test curve beside the rule without them. CHARGE.pt: where the recording is kept (and read
from, when it exists)."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from msat.harness.artifacts import restore_run
from msat.harness.data import subset
from msat.harness.exit_eval import _halves, holdout_images
from msat.harness.reproduce import cifar10_splits
from msat.spiking.early_exit import record_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_ablation import BASE, T, add_rates, choose, curve, feats, fit, load, settled_labels  # noqa: E402

ROOT = Path(__file__).resolve().parents[4]


class LastCharge:
    """A step hook: the layer's membrane after each step, in units of ``lam``, max-pooled and read
    through the classifier's weight ``W``."""

    def __init__(self, W: torch.Tensor):
        self.W, self.q = W, []

    def on_step(self, neuron, t, theta, fired, emitted) -> None:
        self.q.append(F.adaptive_max_pool2d(neuron.v * neuron.lam, 1).flatten(1) @ self.W.T)


@torch.no_grad()
def record_charge(folder: Path) -> dict:
    res, ann, snn = restore_run(folder)
    assert int(res["readout_start"]) == 0 and res.get("sc") is None, "runs without delayed readout or SC only"
    W = ann.classifier.weight.detach()
    splits = cifar10_splits(ROOT.parent / "shared/datasets/cifar10-jpeg")
    sets = {"held": holdout_images(splits, 128, 0, 10, 1000), "test": subset(splits.test, 1000, seed=0)}
    charge = LastCharge(W)
    layers = [None] * (len(snn.neurons) - 1) + [charge]  # a step hook on the last spiking layer only
    out = {}
    for name, ds in sets.items():
        S_parts, Q_parts = [], []
        for x, _ in torch.utils.data.DataLoader(ds, batch_size=200, shuffle=False):
            charge.q = []
            with snn.monitor(T, charge=layers):
                S_parts.append(record_run(snn, x, T)["S"])
            Q_parts.append(torch.stack(charge.q))
        out[name] = {"S": torch.cat(S_parts, 1), "Q": torch.cat(Q_parts, 1)}
    return out


def charge_features(tr: dict, Q: torch.Tensor) -> torch.Tensor:
    S = tr["S"][:T].double()
    Q = Q[:T].double()
    R = S + Q
    C = S.shape[-1]
    top = S.argmax(-1)
    oh = F.one_hot(top, C).bool()
    r = R / torch.arange(1, S.shape[0] + 1, dtype=torch.float64).view(-1, 1, 1)
    adv = lambda v: (v * oh).sum(-1) - v.masked_fill(oh, -1e30).amax(-1)  # noqa: E731
    return torch.stack([adv(r), torch.softmax(r, -1).amax(-1), (R.argmax(-1) == top).double(), adv(Q)], -1)


def main(argv):
    torch.set_num_threads(1)
    folder, traces = Path(argv[0]), argv[1]
    keep = Path(argv[2]) if len(argv) > 2 else None
    charge = torch.load(keep, weights_only=False) if keep is not None and keep.exists() else record_charge(folder)
    if keep is not None and not keep.exists():
        torch.save(charge, keep)
    held, test = load(traces)
    for name, rec in (("held", held), ("test", test)):
        assert torch.equal(rec["S"], charge[name]["S"]), f"{name}: the recording's S differs from the traces'"
    (fit_tr, sel_tr), Qh = _halves(held), charge["held"]["Q"]
    n = held["y"].shape[0]
    fit_q, sel_q = Qh[:, : n // 2], Qh[:, n // 2:]  # the charge cut as _halves cuts the records
    ann_sel = 100 * float(sel_tr["ann_right"].double().mean())
    print("ann sel", ann_sel, "test", 100 * float(test["ann_right"].double().mean()))
    for name, with_charge, rates in (("base+rates", False, True), ("base+charge+rates", True, True),
                                     ("base+charge", True, False)):
        def X(tr, q, with_charge=with_charge, rates=rates):
            x = feats(tr, BASE)[0]
            x = add_rates(x, tr) if rates else x
            return torch.cat([x, charge_features(tr, q)], -1) if with_charge else x

        for hidden in (0, 16):
            pr = fit(X(fit_tr, fit_q), settled_labels(fit_tr), hidden=hidden)
            cs, ct = curve(pr(X(sel_tr, sel_q)), sel_tr), curve(pr(X(test, charge["test"]["Q"])), test)
            i = choose(cs, ann_sel)
            print(f"{name} h{hidden}: chosen {cs[i][0]} sel {cs[i][1]:.1f}@{cs[i][2]:.1f} test {ct[i][1]:.1f}@{ct[i][2]:.1f}")
            print("   test", [(c[0], round(c[1], 1), round(c[2], 1)) for c in ct])
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
