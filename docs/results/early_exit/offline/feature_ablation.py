"""More exit features for the learned rule, offline: python feature_ablation.py TRACES.pt [SET ...]
(or TRACES.pt --crossfit: the operating point chosen on all held-out images by cross-fitting)

TRACES.pt: the held-out and test recordings of a run ({"held": ..., "test": ...} as record_traces.py
saves them, or an early-exit evaluation's partial file, whose "stages" hold the same records).
Every candidate feature is computed for all steps at once; the rule is a logistic model (or 16 tanh
units) on the 'settled' target, fitted on one half of the held-out images and its threshold chosen
on the other for a 1-point drop, as evaluate.py does; prints the chosen point on the test images and
the test curve. Candidates beyond the rule's own features: the advantage of the top class of S_t in
the mean of the last 8/16/32 steps' outputs (wadv), S_t extrapolated to T_max with that mean (proj:
its margin; projagree: whether its argmax is the current one), and the noise of the per-step gap
between the top two classes (log_sd_gap, z_gap); and (base+class+rates, not in the default list)
which class leads and every class's mean output minus the leader's."""
import sys
import time

import torch

from msat.analysis import exits
from msat.harness.exit_eval import _halves
from msat.spiking.early_exit import ExitPredictor

T = 128


def load(path):
    """The held-out and test records of a recording or a resume file."""
    d = torch.load(path, weights_only=False)  # our own recording
    st = d["stages"] if "stages" in d else d
    held, test = st["held"], st["test"]
    for rec in (held, test):  # the features below assume the readout starts at step 1; a resume file does not say
        assert rec.setdefault("readout_start", 0) == 0, "feature_ablation.py handles runs without delayed readout only"
    return held, test


GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)


def feats(tr, which):
    S = tr["S"][:T].double()  # [T,B,C]
    Tn, B, C = S.shape
    ts = torch.arange(1, Tn + 1, dtype=torch.float64).view(-1, 1)
    m = S / ts.unsqueeze(-1)
    p = torch.softmax(m, -1)
    top = S.argmax(-1)
    oh = torch.nn.functional.one_hot(top, C).bool()
    cols = {}
    top2 = m.topk(2, -1).values
    cols["confidence"] = p.amax(-1)
    cols["margin"] = top2[..., 0] - top2[..., 1]
    cols["entropy"] = -(p * p.clamp(min=1e-300).log()).sum(-1)
    # held
    same = torch.ones_like(top, dtype=torch.bool)
    same[1:] = top[1:] == top[:-1]
    held_ = torch.zeros_like(top, dtype=torch.float64)
    h = torch.zeros(B, dtype=torch.float64)
    ch = torch.zeros(B, dtype=torch.float64)
    changes = torch.zeros_like(held_)
    for t in range(Tn):
        h = torch.where(same[t], h + 1, torch.ones_like(h)) if t else torch.ones_like(h)
        if t:
            ch = ch + (~same[t]).double()
        held_[t], changes[t] = h, ch
    cols["log1p_held"] = torch.log1p(held_)
    cols["log_t"] = ts.log().expand(Tn, B)
    for W in (8, 16, 32):
        past = torch.cat([torch.zeros(W, B, C, dtype=S.dtype), S[:-W]])
        n = ts.clamp(max=W).unsqueeze(-1)
        w = (S - past) / n
        wt2 = w.topk(2, -1).values
        if W == 8:
            cols["window_margin"] = wt2[..., 0] - wt2[..., 1]
            cols["window_agrees"] = (w.argmax(-1) == top).double()
        wtop = (w * oh).sum(-1)
        wother = w.masked_fill(oh, -1e30).amax(-1)
        cols[f"wadv{W}"] = wtop - wother
        rem = (T - ts)
        proj = S + rem.unsqueeze(-1) * w
        ptop = (proj * oh).sum(-1)
        pother = proj.masked_fill(oh, -1e30).amax(-1)
        cols[f"proj{W}"] = (ptop - pother) / T
        cols[f"projagree{W}"] = (proj.argmax(-1) == top).double()
    stop = S.topk(2, -1).values
    gapS = (stop[..., 0] - stop[..., 1]).clamp(min=0)
    cols["log1p_sum_margin"] = torch.log1p(gapS)
    cols["log1p_changes"] = torch.log1p(changes)
    out = torch.cat([S[:1], S[1:] - S[:-1]])  # per-step outputs
    otop = out.argmax(-1)
    agree = torch.zeros_like(held_)
    for t in range(Tn):
        lo = max(0, t - 7)
        agree[t] = (otop[lo:t + 1] == top[t]).double().mean(0)
    cols["steps_agree"] = agree
    # noise of the per-step gap between top and the runner-up of S
    second = S.masked_fill(oh, -1e30).argmax(-1)
    g = out.gather(-1, top.unsqueeze(-1)).squeeze(-1) - out.gather(-1, second.unsqueeze(-1)).squeeze(-1)
    # running std of the per-step gap over the last 16 steps
    sd = torch.zeros_like(held_)
    for t in range(Tn):
        lo = max(0, t - 15)
        sd[t] = g[lo:t + 1].std(0, unbiased=False) if t > lo else torch.zeros(B, dtype=torch.float64)
    cols["log_sd_gap"] = torch.log(sd + 1e-3)
    cols["z_gap"] = gapS / (sd * (T - ts).clamp(min=1).sqrt() + 1e-3)
    cols["log1p_z"] = torch.log1p(cols["z_gap"])
    names = which or list(cols)
    X = torch.stack([cols[k] for k in names], -1)
    return X, names


