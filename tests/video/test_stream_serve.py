"""``slimkit stream --serve``: the live web view, watched by a real headless Chromium.

The browser test drives Debian's ``chromium`` through ``chromedriver`` (package ``chromium-driver``)
with Selenium; it skips, naming what to install, where they are missing (``make setup`` installs
them where apt-get runs without a prompt). The other tests talk HTTP to the server directly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError

CLASSES = ("left_to_right", "right_to_left")


# -- helpers -----------------------------------------------------------------------------------
def _update(seq: int, size: int = 48):
    """A FrameUpdate whose frame changes with ``seq`` (a bright bar moving right)."""
    from slimkit_video.online.live import FrameUpdate

    frame = np.full((size, size, 3), 40, np.uint8)
    x = (3 * seq) % (size - 6)
    frame[:, x:x + 6] = 230
    p = 0.5 + 0.4 * np.sin(seq / 5)
    return FrameUpdate(seq=seq, frame=frame, label=CLASSES[int(p < 0.5)], confidence=max(p, 1 - p),
                       probabilities=[p, 1 - p], classes=list(CLASSES), truth=None, latency_ms=4.0,
                       sustainable_fps=250.0, processed_fps=15.0, source_fps=15.0, resets=seq // 16, dropped=0,
                       reset=seq % 16 == 0, source="test", model="test model")


def _mjpeg_frames(url: str, n: int, timeout: float = 10.0) -> list[bytes]:
    """The first ``n`` JPEGs of an MJPEG stream."""
    frames = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(frames) < n:
            line = r.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                r.readline()
                frames.append(r.read(length))
    return frames


def _wait_until(condition, timeout: float, what) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, what
        time.sleep(0.05)


class _Publisher:
    """Publishes a changing frame 30 times per second to ``server`` until stopped."""

    def __init__(self, server) -> None:
        self.server, self.seq = server, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1 / 30):
            self.seq += 1
            self.server.publish(_update(self.seq))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)


# -- the address and its checks ------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("", ("127.0.0.1", 8765)), ("127.0.0.1:9000", ("127.0.0.1", 9000)), (":9001", ("127.0.0.1", 9001)),
    ("9002", ("127.0.0.1", 9002)), ("localhost", ("localhost", 8765)), ("[::1]:9003", ("::1", 9003)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_serve_addresses_parse(text, expected):
    from slimkit_video.online.serve import parse_address

    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:http", "host:99999", "[::1]x", "a:"])
def test_a_malformed_address_is_one_sentence(text):
    from slimkit_video.online.serve import parse_address

    with pytest.raises(ConfigError, match="is not an address; use HOST:PORT"):
        parse_address(text)


def test_a_public_address_needs_allow_remote(capsys):
    from slimkit_video.online.serve import check_exposure, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    check_exposure("0.0.0.0", 8765, allow_remote=True)
    rc = main(["stream", "--serve", "0.0.0.0:0", "--seconds", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-remote" in err and "0.0.0.0:0" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_port_in_use_is_one_sentence_before_any_work(capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        t0 = time.perf_counter()
        rc = main(["stream", "--serve", f"127.0.0.1:{port}", "--seconds", "1"])
        elapsed = time.perf_counter() - t0
    finally:
        busy.close()
    captured = capsys.readouterr()
    assert rc == 2 and f"port {port} on 127.0.0.1 is already in use" in captured.err
    assert "--serve 127.0.0.1:0" in captured.err and "Traceback" not in captured.err
    assert "streaming" not in captured.out and elapsed < 10  # refused before loading the model


def test_serve_without_a_value_means_loopback_8765():
    from slimkit_video.online.stream_cli import stream_command

    serve = next(p for p in stream_command.params if p.name == "serve")
    assert serve.flag_value == "127.0.0.1:8765" and serve.default is None
    cut = next(p for p in stream_command.params if p.name == "cut_threshold")
    from slimkit_video.online.live import DEFAULT_CUT_THRESHOLD
    assert cut.default == DEFAULT_CUT_THRESHOLD


def test_serve_without_its_web_library_names_the_extra(monkeypatch):
    from slimkit.errors import MissingExtraError
    from slimkit_video.online.serve import LiveServer

    monkeypatch.setitem(sys.modules, "aiohttp", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'slimkit\[serve\]'"):
        LiveServer("127.0.0.1", 0)


# -- the server, over plain HTTP -------------------------------------------------------------------
def test_server_serves_page_state_frames_and_mjpeg_to_several_viewers():
    from slimkit_video.online.serve import LiveServer

    notes = []
    with LiveServer("127.0.0.1", 0, echo=notes.append).start() as server, _Publisher(server):
        url = server.url
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "<title>slimkit stream" in page and 'id="label"' in page and "/ws" in page
        # two MJPEG viewers at once, each sees changing frames
        got: dict = {}
        viewers = [threading.Thread(target=lambda k=k: got.__setitem__(k, _mjpeg_frames(url + "stream.mjpg", 8)))
                   for k in range(2)]
        for t in viewers:
            t.start()
        for t in viewers:
            t.join(15)
        assert len(got) == 2 and all(len(set(frames)) > 1 for frames in got.values())
        assert all(f[:2] == b"\xff\xd8" for frames in got.values() for f in frames)  # JPEGs
        state = json.loads(urllib.request.urlopen(url + "state.json", timeout=10).read())
        assert state["label"] in CLASSES and state["width"] == 48 and state["sustainable_fps"] == 250.0
        assert urllib.request.urlopen(url + "frame.jpg", timeout=10).read()[:2] == b"\xff\xd8"
        _wait_until(lambda: sum("disconnected" in n for n in notes) == 2, 10, notes)  # noticed at the next frame
    assert all("the stream keeps running" in n for n in notes)


def test_a_viewer_that_vanishes_mid_stream_is_one_note_and_the_others_keep_watching():
    from slimkit_video.online.serve import LiveServer

    notes = []
    with LiveServer("127.0.0.1", 0, echo=notes.append).start() as server, _Publisher(server):
        rude = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        rude.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"multipart" in rude.recv(4096)
        time.sleep(0.3)          # it stops reading, then resets the connection
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()
        _wait_until(lambda: any("disconnected" in n for n in notes), 10, notes)
        assert any("disconnected" in n and "keeps running" in n for n in notes), notes
        assert len(set(_mjpeg_frames(server.url + "stream.mjpg", 4))) > 1   # still serving
    assert all(n.count(";") == 1 for n in notes), notes   # one sentence each, no traceback


def test_close_ends_the_mjpeg_viewers_and_frees_the_port():
    from slimkit_video.online.serve import LiveServer

    server = LiveServer("127.0.0.1", 0, echo=lambda s: None).start()
    port = server.port
    with _Publisher(server):
        r = urllib.request.urlopen(server.url + "stream.mjpg", timeout=10)
        r.readline()
        t0 = time.perf_counter()
        server.close()
        assert time.perf_counter() - t0 < 5
        r.read()   # the stream ends instead of hanging
    server.publish(_update(1))   # after close: ignored, no error
    LiveServer("127.0.0.1", port, echo=lambda s: None).start().close()   # the port is free again at once


# -- the real thing: slimkit stream --serve in a real headless browser ---------------------------------
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _chrome():
    """A headless Chromium driven by Selenium through the system chromedriver (no download)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install 'slimkit[test]'")
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver (make setup does it where apt "
                    "runs as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
                "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


class _Lines:
    """The output lines of a process, collected in a thread; ``wait_for(text)`` blocks until one has it."""

    def __init__(self, proc) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float, after: int = 0) -> str:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout:g} s:\n{self.text}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _shown(driver) -> int:
    return int(driver.execute_script("return window.slimkit ? window.slimkit.shown : 0"))


