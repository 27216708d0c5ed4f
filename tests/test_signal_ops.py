"""Signal processing: DFT, STFT, the windows and MelWeightMatrix, beyond the ONNX conformance cases.

Every form runs through the pipeline, the TF emitter, the TFLite converter (builtin ops only) and
the LiteRT interpreter (the conformance harness's Runner) against expected values from numpy's
float64 FFT, torch's windows or the ONNX reference implementation — never from the emitters.
Then PyTorch models as users write them (torch.stft with return_complex=False and view_as_real,
an audio front end, an FFT token mixer), exported with each exporter that can write them and
converted end to end: verified, no Flex or custom op, and the .tflite against PyTorch.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper
from onnx.backend.test.case.test_case import TestCase

from graph_convert import convert
from graph_convert.conformance import Runner
from tests.helpers import assert_batch_kept_and_checked, Builder, assert_equivalent, run_pipeline
from tests.torch_io import export, flex_or_custom, max_error_over_scale, run_tflite

RNG = np.random.default_rng(7)
F, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner()


def _case(model: onnx.ModelProto, inputs: list[np.ndarray], outputs: list[np.ndarray], rtol=1e-4, atol=1e-4) -> TestCase:
    return TestCase(name=model.graph.name, model_name=model.graph.name, url=None, model_dir=None, model=model,
                    data_sets=[(inputs, outputs)], kind="node", rtol=rtol, atol=atol)


def _model(nodes, inputs, outputs, opset: int, inits: dict | None = None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "signal", [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, s, t in outputs],
                          [onnx.numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _passes(runner: Runner, case: TestCase) -> None:
    r = runner.run(case)
    assert r.status == "pass" and r.tf == "pass" and r.tflite == "pass", (r.status, r.tf, r.tflite, r.reason_class, r.reason)


def _complex(x: np.ndarray) -> np.ndarray:
    return x[..., 0] + 1j * x[..., 1] if x.shape[-1] == 2 else x[..., 0].astype(np.complex128)


def _split(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], -1).astype(np.float32)


# --- DFT: every attribute, against numpy's float64 FFT ------------------------------------------
DFT_FORMS = {
    # name: (input shape, axis, dft_length, inverse, onesided)
    "real_axis1": ((2, 12, 5, 1), 1, None, 0, 0),
    "complex_axis_minus2": ((2, 5, 12, 2), -2, None, 0, 0),
    "rfft_odd": ((3, 15, 1), 1, None, 0, 1),
    "rfft_zero_padded": ((2, 10, 1), 1, 16, 0, 1),
    "truncated": ((2, 20, 3, 2), 1, 12, 0, 0),
    "inverse_complex": ((2, 4, 9, 2), 2, None, 1, 0),
    "irfft_even": ((2, 9, 3, 2), 1, None, 1, 1),
    "irfft_odd_length": ((2, 9, 2), 1, 17, 1, 1),
    # power-of-two one-sided forward: RFFT2D
    "rfft2d": ((2, 3, 16, 1), 2, None, 0, 1),
    "rfft2d_padded_axis0": ((12, 3, 1), 0, 16, 0, 1),
    "rfft2d_truncated": ((2, 40, 1), 1, 32, 0, 1),
}


def _dft_expected(x, axis, n, inverse, onesided):
    axis %= x.ndim
    z = _complex(x.astype(np.float64))
    if inverse and onesided:
        n = n or 2 * (x.shape[axis] - 1)
        return np.fft.irfft(z, n=n, axis=axis)[..., None].astype(np.float32)
    n = n or x.shape[axis]
    y = np.fft.ifft(z, n=n, axis=axis) if inverse else np.fft.fft(z, n=n, axis=axis)
    if onesided:
        y = np.take(y, np.arange(n // 2 + 1), axis=axis)
    return _split(y)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("form", list(DFT_FORMS))
def test_dft_forms_match_numpy(form, opset, runner):
    shape, axis, n, inverse, onesided = DFT_FORMS[form]
    x = RNG.standard_normal(shape).astype(np.float32)
    y = _dft_expected(x, axis, n, inverse, onesided)
    inits = {} if n is None else {"n": np.array(n, np.int64)}
    ins = ["x", "n" if n is not None else ""]
    attrs = {"inverse": inverse, "onesided": onesided}
    if opset >= 20:
        inits["axis"] = np.array(axis, np.int64)
        ins.append("axis")
    else:
        attrs["axis"] = axis
    node = helper.make_node("DFT", ins, ["y"], **attrs)
    model = _model([node], [("x", list(shape), F)], [("y", list(y.shape), F)], opset, inits)
    _passes(runner, _case(model, [x], [y]))
    ops = {d["op_name"] for d in Interpreter(model_content=runner.last_tflite)._get_ops_details()}
    length = n or shape[axis]
    fft_kernel = shape[-1] == 1 and onesided and not inverse and length & (length - 1) == 0
    assert ("RFFT2D" in ops) == fft_kernel, ops  # RFFT2D exactly where it applies


# --- STFT ----------------------------------------------------------------------------------------
def _stft_expected(sig, step, window, frame_length, onesided):
    s = _complex(sig.astype(np.float64)) if sig.ndim == 3 else sig.astype(np.float64)
    frames = 1 + (s.shape[1] - frame_length) // step
    idx = np.arange(frames)[:, None] * step + np.arange(frame_length)[None, :]
    y = np.fft.fft(s[:, idx] * window, axis=-1)
    return _split(y[..., : frame_length // 2 + 1] if onesided else y)


STFT_FORMS = {
    # name: (signal shape, step, frame_length, window: None / "const" / "input", onesided)
    "rank2_signal_const_window": ((2, 300), 40, 64, "const", 1),
    "real_runtime_window": ((1, 200, 1), 25, 50, "input", 1),
    "complex_two_sided": ((2, 160, 2), 16, 32, "const", 0),
    "no_window_frame_length": ((2, 128, 1), 20, 30, None, 1),
}


@pytest.mark.parametrize("form", list(STFT_FORMS))
def test_stft_forms_match_numpy(form, runner):
    shape, step, fl, win, onesided = STFT_FORMS[form]
    sig = RNG.standard_normal(shape).astype(np.float32)
    window = RNG.uniform(0.2, 1.0, fl).astype(np.float32)
    y = _stft_expected(sig, step, window if win else np.ones(fl), fl, onesided)
    inits = {"step": np.array(step, np.int64), "fl": np.array(fl, np.int64)}
    inputs, feeds = [("sig", list(shape), F)], [sig]
    if win == "const":
        inits["w"] = window
    elif win == "input":
        inputs.append(("w", [fl], F))
        feeds.append(window)
    node = helper.make_node("STFT", ["sig", "step", "w" if win else "", "fl"], ["y"], onesided=onesided)
    model = _model([node], inputs, [("y", list(y.shape), F)], 17, inits)
    _passes(runner, _case(model, feeds, [y]))


# --- windows and the mel filterbank -------------------------------------------------------------
def _hamming(n: int, periodic: bool) -> np.ndarray:
    d = n if periodic else n - 1
    return 25 / 46 - 21 / 46 * np.cos(2 * np.pi * np.arange(n) / d)


WINDOWS = {
    "HannWindow": lambda n, p: torch.hann_window(n, periodic=p, dtype=torch.float64).numpy(),
    "BlackmanWindow": lambda n, p: torch.blackman_window(n, periodic=p, dtype=torch.float64).numpy(),
    "HammingWindow": _hamming,  # ONNX's alpha is 25/46, torch's 0.54
}


@pytest.mark.parametrize("size_is", ["constant", "runtime"])
@pytest.mark.parametrize("op", list(WINDOWS))
def test_windows_match_torch(op, size_is, runner):
    n = int(RNG.integers(5, 40))
    for periodic in (0, 1):
        ref = WINDOWS[op](n, bool(periodic)).astype(np.float32)
        node = helper.make_node(op, ["n"], ["y"], periodic=periodic)
        if size_is == "constant":  # read as a constant: the window is a constant of the .tflite
            nodes = [node, helper.make_node("Add", ["y", "x"], ["z"])]
            model = _model(nodes, [("x", [n], F)], [("z", [n], F)], 17, {"n": np.array(n, np.int32)})
            x = RNG.standard_normal(n).astype(np.float32)
            _passes(runner, _case(model, [x], [ref + x], atol=1e-6))
        else:  # the size is an input: RANGE and COS in TFLite, the output's length at run time
            model = _model([node], [("n", [], TensorProto.INT32)], [("y", [n], F)], 17)
            _passes(runner, _case(model, [np.array(n, np.int32)], [ref], atol=1e-6))


def test_mel_weight_matrix_matches_the_onnx_reference(runner):
    from onnx.reference import ReferenceEvaluator

    n_mel, n_dft, rate = int(RNG.integers(8, 24)), int(RNG.choice([256, 400, 512])), int(RNG.choice([8000, 16000]))
    lo, hi = float(RNG.uniform(0, 200)), float(RNG.uniform(3000, rate / 2))
    inits = {"m": np.array(n_mel, np.int64), "d": np.array(n_dft, np.int64), "r": np.array(rate, np.int64),
             "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
    node = helper.make_node("MelWeightMatrix", ["m", "d", "r", "lo", "hi"], ["w"])
    ref_model = _model([node], [], [("w", [n_dft // 2 + 1, n_mel], F)], 17, inits)
    ref = ReferenceEvaluator(ref_model).run(None, {})[0]
    # a spectrogram times the matrix, as a front end uses it
    mm = helper.make_node("MatMul", ["s", "w"], ["y"])
    model = _model([node, mm], [("s", [3, n_dft // 2 + 1], F)], [("y", [3, n_mel], F)], 17, inits)
    s = RNG.uniform(0, 2, (3, n_dft // 2 + 1)).astype(np.float32)
    _passes(runner, _case(model, [s], [s @ ref]))


# --- the DFT transpose handler -------------------------------------------------------------------
@pytest.mark.parametrize("opset", [17, 20])
def test_dft_takes_a_transpose_that_keeps_the_complex_axis(opset):
    b = Builder(opset)
    x = b.input("x", [2, 6, 8, 1])
    t = b.op("Transpose", [x], perm=[0, 2, 1, 3])
    if opset >= 20:
        y = b.op("DFT", [t, "", b.const(np.array(1, np.int64), dtype=np.int64)])
    else:
        y = b.op("DFT", [t], axis=1)
    b.output(b.op("Transpose", [y], perm=[0, 2, 1, 3]))
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True)
    assert g.count("Transpose") == 0
    assert_equivalent(model, g, atol=1e-5)


def test_dft_declines_a_transpose_that_moves_the_complex_axis():
    from graph_convert.ir import from_onnx
    from graph_convert_passes.lib.signal_attention_handlers import dft

    b = Builder(17)
    x = b.input("x", [2, 1, 8])
    y = b.op("DFT", [b.op("Transpose", [x], perm=[0, 2, 1])], axis=1)
    b.output(y)
    g = from_onnx(b.model())
    node = [n for n in g.nodes if n.op_type == "DFT"][0]
    got = dft(g, node, (0, 2, 1), "test")
    assert not got and "real/imaginary" in got.reason


# --- PyTorch models, end to end -------------------------------------------------------------------
class Stft(torch.nn.Module):
    """torch.stft with a random window; ``complex_out``: return_complex=True + view_as_real."""

    def __init__(self, n_fft: int, hop: int, complex_out: bool, center: bool):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.n_fft, self.hop, self.complex_out, self.center = n_fft, hop, complex_out, center
        self.register_buffer("window", torch.rand(n_fft, generator=g) * 0.8 + 0.2)

    def forward(self, x):
        kw = dict(hop_length=self.hop, window=self.window, center=self.center)
        if self.complex_out:
            return torch.view_as_real(torch.stft(x, self.n_fft, return_complex=True, **kw))
        return torch.stft(x, self.n_fft, return_complex=False, **kw)


class AudioFrontEnd(torch.nn.Module):
    """STFT -> power -> mel filterbank (random, non-negative) -> log, random window."""

    def __init__(self, n_fft: int, hop: int, n_mels: int, complex_out: bool):
        super().__init__()
        g = torch.Generator().manual_seed(12)
        self.stft = Stft(n_fft, hop, complex_out, center=complex_out)
        self.register_buffer("mel", torch.rand(n_fft // 2 + 1, n_mels, generator=g))

    def forward(self, x):
        spec = self.stft(x)  # (B, bins, frames, 2)
        power = spec.pow(2).sum(-1)
        return torch.log(torch.matmul(power.transpose(1, 2), self.mel) + 1e-3)  # (B, frames, mels)


class FNetMixer(torch.nn.Module):
    """FNet's token mixing: Re(FFT2(x)) over (tokens, features) between a Linear and a LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        torch.manual_seed(13)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_()

    def forward(self, x):
        h = self.proj(x)
        return self.norm(h + torch.fft.fft2(h, dim=(-2, -1)).real)


