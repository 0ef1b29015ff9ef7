"""``slimkit hat train | measure | fit-predictor | search | export``."""
from __future__ import annotations

import json
from pathlib import Path

import click


def _space(space_file, checkpoint, task_name=None):
    from .space import HatSpace
    from .train import SPACE_FILE
    if space_file:
        return HatSpace.load(space_file)
    if checkpoint:
        return HatSpace.load(Path(checkpoint) / SPACE_FILE)
    return default_space_for(task_name or "reverse")


def default_space_for(task_name: str):
    """The default CPU space for a task: encoder-decoder (vocab 13) for the digit tasks, else decoder-only."""
    from .space import HatSpace
    from .tasks import SEQ2SEQ_KINDS
    if task_name in SEQ2SEQ_KINDS:
        return HatSpace(task="encdec", vocab_size=13, max_positions=64)
    if task_name == "shakespeare-lines":
        return HatSpace(task="encdec", vocab_size=259, max_positions=64)
    return HatSpace(task="decoder", vocab_size=256, max_positions=256)


def _progress(desc):
    """A tqdm bar with a time estimate (silent under `slimkit --quiet` or when stderr is not a terminal)."""
    from slimkit.progress import progress_callback
    return progress_callback(desc)


def _fail(e):
    raise click.ClickException(str(e))


@click.group("hat")
def hat() -> None:
    """HAT: train a SuperTransformer, measure latency here, fit a predictor, search, export."""


@hat.command("train")
@click.option("--task", "task_name", default="reverse", show_default=True,
              help="shakespeare, shakespeare-lines, reverse, sort, shift, or a text file/folder/dataset name")
@click.option("--space", "space_file", type=click.Path(), help="design space (.yaml or .json)")
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--block", default=64, show_default=True, help="LM block length")
@click.option("--seed", default=0, show_default=True)
@click.option("--time-budget", type=float, default=None, help="stop after this many seconds")
@click.option("--checkpoint-every", default=100, show_default=True,
              help="training checkpoint every N steps (0: only on Ctrl-C / SIGTERM)")
@click.option("--resume/--no-resume", default=None,
              help="default: continue from the output folder's newest checkpoint when its settings match; "
                   "--resume requires one; --no-resume deletes the folder's checkpoints and starts over")
@click.option("--output-dir", required=True, type=click.Path())
def train_cmd(task_name, space_file, steps, batch_size, lr, block, seed, time_budget, checkpoint_every, resume,
              output_dir):
    """Train the weight-shared SuperTransformer (one sampled SubTransformer per step)."""
    from slimkit.errors import SlimkitError
    from slimkit.training import TrainingInterrupted, interrupted_exit

    from .supernet import SuperTransformer
    from .tasks import make_task
    from .train import train_supernet
    try:
        space = _space(space_file, None, task_name)
        task = make_task(task_name, block=block)
        state = train_supernet(SuperTransformer(space), task, steps=steps, batch_size=batch_size, lr=lr,
                               seed=seed, output_dir=output_dir, checkpoint_every=checkpoint_every,
                               time_budget_s=time_budget, resume=resume)
    except TrainingInterrupted as e:
        interrupted_exit(e, click.echo)
    except SlimkitError as e:
        _fail(e)
    click.echo(json.dumps(state, indent=2))


@hat.command("measure")
@click.option("--space", "space_file", type=click.Path(), help="design space (.yaml/.json)")
@click.option("--checkpoint", type=click.Path(), help="or a SuperTransformer checkpoint folder (its space)")
@click.option("-n", "--num", default=200, show_default=True, help="configurations to measure")
@click.option("--csv", "csv_path", required=True, type=click.Path(), help="output CSV (reruns resume)")
@click.option("--src-len", default=16, show_default=True)
@click.option("--steps", default=8, show_default=True, help="incremental decoding steps")
@click.option("--warmup", default=5, show_default=True)
@click.option("--runs", default=20, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--reference/--no-reference", default=False, show_default=True,
              help="pair every run with a fixed reference model (cancels load drift on a shared machine)")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, default=False,
              help="delete the CSV's rows and measure again (needed when its stored settings differ)")
def measure_cmd(space_file, checkpoint, num, csv_path, src_len, steps, warmup, runs, threads, reference, seed,
                overwrite):
    """Measure sampled SubTransformers on this machine (HAT protocol) into a CSV.

    The settings (protocol, seed, machine, space) are stored in <csv>.settings.json; a rerun with the
    same settings resumes, one with other settings is refused (use a new --csv or --overwrite)."""
    from slimkit.errors import SlimkitError

    from .latency import MeasureSettings, measure_dataset, settings_path
    try:
        space = _space(space_file, checkpoint)
        rows = measure_dataset(space, num, csv_path, MeasureSettings(src_len, steps, warmup, runs, threads,
                                                                           reference=reference),
                               seed=seed, progress=_progress("hat measure"), overwrite=overwrite)
    except SlimkitError as e:
        _fail(e)
    lat = sorted(r["latency_ms"] for r in rows)
    span = f": latency {lat[0]:.2f} .. {lat[-1]:.2f} ms" if lat else ""
    click.echo(f"{len(rows)} configurations in {csv_path}{span} (settings in {settings_path(csv_path)})")


@hat.command("fit-predictor")
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True))
@click.option("--space", "space_file", type=click.Path())
@click.option("--checkpoint", type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path(), help="predictor file (.pt)")
@click.option("--holdout", default=0.2, show_default=True)
@click.option("--epochs", default=1000, show_default=True)
@click.option("--src-len", type=int, default=None,
              help="as measured (for the FLOPs baseline); default: from <csv>.settings.json, else 16")
