"""slimkit.convert: the registry hook, safe checkpoint reading, the books (mapped / unused / initialised),
refusals, the saved folder and its report, load_converted and the command line (a toy converter)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import slimkit
import slimkit.convert as sc
from slimkit.convert import ConversionError, Converted, Converter, WeightMap
from slimkit.hookspecs import hookimpl
from slimkit.host import HOST


def toy_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def run_toy(checkpoint, *, scale: float = 1.0, skip_bias: bool = False):
    """Source ``net.0.*`` / ``net.1.*`` (under ``state_dict.`` when present) -> ``0.*`` / ``1.*``."""
    at = "state_dict." if any(k.startswith("state_dict.") for k in checkpoint.tensors) else ""
    model = toy_model()
    wm = WeightMap(checkpoint, model)
    known = model.state_dict()
    for key in checkpoint.under(at + "net."):
        if key not in known or (skip_bias and key == "0.bias"):
            continue
        if key == "0.weight":
            wm.copy(at + "net." + key, key, transform=lambda t: t * scale)
        else:
            wm.copy(at + "net." + key, key)
    for key in checkpoint.tensors:
        if key.startswith("optimizer."):
            wm.unused(key, "optimizer state, not weights")
    details = {"scale": scale}
    if "args" in checkpoint.objects:              # the pickled options, as data from the one read
        details["args"] = checkpoint.objects["args"]
    return Converted(model=model, build={"hidden": 3}, weights=wm, notes=["toy note"], details=details)


def run_shared(checkpoint):
    """:func:`run_toy`, and ``alias.0.weight`` (the same tensor as ``net.0.weight``) also maps onto ``0.weight``."""
    result = run_toy(checkpoint)
    result.weights.derived(["net.0.weight", "alias.0.weight"], ["0.weight"],
                           "copied from net.0.weight; alias.0.weight is the same tensor")
    return result


def build_toy(spec):
    assert spec == {"hidden": 3}
    return toy_model()


class ToyPlugin:
    @hookimpl
    def register_converters(self, register):
        register(Converter("toy", run_toy, build_toy, "a toy kind for tests"))
        register(Converter("toy-args", run_toy, build_toy, "toy kind whose files pickle argparse options",
                           allow_classes=(argparse.Namespace,)))
        register(Converter("toy-shared", run_shared, build_toy, "toy kind with one tensor under two keys"))


@pytest.fixture
def toy():
    name = HOST.register_plugin(ToyPlugin(), name="toy-converters")
    yield
    HOST.unregister_plugin(name)


def toy_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    m = toy_model()
    with torch.no_grad():
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].running_mean.normal_()
    return {f"net.{k}": v.clone() for k, v in m.state_dict().items()}


def test_hook_is_documented_like_the_others():
    from slimkit import hookspecs

    doc = hookspecs.register_converters.__doc__
    assert "Fires:" in doc and "Call:" in doc and "Returns: nothing" in doc


def test_convert_writes_a_folder_that_loads_back_with_a_full_report(toy, tmp_path, capsys):
    state = toy_state()
    ckpt = tmp_path / "toy.pth"
    opt = {"state": {0: {"momentum_buffer": torch.ones(3, 4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"epoch": 7, "arch": "toy", "state_dict": state, "optimizer": opt}, ckpt)
    out = tmp_path / "out"
    report = slimkit.convert("toy", ckpt, out, scale=2.0)      # the module itself is callable
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "slimkit_applied.json", sc.MODEL_FILE,
                                               sc.REPORT_FILE}
    assert report.mapped["state_dict.net.0.weight"] == ["0.weight"]
    assert len(report.mapped) == len(state) and not report.initialised
    assert report.unused == {"optimizer.state.0.momentum_buffer": "optimizer state, not weights"}
    assert report.fields == {"epoch": 7, "arch": "toy"} and report.transformed == {"0.weight": "copied (transformed)"}
    saved = json.loads((out / sc.REPORT_FILE).read_text())
    assert saved["mapped"] == report.mapped and saved["unused"] == report.unused and saved["notes"] == ["toy note"]
    printed = capsys.readouterr().err
    assert "converted toy checkpoint" in printed and "unused (1): optimizer state" in printed
    back = sc.load_converted(out)
    assert torch.equal(back[0].weight, state["net.0.weight"] * 2.0)
    assert torch.equal(back[1].running_var, state["net.1.running_var"])
    # the plain slimkit load works as well, from the bare model
    again = slimkit.from_pretrained(toy_model(), out)
    assert torch.equal(again[0].bias, state["net.0.bias"])


def test_a_model_tensor_without_a_source_is_refused_unless_allowed(toy, tmp_path):
    ckpt = tmp_path / "toy.pth"
    torch.save(toy_state(), ckpt)
    with pytest.raises(ConversionError, match=r"random initialisation \('0.bias'\).*allow_new") as err:
        sc.convert("toy", ckpt, tmp_path / "out", quiet=True, skip_bias=True, allow_unused=True)
    assert err.value.names == ["0.bias"] and not (tmp_path / "out").exists()   # nothing written
    report = sc.convert("toy", ckpt, tmp_path / "out", quiet=True, skip_bias=True, allow_unused=True,
                        allow_new=["0.b*"])
    assert "0.bias" in report.initialised and "allow_new" in report.initialised["0.bias"]
    assert report.unused["net.0.bias"].startswith("not used by the target model")


def test_a_checkpoint_tensor_without_a_place_is_refused_unless_allowed(toy, tmp_path):
    state = toy_state()
    state["net.2.weight"] = torch.zeros(3)          # a layer the target does not have
    ckpt = tmp_path / "toy.pth"
    torch.save(state, ckpt)
    with pytest.raises(ConversionError, match=r"does not use \('net.2.weight'\).*not be the one that was trained"):
        sc.convert("toy", ckpt, tmp_path / "out", quiet=True)
    report = sc.convert("toy", ckpt, tmp_path / "out", quiet=True, allow_unused=True)
    assert "net.2.weight" in report.unused


def test_unknown_kind_and_option_are_refused_with_the_valid_ones(toy, tmp_path):
    ckpt = tmp_path / "toy.pth"
    torch.save(toy_state(), ckpt)
    with pytest.raises(slimkit.ConfigError, match="unknown checkpoint kind 'tyo'.*'toy'"):
        sc.convert("tyo", ckpt, tmp_path / "out")
    with pytest.raises(slimkit.ConfigError, match="unknown option 'scal' for checkpoint kind 'toy'.*'scale'"):
        sc.convert("toy", ckpt, tmp_path / "out", scal=2)


def test_files_that_need_code_to_load_are_refused(toy, tmp_path):
    ckpt = tmp_path / "with_args.pth"
    torch.save({"state_dict": toy_state(), "args": argparse.Namespace(lr=0.1, arch="toy")}, ckpt)
    with pytest.raises(ConversionError, match=r"needs arbitrary code to load \(it pickles argparse.Namespace\)"):
        sc.convert("toy", ckpt, tmp_path / "out", quiet=True)
    # a kind that declares argparse options as expected reads the file (attributes only, no code)
    report = sc.convert("toy-args", ckpt, tmp_path / "out", quiet=True)
    assert len(report.mapped) == 7


def test_top_level_objects_are_data_from_one_safe_read(toy, tmp_path, monkeypatch):
    """``Checkpoint.objects``: every top-level non-tensor entry, an argparse.Namespace as the dict of its
    attributes, tensors inside shared with ``tensors``; the file is loaded once, weights-only."""
    ckpt = tmp_path / "with_args.pth"
    args = argparse.Namespace(lr=0.1, arch="toy", betas=(0.9, 0.98), milestones=[30, 60], resume=None)
    opt = {"state": {0: {"momentum_buffer": torch.ones(3, 4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"state_dict": toy_state(), "args": args, "epoch": 7, "optimizer": opt,
                "extra": {"train_iterator": {"epoch": 3}, "run": argparse.Namespace(seed=1)}}, ckpt)
    loads = []
    real_load = torch.load

    def counting_load(f, *a, **kw):
        loads.append((str(f), kw.get("weights_only")))
        return real_load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", counting_load)
    report = sc.convert("toy-args", ckpt, tmp_path / "out", quiet=True)
    assert loads == [(str(ckpt), True)]
    assert report.details["args"] == vars(args) and report.fields == {"epoch": 7}
    read = sc.read_checkpoint(ckpt, (argparse.Namespace,))
    assert read.objects["args"] == {"lr": 0.1, "arch": "toy", "betas": (0.9, 0.98), "milestones": [30, 60],
                                    "resume": None}
    assert read.objects["epoch"] == 7 and read.objects["extra"] == {"train_iterator": {"epoch": 3}, "run": {"seed": 1}}
    assert read.objects["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert read.objects["optimizer"]["state"][0]["momentum_buffer"] is read.tensors["optimizer.state.0.momentum_buffer"]
    assert read.objects["state_dict"]["net.0.weight"] is read.tensors["state_dict.net.0.weight"]
    bare = tmp_path / "bare.pth"
    torch.save(toy_state(), bare)
    assert sc.read_checkpoint(bare).objects == {}


def test_summary_counts_each_model_tensor_once(toy, tmp_path):
    """One model tensor mapped from two checkpoint keys (a shared embedding) is one of the model's tensors."""
    state = toy_state()
    state["alias.0.weight"] = state["net.0.weight"]
    ckpt = tmp_path / "shared.pth"
    torch.save(state, ckpt)
    report = sc.convert("toy-shared", ckpt, tmp_path / "out", quiet=True)
    assert report.mapped["alias.0.weight"] == report.mapped["net.0.weight"] == ["0.weight"]
    assert len(report.mapped) == 8 and report.target_tensors == 7 and report.mapped_targets == 7
    assert "8 of 8 checkpoint tensors mapped onto 7 of 7 model tensors" in report.summary()