class Rfft(torch.nn.Module):
    def forward(self, x):
        return torch.view_as_real(torch.fft.rfft(x, dim=1))


# name: (module factory, input shape, exporters that can write it); the TorchScript exporter
# (opset 17) writes STFT only for return_complex=False (centred or not), and no torch.fft at all
MODELS = {
    "stft_real_out": (lambda: Stft(64, 16, False, False), (2, 400), ("torchscript", "dynamo")),
    "stft_real_out_centered": (lambda: Stft(48, 12, False, True), (1, 300), ("torchscript",)),
    "stft_view_as_real_centered": (lambda: Stft(64, 24, True, True), (2, 400), ("dynamo",)),
    "audio_front_end": (lambda: AudioFrontEnd(128, 32, 20, False), (2, 1024), ("torchscript", "dynamo")),
    "audio_front_end_complex": (lambda: AudioFrontEnd(100, 25, 16, True), (1, 800), ("dynamo",)),
    "fnet_mixer": (lambda: FNetMixer(24), (2, 10, 24), ("dynamo",)),
    "rfft": (lambda: Rfft(), (2, 18, 5), ("dynamo",)),
}
EXPORTER_OPSET = {"torchscript": 17, "dynamo": 18}


@pytest.mark.parametrize("name,exporter", [(m, e) for m, spec in MODELS.items() for e in spec[2]])
def test_pytorch_signal_models_convert_and_match(name, exporter, tmp_path):
    make, shape, _ = MODELS[name]
    module = make().eval()
    torch.manual_seed(3)
    x = (torch.randn(*shape),)
    src = str(tmp_path / "model.onnx")
    export(module, x, src, exporter, EXPORTER_OPSET[exporter])
    ops = {n.op_type for n in onnx.load(src).graph.node}
    assert ops & {"STFT", "DFT"}, ops
    result = convert(src, None, tmp_path / "out")
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        for out, fig in result.report["verification"][stage].items():
            assert fig["ok"], (stage, out, fig)
    assert not flex_or_custom(result), result.report["tflite"]["ops"]
    with torch.no_grad():
        ref = module(*x).numpy()
    got = run_tflite(result, x)[0]
    assert got.shape == ref.shape
    assert max_error_over_scale(got, ref) <= 1e-5, max_error_over_scale(got, ref)