@click.option("--steps", type=int, default=None,
              help="as measured (for the FLOPs baseline); default: from <csv>.settings.json, else 8")
def fit_cmd(csv_path, space_file, checkpoint, out_path, holdout, epochs, src_len, steps):
    """Train the MLP latency predictor; report held-out RMSE, MAPE, Kendall tau vs a FLOPs fit.

    The space and lengths come from the CSV's settings file (written by `hat measure`); a --space,
    --checkpoint, --src-len or --steps that contradicts it is refused."""
    from slimkit.errors import SlimkitError

    from .latency import fit_inputs, read_csv
    from .predictor import fit_and_evaluate
    try:
        given = _space(space_file, checkpoint) if (space_file or checkpoint) else None
        rows = read_csv(csv_path)
        space, src_len, steps, note = fit_inputs(csv_path, rows, given, src_len, steps)
        if note:
            click.echo(note, err=True)
        space = space or _space(None, None)
        pred, report = fit_and_evaluate(space, rows, src_len, steps, holdout, epochs=epochs)
        pred.save(out_path)
    except SlimkitError as e:
        _fail(e)
    for name in ("mlp", "flops_linear"):
        r = report[name]
        click.echo(f"{name:13s} RMSE {r['rmse_ms']:.3f} ms  MAPE {r['mape_pct']:.2f}%  Kendall tau {r['kendall_tau']:.3f}"
                   f"  (held out {r['n']})")
    click.echo(f"saved {out_path}")


@hat.command("search")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="trained SuperTransformer")
@click.option("--predictor", "pred_path", required=True, type=click.Path(exists=True))
@click.option("--latency-bound", required=True, type=float, help="milliseconds (predicted)")
@click.option("--task", "task_name", default="reverse", show_default=True, help="validation data (as trained)")
@click.option("--block", default=64, show_default=True)
@click.option("--method", type=click.Choice(["evolution", "random"]), default="evolution", show_default=True)
@click.option("--population", default=20, show_default=True)
@click.option("--parents", default=5, show_default=True)
@click.option("--mutations", default=8, show_default=True)
@click.option("--crossovers", default=7, show_default=True)
@click.option("--mutation-prob", default=0.3, show_default=True)
@click.option("--iterations", default=8, show_default=True)
@click.option("--evaluations", type=int, default=None, help="budget (distinct architectures evaluated)")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_path", type=click.Path(), default="hat_search.json", show_default=True)
def search_cmd(checkpoint, pred_path, latency_bound, task_name, block, method, population, parents, mutations,
               crossovers, mutation_prob, iterations, evaluations, seed, out_path):
    """Search the SubTransformer with the lowest validation loss under a latency bound."""
    from slimkit.errors import SlimkitError

    from .predictor import LatencyPredictor
    from .search import SearchSettings, evolutionary_search, random_search
    from .tasks import evaluate, make_task
    from .train import load_supernet
    try:
        net = load_supernet(checkpoint)
        pred = LatencyPredictor.load(pred_path)
        task = make_task(task_name, block=block)
        vb = task.val_batches()
        fitness = lambda sub: evaluate(net, sub, task, vb)  # noqa: E731
        if method == "evolution":
            s = SearchSettings(population, parents, mutations, crossovers, mutation_prob, iterations, evaluations,
                               seed=seed)
            res = evolutionary_search(net.space, fitness, pred.predict, latency_bound, s, _progress("hat search"))
        else:
            res = random_search(net.space, fitness, pred.predict, latency_bound,
                                evaluations or population * iterations, seed, progress=_progress("hat random"))
    except SlimkitError as e:
        _fail(e)
    from slimkit.io import atomic_write_json

    atomic_write_json(out_path, res.to_dict())
    click.echo(f"best val loss {res.best_loss:.4f}, predicted {res.best_latency_pred_ms:.2f} ms, "
               f"{res.evaluations} evaluations; written to {out_path}")


@hat.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True))
@click.option("--config", "sub_path", type=click.Path(exists=True),
              help="search result JSON or a SubConfig JSON (default: the largest SubTransformer)")
@click.option("--output-dir", required=True, type=click.Path())
def export_cmd(checkpoint, sub_path, output_dir):
    """Export a SubTransformer as a standalone Hugging Face model (save_pretrained folder)."""
    import torch

    from slimkit.errors import SlimkitError
    from slimkit.measure import count_params

    from .space import SubConfig
    from .train import load_supernet
    try:
        net = load_supernet(checkpoint)
        sub = None
        if sub_path:
            from slimkit.io import read_json

            data = read_json(sub_path, what="SubTransformer config", fix="pass the JSON written by `slimkit hat search`")
            sub = SubConfig.from_dict(data["best"] if "best" in data else data)
        model = net.export(sub)
        sub = sub or net.space.largest()
        ids = torch.randint(3, net.space.vocab_size, (1, 8))
        with torch.no_grad():
            if net.space.is_encdec:
                a = net(sub, ids, None, ids)
                b = model(input_ids=ids, decoder_input_ids=ids).logits
            else:
                a, b = net(sub, ids), model(input_ids=ids).logits
        from slimkit.io import atomic_folder

        with atomic_folder(output_dir) as tmp:
            model.save_pretrained(str(tmp))
    except SlimkitError as e:
        _fail(e)
    click.echo(f"exported {count_params(model):,} parameters (SuperTransformer {count_params(net):,}) to "
               f"{output_dir}; max |slice - export| = {float((a - b).abs().max()):.2e}")
    click.echo("load with: import slimkit_nlp.hat; AutoModelFor"
               f"{'Seq2SeqLM' if net.space.is_encdec else 'CausalLM'}.from_pretrained({output_dir!r})")
