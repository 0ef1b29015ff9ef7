"""The online step in ONNX Runtime: equal to eager PyTorch over 1,000 frames of the shipped demo
model; ``slimkit stream --backend onnxruntime``; mismatching ONNX files refused in one sentence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.cli import main
from slimkit.errors import ConfigError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FRAMES = 1000


@pytest.fixture(scope="module")
def demo():
    from slimkit_video.online.live import load_online_model

    return load_online_model()


def _synthetic_frames(model, n: int, seed: int = 0):
    """``n`` preprocessed frames ``(3, size, size)`` of the synthetic stream (a new clip every 16)."""
    from slimkit_video.sources.openers import SyntheticSource

    src = SyntheticSource("synthetic", size=model.size, seed=seed)
    return [model.preprocess(next(src)) for _ in range(n)]


def test_onnxruntime_step_equals_eager_pytorch_over_1000_frames(demo):
    from slimkit_video.online.ort import OrtStream, use_onnxruntime

    ort_model = use_onnxruntime(demo, threads=1)
    assert isinstance(ort_model.stream, OrtStream) and "onnxruntime" in ort_model.name
    assert [b.shape for b in ort_model.stream.buffers] == \
        [tuple(s) for s in demo.stream.buffer_shapes((3, demo.size, demo.size))]
    frames = _synthetic_frames(demo, FRAMES)
    demo.stream.reset()
    ort_model.stream.reset()
    worst, same_argmax = 0.0, 0
    for t, frame in enumerate(frames):
        if t == FRAMES // 2:  # a reset mid-way (a scene cut) acts alike on both
            demo.stream.reset()
            ort_model.stream.reset()
        a = demo.stream.step(frame)
        b = ort_model.stream.step(frame)
        diff = (a - b).abs().max().item()
        assert diff <= 1e-4, f"frame {t}: max |ort - torch| = {diff:.3g}"
        worst = max(worst, diff)
        same_argmax += int(a.argmax() == b.argmax())
    assert same_argmax == FRAMES
    # the buffers are carried: a freshly reset stream differs from the running one on the same frame
    fresh = ort_model.stream.reset().step(frames[-1])
    assert (fresh - b).abs().max().item() > 1e-5


def test_stream_cli_runs_the_step_in_onnxruntime(capsys):
    rc = main(["stream", "--backend", "onnxruntime", "--seconds", "1.5", "--print-every", "5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[onnxruntime, exported, 1 thread(s)]" in out and "summary:" in out
    assert "smoothed prediction right on" in out


def _one_sentence_error(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_an_onnx_file_of_another_frame_size_is_refused(demo, tmp_path, capsys):
    from slimkit_video.online.export import export_onnx

    path = export_onnx(demo.stream, tmp_path / "demo32.onnx", frame_shape=(3, 32, 32))
    _one_sentence_error(capsys, ["stream", "--backend", "onnxruntime", "--onnx", str(path), "--seconds", "1"],
                        "does not match the model", "frame input is (1, 3, 32, 32)", "(1, 3, 64, 64)",
                        "export_onnx(stream, path, frame_shape=(3, 64, 64))")


def test_an_onnx_file_of_another_model_is_refused(demo, tmp_path, capsys):
    import slimkit
    from slimkit_video.online import to_online
    from slimkit_video.online.export import export_onnx

    from ._online_nets import tiny_mobilenet

    other = to_online(slimkit.apply(tiny_mobilenet(), "tsm", n_segment=8, direction="past"))
    path = export_onnx(other, tmp_path / "other.onnx", frame_shape=(3, 64, 64))
    _one_sentence_error(capsys, ["stream", "--backend", "onnxruntime", "--onnx", str(path), "--seconds", "1"],
                        "does not match the model", "buffers")


def test_an_onnx_file_with_other_weights_is_refused(demo, tmp_path):
    import copy

    from slimkit_video.online.export import export_onnx
    from slimkit_video.online.ort import OrtStep, check_onnx_matches

    twin = copy.deepcopy(demo.stream)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = export_onnx(twin, tmp_path / "twin.onnx", frame_shape=(3, 64, 64))
    with pytest.raises(ConfigError, match="holds other weights"):
        check_onnx_matches(OrtStep(path), demo.stream, (3, 64, 64))
    # its own file passes, within the tolerance
    assert check_onnx_matches(OrtStep(path), twin, (3, 64, 64)) <= 1e-4


def test_bad_onnx_files_and_flags_are_one_sentence(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    _one_sentence_error(capsys, ["stream", "--backend", "onnxruntime", "--onnx", str(junk), "--seconds", "1"],
                        "ONNX Runtime cannot load", "export_onnx")
    _one_sentence_error(capsys, ["stream", "--onnx", str(junk), "--seconds", "1"],
                        "add --backend onnxruntime")
    _one_sentence_error(capsys, ["stream", "--backend", "onnxruntime", "--onnx", str(tmp_path / "none.onnx"),
                                 "--seconds", "1"], "does not exist")


def test_ort_stream_resets_one_row_of_a_batch(tmp_path):
    import slimkit
    from slimkit_video.online import to_online
    from slimkit_video.online.export import export_onnx
    from slimkit_video.online.ort import OrtStep, OrtStream

    from ._online_nets import randomize, tiny_mobilenet

    stream = to_online(randomize(slimkit.apply(tiny_mobilenet(), "tsm", n_segment=8, direction="past")))
    path = export_onnx(stream, tmp_path / "b2.onnx", frame_shape=(3, 32, 32), batch=2)
    ort_stream = OrtStream(OrtStep(path))
    frames = torch.randn(3, 2, 3, 32, 32)
    for t in range(2):
        a, b = stream.step(frames[t]), ort_stream.step(frames[t])
        assert (a - b).abs().max().item() <= 1e-4
    stream.reset(1)
    ort_stream.reset(1)
    assert all(np.all(buf[1] == 0) for buf in ort_stream.buffers)
    a, b = stream.step(frames[2]), ort_stream.step(frames[2])
    assert a.shape == b.shape == (2, b.shape[1]) and (a - b).abs().max().item() <= 1e-4
