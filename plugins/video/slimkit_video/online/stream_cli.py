"""``slimkit stream``: run an online (causal TSM) video model on a live source in real time."""
from __future__ import annotations

import click


@click.command("stream")
@click.option("--source", "source_spec", default="auto", show_default=True,
              help="webcam[:N], a video file or folder (file:PATH or PATH), synthetic[:SIZE] (SIZE >= 16), "
                   "lavfi:GRAPH, or 'auto' "
                   "(webcam:0 when a camera exists, else synthetic).")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="A checkpoint folder of 'slimkit video train --direction past'. Default: the shipped "
                   "demo model (a shape moving left or right).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: until the source ends or Ctrl-C).")
@click.option("--show", is_flag=True, help="Open a window with the prediction drawn on the frame (needs a display "
              "and a GUI OpenCV: pip uninstall -y opencv-python-headless && pip install 'slimkit[gui]'; "
              "else use --serve).")
@click.option("--serve", "serve", default=None, is_flag=False, flag_value="127.0.0.1:8765", metavar="[HOST:PORT]",
              help="Serve a live web view (frames, prediction, latency, FPS) for any number of browsers; "
                   "default 127.0.0.1:8765 (this machine only), port 0 picks a free one.")
@click.option("--allow-remote", is_flag=True,
              help="Let --serve listen on an address other machines can reach (e.g. 0.0.0.0:8765).")
@click.option("--history", type=click.IntRange(min=1), default=8, show_default=True,
              help="Frames averaged for the smoothed prediction.")
@click.option("--print-every", type=click.IntRange(min=1), default=None,
              help="Print a status line every N frames (default: every frame on a terminal, else every 10).")
@click.option("--reset-on-cut/--no-reset-on-cut", default=True, show_default=True,
              help="Reset the stream buffers at a scene cut (and always at a new file).")
@click.option("--cut-threshold", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.38,
              show_default=True, help="Scene-cut threshold: colour-histogram distance of consecutive frames (0-1, "
              "exclusive; calibrated on real footage: cuts 0.48+, camera motion up to 0.28; to never reset at cuts "
              "use --no-reset-on-cut).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads for inference.")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="Run the online step in eager PyTorch or in ONNX Runtime (the step exported with its "
                   "buffers as inputs and outputs; needs the export extra).")
@click.option("--onnx", "onnx_path", default=None, type=click.Path(dir_okay=False),
              help="With --backend onnxruntime: an ONNX step exported from --model (checked against it); "
                   "default: export the model at start.")
def stream_command(source_spec, model_dir, seconds, show, serve, allow_remote, history, print_every, reset_on_cut,
                   cut_threshold,
                   threads, backend="torch", onnx_path=None) -> None:
    """Stream a causal TSM model frame by frame: per-frame latency, FPS and the smoothed prediction.

    Each frame costs one 2D forward pass: shifted channels of the previous frame live in small
    buffers (slimkit_video.to_online). Frames that arrive while the model is busy are dropped, so
    the output keeps up with the source. Ctrl-C stops with a summary.
    """
    import torch

    import slimkit
    from slimkit_video.sources import has_camera

    from .live import load_online_model, run_stream
    from .ort import apply_backend
    from .serve import open_live_view

    torch.set_num_threads(max(1, threads))
    view = open_live_view(serve, allow_remote, echo=click.echo)  # first: a busy port fails before any work
    if view is not None:
        click.get_current_context().call_on_close(view.close)
    model = load_online_model(model_dir)
    model = apply_backend(model, backend, onnx_path, threads)
    spec = source_spec
    source = None
    if spec == "auto":
        if has_camera():
            try:
                source = slimkit.open_source("webcam:0")
                spec = "webcam:0"
            except slimkit.SourceError as e:
                click.echo(f"note: {str(e).split(';')[0]}; using the synthetic source", err=True)
        spec = spec if source is not None else "synthetic"
    if source is None:
        options = {}
        if spec.split(":", 1)[0] == "synthetic" and ":" not in spec:
            options["size"] = model.size
        source = slimkit.open_source(spec, **options)
    click.echo(f"streaming {source.name} ({source.fps:g} fps) through {model.name}: classes "
               f"{', '.join(model.classes)}; {model.buffers} shift buffers "
               f"({model.stream.buffer_bytes() or _buffer_bytes(model)} bytes); Ctrl-C to stop")
    summary = run_stream(model, source, seconds=seconds, show=show, history=history,
                         print_every=print_every, reset_on_cut=reset_on_cut, cut_threshold=cut_threshold,
                         on_frame=view.publish if view is not None else None,
                         echo=click.echo)
    for line in summary.lines():
        click.echo(line)


def _buffer_bytes(model) -> int:
    try:
        return sum(4 * _numel(s) for s in model.stream.buffer_shapes((3, model.size, model.size)))
    except Exception:  # pragma: no cover - informative only
        return 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def register_cli(cli) -> None:
    if "stream" not in cli.commands:
        cli.add_command(stream_command)
