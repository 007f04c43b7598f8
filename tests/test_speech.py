"""The speech pipeline of Table 6: LIPool1d, M5 conversion, WAV reading, the data checks."""

import math
import wave

import pytest
import torch
import torch.nn.functional as F

import msat
from conftest import cli, compose
from msat.harness.speech import SpeechDataError, read_wav, write_wav
from msat.spiking.pooling import LIPool


@pytest.mark.parametrize(
    "kw,length",
    [
        (dict(kernel_size=4), 32),
        (dict(kernel_size=4, stride=2), 31),                       # overlapping windows
        (dict(kernel_size=3, stride=1, padding=1), 17),            # overlapping, padded
        (dict(kernel_size=3, stride=2, dilation=2), 29),           # dilated
        (dict(kernel_size=4, stride=3, ceil_mode=True), 26),       # a partial last window
    ],
)
def test_lipool1d_cumulative_output_is_maxpool_of_cumulative_input(kw, length):
    pool = LIPool(dims=1, **kw)
    xs = torch.rand(40, 2, 3, length, dtype=torch.float64) * (torch.rand(40, 2, 3, length, dtype=torch.float64) > 0.5)
    running = None
    for t, x in enumerate(xs):
        y = pool(x)
        running = y if running is None else running + y
        torch.testing.assert_close(running, F.max_pool1d(xs[: t + 1].sum(0), **kw), rtol=1e-12, atol=1e-12)


def test_maxpool1d_converts_to_lipool1d_and_return_indices_is_refused():
    assert LIPool.from_maxpool(torch.nn.MaxPool1d(4, 2)).dims == 1
    with pytest.raises(ValueError, match="return_indices"):
        LIPool.from_maxpool(torch.nn.MaxPool1d(4, return_indices=True))


def _trained_looking_m5(width=0.25, num_classes=10):
    """A random M5 whose BatchNorm layers hold statistics like a trained net's (positive
    variances, spread means, scales around 1), so the ReLUs are neither all on nor all off."""
    torch.manual_seed(0)
    m = msat.create_model("m5", num_classes=num_classes, in_channels=1, width=width)
    x = torch.randn(16, 1, 4000)
    m.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics from real forward passes
            m(x)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.3)
    return m.eval(), x


def test_m5_max_norm_snn_converges_to_the_ann_at_T1024():
    m, x = _trained_looking_m5()
    x64 = x[:8].double()
    ann = m.double()
    snn = msat.convert(ann, [x.double()], method="const")
    T = 1024
    out = msat.simulate(snn, x64, T)  # output summed over steps 1..t
    with torch.no_grad():
        ref = ann(x64)
    rel = [float((out[t - 1] / t - ref).norm() / ref.norm()) for t in (64, 256, 1024)]
    agree = float((out[T - 1].argmax(-1) == ref.argmax(-1)).double().mean())
    # measured here: relative error 0.091 / 0.024 / 0.0058 at T = 64 / 256 / 1024; all 8 agree
    assert rel[2] < rel[1] < rel[0] and rel[2] < 0.02, rel
    assert agree >= 0.875, agree


def test_wav_round_trip_and_clear_errors(tmp_path):
    x = 0.5 * torch.sin(torch.arange(800) * 2 * math.pi * 440 / 8000)
    write_wav(tmp_path / "a.wav", x, rate=8000)
    y, rate = read_wav(tmp_path / "a.wav", expected_rate=8000)
    assert rate == 8000 and y.shape == x.shape
    torch.testing.assert_close(y, x, rtol=0, atol=1.0 / 32767)
    with pytest.raises(SpeechDataError, match=r"a\.wav.*sample rate 8000 Hz, expected 16000"):
        read_wav(tmp_path / "a.wav", expected_rate=16000)
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 200)
    with pytest.raises(SpeechDataError, match=r"stereo\.wav.*mono"):
        read_wav(tmp_path / "stereo.wav", expected_rate=8000)
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(SpeechDataError, match=r"junk\.wav.*not a readable WAV"):
        read_wav(tmp_path / "junk.wav")


def test_a_1d_model_on_images_and_an_image_model_on_audio_are_clear_errors(tmp_path):
    from msat.harness.tasks.hydra_utils import cfg_model_spec

    with pytest.raises(ValueError, match="model=m5 takes 1-D waveforms"):
        cfg_model_spec(compose(["model=m5", "dataset=digits"], tmp_path))
    with pytest.raises(ValueError, match="model=vgg16 takes images"):
        cfg_model_spec(compose(["model=vgg16", "dataset=synthetic_words"], tmp_path))


def _fake_speech_commands(root, words, per_word=4):
    g = torch.Generator().manual_seed(0)
    test, val = [], []
    for wi, w in enumerate(words):
        (root / w).mkdir(parents=True)
        for i in range(per_word):
            t = torch.arange(16000) / 16000
            x = 0.3 * torch.sin(2 * math.pi * (200 + 40 * wi) * t) + 0.01 * torch.randn(16000, generator=g)
            write_wav(root / w / f"clip{i}.wav", x, rate=16000)
        val.append(f"{w}/clip{per_word - 2}.wav")
        test.append(f"{w}/clip{per_word - 1}.wav")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_evaluate_table6_experiment_on_a_fake_speech_commands_tree(tmp_path):
    from msat.harness.speech import SPEECH_COMMANDS_35

    root = _fake_speech_commands(tmp_path / "sc", SPEECH_COMMANDS_35)
    common = ["experiment=table6_m5_speech_commands", f"dataset.root={root}", f"paths.root={tmp_path}",
              "model.width=0.125", "progress=false"]
    r = cli("train_ann.py", *common, "train.epochs=1", "train.batch_size=16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("evaluate.py", *common, "eval.T=16", "eval.checkpoints=[8,16]", "calibration.num_batches=1",
            "calibration.batch_size=16", "sin.T=8", "eval.plots=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    res = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert res["dataset"] == "speech_commands" and res["model"] == "m5" and len(res["acc"]) == 16
    assert res["n_samples"] == 35 and res["paper"]["table"] == "Table 6"


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"), reason="espeak-ng is not installed "
                    "(apt-get install espeak-ng; .ci/run installs it)")
def test_synthetic_words_are_generated_in_the_speech_commands_layout_and_reproducibly(tmp_path):
    from msat.harness.speech import make_synthetic_words, speech_folder_samples

    kw = dict(words=("yes", "no"), voices=("en",), variants=("", "+f2"), speeds=(150,), pitches=(40, 60),
              test_every=4, validation_every=4)
    a = make_synthetic_words(tmp_path / "a", seed=3, **kw)
    b = make_synthetic_words(tmp_path / "b", seed=3, **kw)
    wavs = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.wav"))
    assert len(wavs) == 2 * 2 * 2 and {w.split("/")[0] for w in wavs} == {"yes", "no"}
    for w in wavs:  # the same seed gives the same files, byte for byte
        assert (a / w).read_bytes() == (b / w).read_bytes()
    x, rate = read_wav(a / wavs[0])
    assert rate == 16000 and x.numel() == 16000 and x.abs().max() > 0.01  # 1 s of 16 kHz speech, not silence
    assert "SYNTHETIC" in (a / "README.txt").read_text()
    tests = (a / "testing_list.txt").read_text().split()
    assert len(tests) == 2 and all((a / t).exists() for t in tests)
    splits = speech_folder_samples(a, ("yes", "no"))
    assert sum(len(v) for v in splits.values()) == len(wavs)
    c = make_synthetic_words(tmp_path / "c", seed=4, **kw)  # another seed: other noise
    assert (c / wavs[0]).read_bytes() != (a / wavs[0]).read_bytes()
