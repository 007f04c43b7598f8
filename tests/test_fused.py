"""The guard on the compiled steps (msat.spiking.fused): a compiled kernel that gives other results than
eager on its first call (a stale kernel of another CPU capability in a shared compiler cache, a
miscompilation) is caught, named in one warning, and replaced by eager for the rest of the
process; the compiler's cache is kept apart per CPU capability."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import msat
import msat.spiking.fused as fused
import msat.spiking.neuron as neurons
import msat.spiking.pooling as pooling
from msat.spiking.pooling import LIPool


def _net():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 3 * 3, 5)).double().eval()
    return net, torch.randn(4, 3, 6, 6, dtype=torch.float64)


def _corrupting_step(with_stats):
    """A 'compiled' neuron step that computes the right update, then corrupts the membrane and the
    output as a kernel of the wrong instruction set would (here: by a fixed offset)."""
    step = neurons._step_fn(with_stats)

    def bad(rule, max_spikes, v, s, inp, lam, inv_tm1, dead, bias, inv_lam):
        res = step(rule, max_spikes, v, s, inp, lam, inv_tm1, dead, bias, inv_lam)
        v.add_(0.37)
        return (res[0] + 0.37 * lam,) + tuple(res[1:])

    return bad


@pytest.mark.parametrize("method", ["const", "msat"])
def test_a_compiled_step_that_disagrees_with_eager_is_caught_and_replaced(method, monkeypatch):
    """The guard compares the first call of every kernel signature with eager: a corrupted
    kernel gives one warning (naming the CPU capability, the torch version and how many entries
    differ by how much), the curve is exactly the eager one, and the status says it fell back."""
    monkeypatch.setattr(neurons, "_compiled_step", _corrupting_step)
    net, x = _net()
    hp = msat.TABLE2["vgg16"] if method == "msat" else None
    snn = msat.convert(net, [x], method=method, hparams=hp)
    snn.set_compile(False)
    eager = msat.simulate(snn, x, 10)
    snn.set_compile(True)
    with pytest.warns(RuntimeWarning) as caught:
        guarded = msat.simulate(snn, x, 10)
    msgs = [str(w.message) for w in caught if "gave other results than eager" in str(w.message)]
    assert len(msgs) == 1, [str(w.message) for w in caught]
    assert f"CPU capability {fused.cpu_capability()}" in msgs[0] and f"torch {torch.__version__}" in msgs[0]
    assert "entries differ" in msgs[0] and "max |dv|" in msgs[0]
    torch.testing.assert_close(guarded, eager, rtol=0, atol=0)
    status = fused.compile_status()
    assert status["guard_fell_back"] and not status["ran_compiled"]
    assert "neuron update" in status["fallback_reason"]
    assert not any(n.compiled for n in snn.neurons)


def test_a_corrupted_lipool_kernel_is_caught_too(monkeypatch):
    def bad(X, Y, x, *rest):
        y, m = pooling._pool_step(X, Y, x, *rest)
        return y * 1.5, m

    monkeypatch.setattr(pooling, "_fused_pool_step", lambda: bad)
    xs = torch.rand(6, 2, 3, 6, 6, dtype=torch.float64)
    plain, guarded = LIPool(2), LIPool(2)
    guarded.compiled = True
    a = torch.stack([plain(x) for x in xs])
    with pytest.warns(RuntimeWarning, match="compiled LIPool step gave other results than eager"):
        b = torch.stack([guarded(x) for x in xs])
    assert torch.equal(a, b) and not guarded.compiled and fused.compile_status()["guard_fell_back"]


def test_rounding_near_a_threshold_is_not_a_mismatch():
    """A spike may flip where the eager membrane lies within rounding of the threshold (a fused
    exp rounds differently in the last bit); the guard accepts that, and nothing else."""
    torch.manual_seed(0)
    rule = neurons.make_rule("const")
    v0 = torch.rand(3, 8, dtype=torch.float64)
    inp = torch.rand(3, 8, dtype=torch.float64)
    inp[0, 0] = 1.0 - v0[0, 0]  # charged to exactly the threshold
    lam = torch.tensor(1.0, dtype=torch.float64)
    args = (rule, 1, v0.clone(), None, inp, lam, None, None, None, lam.reciprocal())
    e_args = list(args)
    e_args[2] = v0.clone()
    e_res = neurons._step_fn(True)(*e_args)
    c_args = list(args)
    c_args[2] = v0.clone()
    c_res = neurons._step_fn(False)(*c_args)
    # the compiled kernel did not fire at the threshold (a last-bit difference of the charge)
    c_args[2][0, 0] += 1.0
    c_res = (c_res[0].clone(),)
    c_res[0][0, 0] = 0.0
    assert neurons._step_agrees(c_args, c_res, e_args, e_res, {2: v0}) is None
    c_args[2][1, 1] += 1.0  # a flip far from the threshold is a mismatch
    assert "1 of 24 entries differ" in neurons._step_agrees(c_args, c_res, e_args, e_res, {2: v0})


def test_the_compiler_cache_is_kept_apart_per_cpu_capability(monkeypatch, tmp_path):
    """Without a user-chosen TORCHINDUCTOR_CACHE_DIR the compiled steps use a folder of their own
    per CPU capability; a folder the user chose is kept (the guard protects it)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    path = fused.use_isa_cache_dir()
    assert path == os.path.join(os.path.abspath(default_cache_dir()), "msat-" + fused.cpu_capability().lower())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.join(os.path.abspath(default_cache_dir()), "msat-avx512"))
    assert fused.use_isa_cache_dir() == path  # one of ours from another capability: replaced
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert fused.use_isa_cache_dir() == str(tmp_path)  # the user's choice