def _wait_shown(driver, n: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while _shown(driver) < n:
        assert time.perf_counter() < deadline, f"the page showed {_shown(driver)} frames in {timeout:g} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_real_browser_watches_slimkit_stream_serve():
    """Two tabs watch ``slimkit stream --source synthetic --serve``: frames change, the predicted
    label appears, at least 10 new frames per second reach the page, one tab leaving is a note,
    and Ctrl-C stops everything cleanly."""
    from selenium.webdriver.common.by import By

    cmd = [sys.executable, "-c", "import sys; from slimkit.cli import main; sys.exit(main())", "stream",
           "--source", "synthetic", "--serve", "127.0.0.1:0", "--seconds", "300", "--print-every", "15"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    out = _Lines(proc)
    driver = None
    try:
        driver = _chrome()   # starts while the stream loads its model
        url = out.wait_for("live view on", 120).split("live view on ")[1].split()[0]
        driver.get(url)
        _wait_shown(driver, 3, 120)
        first_tab = driver.current_window_handle

        # frames change and the predicted label appears
        frame = driver.find_element(By.ID, "frame")
        shots = [frame.screenshot_as_png]
        time.sleep(0.5)
        shots.append(frame.screenshot_as_png)
        assert shots[0] != shots[1], "the frame on the page did not change"
        assert driver.find_element(By.ID, "label").text in CLASSES
        assert driver.find_element(By.ID, "status").text == "live"
        assert float(driver.find_element(By.ID, "sustainable").text) > 0

        # the goal: at least 10 new frames per second on the page while the model runs
        n0, t0 = _shown(driver), time.perf_counter()
        time.sleep(3.0)
        page_fps = (_shown(driver) - n0) / (time.perf_counter() - t0)
        print(f"frames shown on the page: {page_fps:.1f} per second")
        assert page_fps >= 10, f"only {page_fps:.1f} frames per second reached the page"

        # a second viewer at once
        driver.switch_to.new_window("tab")
        driver.get(url)
        _wait_shown(driver, 3, 30)
        assert driver.find_element(By.ID, "label").text in CLASSES
        deadline = time.perf_counter() + 10
        while driver.find_element(By.ID, "viewers").text != "2 viewers":
            assert time.perf_counter() < deadline, driver.find_element(By.ID, "viewers").text
            time.sleep(0.1)
        # it leaves: one note, the stream and the first viewer carry on
        before = len(out.lines)
        driver.close()
        driver.switch_to.window(first_tab)
        note = out.wait_for("disconnected", 15, after=before)
        assert "the stream keeps running" in note
        n1 = _shown(driver)
        out.wait_for("frame ", 15, after=len(out.lines))
        _wait_shown(driver, n1 + 5, 15)

        # Ctrl-C: a clean stop, the page says so
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        text = out.text
        assert rc in (0, 130), text
        assert "Traceback" not in text and "stopped by Ctrl-C" in text, text
        deadline = time.perf_counter() + 10
        while "stopped" not in driver.find_element(By.ID, "status").text:
            assert time.perf_counter() < deadline, "the page did not notice the end of the stream"
            time.sleep(0.1)
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
