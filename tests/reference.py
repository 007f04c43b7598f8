"""A literal, scalar transcription of the neuron in spec section 2, used as the oracle."""

import math


def softplus(z):
    return math.log1p(math.exp(-abs(z))) + max(z, 0.0)


def sigmoid(z):
    if z == math.inf:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def run_neuron(inputs, lam, method, hp=None, frac=1.0, v_init=0.0, max_spikes=1):
    """Outputs of one neuron for a sequence of raw inputs; returns (outputs, thetas, final v)."""
    v, u, s = v_init, 0.0, 0.0
    outs, thetas = [], []
    for t, inp in enumerate(inputs, start=1):
        x = inp / lam
        if method == "const":
            theta = frac
        elif t == 1:
            theta = 1.0
        else:
            d = u - s / (t - 1)
            dtt = hp["tau_mp"] * (hp["alpha"] * d + hp.get("V_T", -1.0) + hp["k_a"] * softplus(d / hp["k_i"]))
            try:
                det = hp["tau_rd"] * math.exp(-x / hp["C"])
            except OverflowError:
                det = math.inf
            z = {"msat": dtt + det, "dtt": dtt, "det": det}[method]
            theta = sigmoid(z)
        v = v + x
        if max_spikes == 1:
            spike = 1 if v >= theta else 0
        else:
            spike = min(max(math.floor(v / theta), 0), max_spikes)
        v = v - theta * spike
        outs.append(spike * theta * lam)
        thetas.append(theta)
        u = v
        s = s + v
    return outs, thetas, v