def test_audio_front_end_with_a_dynamic_batch(tmp_path):
    """STFT and the DFT matrix keep the batch dynamic (``--dynamic-batch``: verified at two sizes)."""
    module = AudioFrontEnd(64, 16, 12, False).eval()
    src = str(tmp_path / "model.onnx")
    export(module, (torch.randn(2, 400),), src, "torchscript", 17)
    result = convert(src, None, tmp_path / "out", dynamic_batch=True)
    assert_batch_kept_and_checked(result.report)
    assert not flex_or_custom(result), result.report["tflite"]["ops"]
    x = (torch.randn(5, 400),)
    with torch.no_grad():
        ref = module(*x).numpy()
    assert max_error_over_scale(run_tflite(result, x)[0], ref) <= 1e-5


def test_audio_front_end_with_a_free_number_of_samples(tmp_path):
    """A waveform's free length (TorchScript's dynamic_axes) is kept: audio-length check sizes,
    longer than the 256-sample window, and the file at a length the conversion never saw."""
    module = AudioFrontEnd(256, 128, 20, False).eval()
    src = str(tmp_path / "model.onnx")
    torch.onnx.export(module, (torch.randn(1, 4096),), src, dynamo=False, opset_version=17, input_names=["wav"],
                      output_names=["feat"], dynamic_axes={"wav": {1: "samples"}})
    result = convert(src, None, tmp_path / "out")
    dims = result.report["dynamic"]["dims"]
    assert dims["samples"]["kept"] and len(dims["samples"]["checked_sizes"]) >= 3, dims
    assert min(dims["samples"]["checked_sizes"]) > 256
    assert all(ch["verdict"] == "ok" for ch in result.report["dynamic"]["checks"]), result.report["dynamic"]["checks"]
    assert not flex_or_custom(result), result.report["tflite"]["ops"]
    x = (torch.randn(1, 5003),)
    with torch.no_grad():
        ref = module(*x).numpy()
    got = run_tflite(result, x)[0]
    assert got.shape == ref.shape
    assert max_error_over_scale(got, ref) <= 1e-5
    # the file as another converter's candidate: its default shape (1 sample) is not one the model
    # takes, so it is run only at the checked lengths
    from graph_convert import verify_file

    res = verify_file(src, str(tmp_path / "out" / "model_float32.tflite"))
    assert res.equivalent and len(res.report["dims"]["samples"]["checked_sizes"]) >= 3, res.report.get("dims")