CROSS_ISA = textwrap.dedent("""
    import json, sys, warnings
    import torch
    import msat, msat.spiking.fused
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)).eval()
    x = torch.randn(6, 3, 8, 8)
    snn = msat.convert(net, [x], method="msat", hparams=msat.TABLE2["vgg16"])
    snn.set_compile(False)
    eager = msat.simulate(snn, x, 12)
    snn.set_compile(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = msat.simulate(snn, x, 12)
    print(json.dumps({"status": msat.spiking.fused.compile_status(), "warnings": [str(w.message) for w in caught],
                      "same_predictions": bool(torch.equal(out.argmax(-1), eager.argmax(-1))),
                      "max_rel": float(((out - eager).abs() / eager.abs().clamp(min=1e-6)).max())}))
""")


def _run_isa(script, tmp_path, capability=None, cache=None):
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(TMPDIR=str(tmp_path), MSAT_COMPILE="1")
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_two_cpu_capabilities_one_machine(tmp_path):
    """The shared-cache case for real: a native run, then one under another CPU capability
    (``default``: no vector instructions). With the default cache folder each capability gets its
    own and both run compiled, with the eager predictions; with one folder the user shares between
    them, the second run either finds its own kernels or the guard catches the foreign ones: its
    predictions are the eager ones either way."""
    from msat.spiking.simulation import compile_available

    if not compile_available(torch.device("cpu")):
        pytest.skip("torch.compile has no working backend here")
    native = _run_isa(CROSS_ISA, tmp_path)
    plain = _run_isa(CROSS_ISA, tmp_path, capability="default")
    for r in (native, plain):
        assert r["status"]["ran_compiled"] and not r["status"]["guard_fell_back"], r
        assert r["same_predictions"] and r["max_rel"] < 1e-4
    assert native["status"]["cache_dir"] != plain["status"]["cache_dir"]
    assert plain["status"]["cpu_capability"] == "DEFAULT"
    # the user points every run at one folder: here the native run's, which holds its kernels
    second = _run_isa(CROSS_ISA, tmp_path, capability="default", cache=native["status"]["cache_dir"])
    assert second["same_predictions"], second
    if second["status"]["guard_fell_back"]:
        assert any("CPU capability DEFAULT" in w for w in second["warnings"]), second