def test_safetensors_missing_and_corrupt_files(toy, tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "toy.safetensors"
    save_file(toy_state(), str(st), metadata={"source": "unit test"})
    report = sc.convert("toy", st, tmp_path / "out", quiet=True)
    assert report.fields == {"source": "unit test"} and len(report.mapped) == 7
    with pytest.raises(ConversionError, match="does not exist"):
        sc.convert("toy", tmp_path / "nope.pth", tmp_path / "out2")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConversionError, match="cannot be read as a PyTorch or safetensors file"):
        sc.convert("toy", bad, tmp_path / "out2")


def test_a_folder_of_other_files_is_not_replaced(toy, tmp_path):
    ckpt = tmp_path / "toy.pth"
    torch.save(toy_state(), ckpt)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(slimkit.ConfigError, match="did not write"):
        sc.convert("toy", ckpt, out, quiet=True)
    assert (out / "notes.txt").read_text() == "keep me"
    sc.convert("toy", ckpt, tmp_path / "again", quiet=True)
    sc.convert("toy", ckpt, tmp_path / "again", quiet=True)      # a previous conversion is replaced


def test_command_line(toy, tmp_path):
    ckpt = tmp_path / "toy.pth"
    torch.save(toy_state(), ckpt)
    runner = CliRunner()
    listed = runner.invoke(sc.convert_command, ["--list"])
    assert listed.exit_code == 0 and "toy" in listed.output and "scale" in listed.output
    res = runner.invoke(sc.convert_command, ["toy", str(ckpt), str(tmp_path / "out"), "-o", "scale=3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["details"] == {"scale": 3} and data["mapped"]["net.0.weight"] == ["0.weight"]
    res = runner.invoke(sc.convert_command, ["toy", str(ckpt), str(tmp_path / "o2"), "-o", "skip_bias=true"])
    assert isinstance(res.exception, ConversionError) and "0.bias" in str(res.exception)
    res = runner.invoke(sc.convert_command, ["toy", str(ckpt), str(tmp_path / "o2"), "-o", "skip_bias=true",
                                             "--allow-new", "*", "--allow-unused"])
    assert res.exit_code == 0 and "initialised (1)" in res.output
    assert sc.parse_option("direction=past") == ("direction", "past")
    with pytest.raises(slimkit.ConfigError, match="KEY=VALUE"):
        sc.parse_option("direction")


def test_weight_map_follows_renames_and_records_derived_tensors(tmp_path):
    """Techniques applied after copying rename tensors (a wrapper adds ``.net``); replaced layers drop out
    unless the converter records how their replacements were derived."""
    state = toy_state()
    path = tmp_path / "toy.pth"
    torch.save(state, path)
    ckpt = sc.read_checkpoint(path)
    model = toy_model()
    wm = WeightMap(ckpt, model)
    for key in model.state_dict():
        wm.copy(f"net.{key}", key)

    class Wrap(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

    model[1] = Wrap(model[1])                             # renamed: 1.weight -> 1.net.weight
    model[0] = nn.Linear(4, 3)                            # replaced: the old 0.* tensors are gone
    wm.derived(["net.0.weight"], ["0.weight"], "recomputed from net.0.weight")
    assert wm.renamed()["1.weight"] == "1.net.weight"
    books = wm.settle(model)
    assert books["mapped"]["net.0.weight"] == ["0.weight"] and books["mapped"]["net.1.bias"] == ["1.net.bias"]
    assert books["missing"] == ["0.bias"] and books["leftover"] == ["net.0.bias"]
    assert books["transformed"] == {"0.weight": "recomputed from net.0.weight"}