def add_classes(X, tr):
    """Which class leads (one-hot) and every class's mean output minus the leader's: features that
    let the model learn which classes settle late."""
    S = tr["S"][:T].double()
    m = S / torch.arange(1, S.shape[0] + 1, dtype=torch.float64).view(-1, 1, 1)
    oh = torch.nn.functional.one_hot(S.argmax(-1), S.shape[-1]).double()
    return torch.cat([X, oh, m - m.amax(-1, keepdim=True)], -1)


def add_rates(X, tr):
    return torch.cat([X, tr["rates"][:T].double()], -1)


def settled_labels(tr):
    return exits.settled(tr, T)


def fit(X, Y, l2=1e-3, hidden=0, seed=0):
    """exits.fit_mlp (what fit_predictor fits) on every (step, image) row; returns P(features)."""
    layers, mean, std = exits.fit_mlp(X.reshape(-1, X.shape[-1]), Y.reshape(-1).double(), hidden, l2, 300, seed)
    return ExitPredictor(layers, mean, std, [str(i) for i in range(X.shape[-1])]).probability


def curve(P, tr):
    S = tr["S"][:T]
    y = tr["y"]
    Tn, B = P.shape
    res = []
    for thr in GRID:
        ex = P >= thr
        ex[-1] = True
        first = ex.int().argmax(0)
        pred = S[first, torch.arange(B)].argmax(-1)
        res.append((thr, 100 * float((pred == y).double().mean()), float((first + 1).double().mean())))
    return res


BASE = ["confidence", "margin", "entropy", "log1p_held", "log_t", "window_margin", "window_agrees", "log1p_sum_margin",
        "log1p_changes", "steps_agree"]
WADV_PROJ = ["wadv8", "wadv16", "wadv32", "proj8", "proj16", "proj32", "projagree8", "projagree16", "projagree32"]
sets = {
    "base+rates": (BASE, True),
    "base": (BASE, False),
    "base+wadv+proj+rates": (BASE + WADV_PROJ, True),
    "base+wadv+proj": (BASE + WADV_PROJ, False),
    "all+rates": (None, True),
    "all": (None, False),
    "base+class+rates": (BASE, True),  # with add_classes
}


def choose(cs, ann):
    """The grid index with the fewest mean steps within 1 point of ``ann`` (else the most accurate)."""
    ok = [i for i, c in enumerate(cs) if c[1] >= ann - 1]
    return min(ok, key=lambda i: cs[i][2]) if ok else max(range(len(cs)), key=lambda i: cs[i][1])


def main(argv):
    torch.set_num_threads(1)
    held, test = load(argv[0])
    fit_tr, sel_tr = _halves(held)
    ann_sel = 100 * float(sel_tr["ann_right"].double().mean())
    ann_test = 100 * float(test["ann_right"].double().mean())
    print("ann sel", ann_sel, "test", ann_test)
    if "--crossfit" in argv[1:]:
        # The choice on all held-out images instead of one half: a model fitted on each half scores the
        # other (cross-fitting), the threshold is chosen on the union for a 1-point drop from the ANN on
        # all held-out images, and a model fitted on all of them is applied to the test images at it.
        A, B = fit_tr, sel_tr
        ann_all = 100 * float(held["ann_right"].double().mean())
        for rates in (True, False):
            fa = (lambda tr: add_rates(feats(tr, BASE)[0], tr)) if rates else (lambda tr: feats(tr, BASE)[0])
            pA, pB = fit(fa(A), settled_labels(A)), fit(fa(B), settled_labels(B))
            cA, cB = curve(pB(fa(A)), A), curve(pA(fa(B)), B)
            cu = [(a[0], (a[1] + b[1]) / 2, (a[2] + b[2]) / 2) for a, b in zip(cA, cB)]
            i = choose(cu, ann_all)
            ct = curve(fit(fa(held), settled_labels(held))(fa(test)), test)
            print(f"rates={rates} ann held {ann_all:.1f} crossfit chosen {cu[i][0]} held {cu[i][1]:.1f}@{cu[i][2]:.1f} "
                  f"test {ct[i][1]:.1f}@{ct[i][2]:.1f}")
        return
    only = [a for a in argv[1:] if not a.startswith("--")] or [k for k in sets if "class" not in k]
    for name in only:
        names, rates = sets[name]
        t0 = time.time()
        Xf, nm = feats(fit_tr, names)
        Xs, _ = feats(sel_tr, names)
        Xt, _ = feats(test, names)
        if rates:
            Xf, Xs, Xt = add_rates(Xf, fit_tr), add_rates(Xs, sel_tr), add_rates(Xt, test)
        if "class" in name:
            Xf, Xs, Xt = add_classes(Xf, fit_tr), add_classes(Xs, sel_tr), add_classes(Xt, test)
        for hidden in (0, 16):
            pr = fit(Xf, settled_labels(fit_tr), hidden=hidden)
            cs, ct = curve(pr(Xs), sel_tr), curve(pr(Xt), test)
            i = choose(cs, ann_sel)
            print(f"{name} h{hidden} ({time.time()-t0:.0f}s): chosen {cs[i][0]} sel {cs[i][1]:.1f}@{cs[i][2]:.1f} "
                  f"test {ct[i][1]:.1f}@{ct[i][2]:.1f}")
            print("   test", [(c[0], round(c[1], 1), round(c[2], 1)) for c in ct])
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
