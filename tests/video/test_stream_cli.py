"""``slimkit stream``: runs the shipped model on the synthetic source, exits 0 with a summary;
real-time frame dropping; Ctrl-C; clear errors."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from slimkit.cli import main
from slimkit.errors import SourceError


def test_stream_with_no_arguments_runs_the_shipped_model_on_synthetic(capsys):
    rc = main(["stream", "--seconds", "2.5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "streaming synthetic" in out and "shift buffers" in out
    assert "latency" in out and "FPS" in out and "pred " in out
    status = next(ln for ln in out.splitlines() if ln.startswith("frame "))
    assert "sustainable" in status and "of 15 fps" in status   # 1 / compute, apart from the source's rate
    summary = out[out.index("summary:"):]
    assert "stopped by --seconds 2.5" in summary
    rates = next(ln for ln in summary.splitlines() if "frame rates:" in ln)
    assert "source 15 fps" in rates and "sustainable" in rates and "(1 / p50 latency)" in rates
    p50 = float(summary.split("p50 ")[1].split(" ms")[0])
    sustainable = float(rates.split("sustainable ")[1].split(" FPS")[0])
    assert sustainable == pytest.approx(1000 / p50, rel=0.02, abs=1)
    processed = int(summary.split(" processed")[0].split()[-1])
    assert processed >= 10  # 15 fps source for 2.5 s
    assert "smoothed prediction right on" in summary


def test_stream_on_a_real_file_and_lavfi(video_dir, capsys):
    rc = main(["stream", "--source", str(video_dir / "bikes.mp4"), "--seconds", "1", "--print-every", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "summary:" in out and "bikes.mp4" in out
    rc = main(["stream", "--source", "lavfi:testsrc2=size=96x72:rate=25:d=1", "--print-every", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "stopped by the end of the source" in out


def test_show_without_a_display_says_so_and_keeps_running(capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["stream", "--source", "lavfi:testsrc2=size=64x64:rate=25:d=0.4", "--show"])
    out = capsys.readouterr().out
    assert rc == 0 and "running without a window" in out and "summary:" in out
    note = next(ln for ln in out.splitlines() if ln.startswith("note:"))
    assert "--serve" in note


def test_show_says_exactly_why_no_window_opens(monkeypatch):
    """Each reason is one sentence with the fix: no GUI in OpenCV (the extra that swaps it), no
    display (--serve), a display that refuses the window."""
    from slimkit_video.online import live

    monkeypatch.setattr(live, "opencv_gui_backend", lambda: None)
    reason = live.window_unavailable_reason()
    assert "opencv-python-headless" in reason and "slimkit[gui]" in reason and "--serve" in reason
    monkeypatch.setattr(live, "opencv_gui_backend", lambda: "GTK3")
    monkeypatch.setattr(live.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    reason = live.window_unavailable_reason()
    assert "DISPLAY" in reason and "--serve" in reason
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(live, "_window_opens", lambda timeout=10.0: False)
    reason = live.window_unavailable_reason()
    assert "':99'" in reason and "GTK3" in reason and "--serve" in reason
    monkeypatch.setattr(live, "_window_opens", lambda timeout=10.0: True)
    assert live.window_unavailable_reason() is None and live.display_available()
    assert ". " not in reason and "\n" not in reason   # one sentence


def test_the_gui_backend_is_read_from_opencvs_build_information(monkeypatch):
    import cv2

    from slimkit_video.online.live import opencv_gui_backend

    def build(text):
        monkeypatch.setattr(cv2, "getBuildInformation", lambda: text)
        return opencv_gui_backend()

    assert build("  GUI:                           NONE\n  Media I/O:\n") is None
    assert build("  GUI:                           QT5\n    QT:                          YES (ver 5.15.0 )\n") == "QT5"
    assert build("  GUI: \n    GTK+:                        YES (ver 3.22.30)\n  Media I/O:\n") == "GTK+"
    assert build("  GUI: \n    GTK+:                        NO\n  Media I/O:\n") is None


def test_the_installed_opencv_is_reported_as_it_is():
    import cv2

    from slimkit_video.online.live import opencv_gui_backend

    gui = [ln for ln in cv2.getBuildInformation().splitlines() if ln.strip().startswith("GUI:")]
    headless = not gui or gui[0].split(":", 1)[1].strip().upper() in ("", "NONE")
    assert (opencv_gui_backend() is None) == headless


def test_unknown_source_is_one_clear_line(capsys):
    rc = main(["stream", "--source", "nosuch", "--seconds", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown source 'nosuch'" in err and "synthetic" in err and "Traceback" not in err


def test_missing_camera_and_bad_model_folder(tmp_path, capsys):
    assert main(["stream", "--source", "webcam:5", "--seconds", "1"]) == 2
    assert "camera" in capsys.readouterr().err
    assert main(["stream", "--model", str(tmp_path), "--seconds", "1"]) == 2
    assert "not a video checkpoint" in capsys.readouterr().err


def test_a_bidirectional_checkpoint_is_refused_with_how_to(tmp_path, capsys):
    import slimkit
    from slimkit_video.classifier import VideoClassifier, tiny_resnet
    from slimkit_video.train import save_checkpoint

    clf = slimkit.apply(VideoClassifier(tiny_resnet(widths=(8, 8), depths=(1, 1)), n_segment=4, num_classes=2),
                        "tsm", n_segment=4, direction="both")
    save_checkpoint(clf, tmp_path / "both", {"classes": ["a", "b"], "size": 32})
    assert main(["stream", "--model", str(tmp_path / "both"), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "direction='both'" in err and "direction='past'" in err and "fine-tune" in err


def test_reader_drops_frames_when_the_consumer_is_slow():
    from slimkit_video.online.live import LatestFrameReader
    from slimkit_video.sources.openers import SyntheticSource

    src = SyntheticSource("synthetic:32", fps=200.0)
    reader = LatestFrameReader(src).start()
    seqs = []
    last = -1
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.6:
            seq, frame, label, _ = reader.next_after(last, timeout=5)
            assert seq > last and frame.shape == (32, 32, 3) and label in (0, 1)
            seqs.append(seq)
            last = seq
            time.sleep(0.05)  # a slow model: 20 fps against a 200 fps source
    finally:
        reader.stop()
    dropped = seqs[-1] + 1 - len(seqs)
    assert dropped > len(seqs)  # most frames were skipped, the consumer never fell behind
    assert seqs[-1] >= 40       # the source kept its own pace meanwhile


def test_a_silent_source_times_out_instead_of_hanging():
    from slimkit_video.online.live import LatestFrameReader
    from slimkit_video.sources.base import FrameSource

    class Silent(FrameSource):
        def _next(self):
            threading.Event().wait(3)
            raise StopIteration

    reader = LatestFrameReader(Silent("silent", 25)).start()
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match="no frame"):
        reader.next_after(-1, timeout=0.3)
    assert time.perf_counter() - t0 < 2


def test_ctrl_c_stops_cleanly_with_a_summary():
    """A real SIGINT to a real `slimkit stream` process while the loop runs: it stops, the summary
    is complete. The process starts with SIGINT ignored, as background jobs of non-interactive
    shells (and some test runners' workers) do: the stream loop still honours Ctrl-C."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from slimkit.cli import main; main()", "stream", "--source", "synthetic",
           "--seconds", "60", "--print-every", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    try:
        t0 = time.perf_counter()
        for line in proc.stdout:
            lines.append(line)
            if sum(ln.startswith("frame") for ln in lines) >= 3:   # the loop is running: press Ctrl-C
                proc.send_signal(signal.SIGINT)
                break
            assert time.perf_counter() - t0 < 120, "".join(lines)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "stopped by Ctrl-C" in text and "latency per frame" in text, text
    assert time.perf_counter() - t0 < 60, "the stream did not stop at Ctrl-C"
