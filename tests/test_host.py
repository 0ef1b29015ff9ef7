"""The pluggy host: built-ins load, third-party plugins plug in, broken ones don't break anything."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import slimkit
from slimkit import hookspecs
from slimkit.host import HOST
from slimkit.registry import install_command, registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_host(monkeypatch):
    """Reload plugins for the test and again afterwards, so state never leaks."""
    yield monkeypatch
    monkeypatch.undo()
    HOST.load()


def test_builtin_plugins_load_through_entry_points():
    infos = {i.name: i for i in slimkit.plugins()}
    assert infos["video"].available, infos["video"].reason
    assert infos["nlp"].available, infos["nlp"].reason
    assert infos["video"].module == "slimkit_video.plugin"
    assert infos["nlp"].version == slimkit.__version__


def test_each_plugin_registers_exactly_its_registry_techniques():
    reg = registry()
    table = slimkit.techniques()
    for name, info in ((i.name, i) for i in slimkit.plugins()):
        if name not in reg.plugins or not info.available:
            continue
        registered = {t.name for t in table.values() if t.plugin == name}
        assert registered == reg.techniques_of(name), f"plugin {name!r} vs registry.toml"


def test_registry_entries_are_complete():
    reg = registry()
    for t in reg.techniques.values():
        assert t.plugin in reg.plugins, t
        assert t.summary and t.paper_title and t.arxiv, t
    for p in reg.plugins.values():
        assert p.extra and p.module and p.requires


def test_technique_objects_carry_the_public_fields():
    for name, t in slimkit.techniques().items():
        assert t.name == name and t.plugin in {"video", "nlp"}
        assert issubclass(t.config_class, slimkit.TechniqueConfig)
        assert t.config_class.technique == name
        assert t.summary


def test_every_hook_is_documented():
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert {"register_techniques", "register_models", "register_sources",
            "register_benchmarks", "register_commands"} <= set(hooks)
    readme = (REPO / "README.md").read_text()
    for name in hooks:
        fn = getattr(hookspecs, name)
        doc = fn.__doc__ or ""
        assert "Fires:" in doc and "Returns:" in doc, f"{name} must say when it fires and what it returns"
        assert fn.__annotations__, f"{name} must be typed"
        assert f"`{name}" in readme, f"README's plugin-author section must document {name}"


def test_load_plugins_env_var_limits_loading(fresh_host):
    fresh_host.setenv("SLIMKIT_LOAD_PLUGINS", "")
    HOST.load()
    assert slimkit.techniques() == {}
    infos = {i.name: i for i in slimkit.plugins()}
    assert not infos["video"].available and "SLIMKIT_LOAD_PLUGINS" in infos["video"].reason
    fresh_host.setenv("SLIMKIT_LOAD_PLUGINS", "nlp")
    HOST.load()
    assert {t.plugin for t in slimkit.techniques().values()} <= {"nlp"}
    assert {i.name: i for i in slimkit.plugins()}["nlp"].available


def test_missing_extra_gives_the_exact_install_hint(fresh_host):
    # decord is a video-only dependency: make it unimportable and reload the plugins.
    fresh_host.setitem(sys.modules, "decord", None)
    HOST.load()
    info = {i.name: i for i in slimkit.plugins()}["video"]
    assert not info.available
    assert info.reason == f"missing dependency decord: {install_command('video')}"
    video_techniques = sorted(registry().techniques_of("video"))
    assert video_techniques, "registry.toml lists no video technique"
    name = video_techniques[0]
    with pytest.raises(slimkit.MissingExtraError) as e:
        slimkit.apply(object(), name)
    assert str(e.value) == (f"technique {name!r} is provided by plugin 'video', "
                            f"which is not installed: {install_command('video')}")
    # the other plugin is untouched
    assert {i.name: i for i in slimkit.plugins()}["nlp"].available


THIRD_PARTY = textwrap.dedent('''
    """A complete third-party slimkit plugin (the README shows the same)."""
    from dataclasses import dataclass
    from typing import ClassVar

    import slimkit
    import torch


    @dataclass
    class ScaleConfig(slimkit.TechniqueConfig):
        technique: ClassVar[str] = "scale-weights"
        version: ClassVar[int] = 1
        factor: float = 0.5

        def validate(self):
            if self.factor <= 0:
                raise slimkit.ConfigError("factor must be > 0; pass e.g. factor=0.5")


    def apply_scale(model, config):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.factor)
        return model


    @slimkit.hookimpl
    def register_techniques(register):
        register(slimkit.Technique("scale-weights", ScaleConfig, apply_scale,
                                   "Multiply every weight by a factor."))


    @slimkit.hookimpl
    def register_commands(cli):
        @cli.command()
        def hello():
            """Say hello."""
            print("hello from a plugin")
''')


def _install_throwaway_dist(root: Path, dist: str, module: str, source: str) -> None:
    """A real installed distribution: module + dist-info with an entry point, on sys.path."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[slimkit.plugins]\n{dist} = {module}\n")
    (info / "RECORD").write_text("")


def test_third_party_plugin_via_entry_point(tmp_path, fresh_host):
    import torch

    _install_throwaway_dist(tmp_path, "slimkit-scale", "slimkit_scale_plugin", THIRD_PARTY)
    fresh_host.syspath_prepend(str(tmp_path))
    HOST.load()
    info = {i.name: i for i in slimkit.plugins()}["slimkit-scale"]
    assert info.available and info.version == "1.2.3"
    assert info.techniques == ["scale-weights"]
    model = torch.nn.Linear(3, 2)
    before = model.weight.detach().clone()
    out = slimkit.apply(model, "scale-weights", factor=0.25)
    assert torch.allclose(out.weight, before * 0.25)
    assert out.slimkit_configs[-1].factor == 0.25
    with pytest.raises(slimkit.ConfigError, match="factor must be > 0"):
        slimkit.apply(model, "scale-weights", factor=-1.0)
    # the CLI sees it too (plugins table and its command)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "slimkit.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["slimkit-scale"]["techniques"] == ["scale-weights"]
    res = subprocess.run([sys.executable, "-m", "slimkit.cli", "hello"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "hello from a plugin" in res.stdout


def test_plugin_that_fails_to_import_is_listed_not_fatal(tmp_path, fresh_host):
    _install_throwaway_dist(tmp_path, "broken", "slimkit_broken_plugin",
                            "raise RuntimeError('boom: this plugin is broken')\n")
    fresh_host.syspath_prepend(str(tmp_path))
    HOST.load()
    info = {i.name: i for i in slimkit.plugins()}["broken"]
    assert not info.available
    assert info.reason.startswith("failed to import slimkit_broken_plugin: RuntimeError: boom")
    assert {i.name: i for i in slimkit.plugins()}["video"].available
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "slimkit.cli", "plugins"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "failed to import" in res.stdout


def test_plugin_registered_in_a_fixture_then_unregistered():
    import torch

    class Plugin:
        @slimkit.hookimpl
        def register_techniques(self, register):
            @dataclass
            class NoopConfig(slimkit.TechniqueConfig):
                technique = "noop-test"
            register(slimkit.Technique("noop-test", NoopConfig, lambda m, c: m, "Does nothing."))

    name = slimkit.register_plugin(Plugin(), "noop")
    try:
        assert slimkit.techniques()["noop-test"].plugin == "noop"
        m = torch.nn.Linear(2, 2)
        assert slimkit.apply(m, "noop-test") is m
    finally:
        slimkit.unregister_plugin(name)
    assert "noop-test" not in slimkit.techniques()


def test_hook_that_raises_disables_only_that_plugin():
    class Bad:
        @slimkit.hookimpl
        def register_techniques(self, register):
            raise ValueError("cannot register")

    slimkit.register_plugin(Bad(), "bad")
    try:
        table = slimkit.techniques()
        assert set(registry().techniques) <= set(table) | set()  # built-ins still there
        info = {i.name: i for i in slimkit.plugins()}["bad"]
        assert not info.available and "register_techniques failed: ValueError" in info.reason
    finally:
        slimkit.unregister_plugin("bad")


def test_a_failing_part_does_not_hide_the_other_parts(tmp_path, monkeypatch):
    """Built-in plugins are split into parts (one per technique); one broken part is reported alone."""
    from slimkit.parts import delegate_hooks

    (tmp_path / "good_part.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import slimkit

        @dataclass
        class GoodConfig(slimkit.TechniqueConfig):
            technique = "good-part"

        def register_techniques(register):
            register(slimkit.Technique("good-part", GoodConfig, lambda m, c: m, "Fine."))
    '''))
    (tmp_path / "bad_part.py").write_text("def register_techniques(register):\n    raise ImportError('no such dep')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ns: dict = {}
    delegate_hooks(ns, ("bad_part", "good_part"))

    class Plugin:
        pass

    plugin = Plugin()
    for k, v in ns.items():
        setattr(plugin, k, v)
    slimkit.register_plugin(plugin, "parts-demo")
    try:
        assert slimkit.techniques()["good-part"].plugin == "parts-demo"
        info = {i.name: i for i in slimkit.plugins()}["parts-demo"]
        assert info.available
        assert "partly failed: part bad_part: ImportError: no such dep" in info.reason
    finally:
        slimkit.unregister_plugin("parts-demo")


# -- name clashes: built-ins keep their names; a replacement needs the user's explicit choice --------
@dataclass
class _ImpostorConfig(slimkit.TechniqueConfig):
    technique = "tsm"


class _Impostor:
    """A third-party plugin that registers a technique called ``tsm`` (and a model called ``r3d-18``)."""

    def __init__(self):
        self.applied = 0

    def _apply(self, model, config):
        self.applied += 1
        return model

    @slimkit.hookimpl
    def register_techniques(self, register):
        register(slimkit.Technique("tsm", _ImpostorConfig, self._apply, "Not the real TSM."))

    @slimkit.hookimpl
    def register_models(self, register):
        register("r3d-18", lambda **kw: None, "Not the real R3D-18.")


@pytest.fixture
def impostor(request):
    """Register an ``_Impostor`` under ``request.param``; unregister it and drop every preference after."""
    plugin = _Impostor()
    name = slimkit.register_plugin(plugin, request.param)
    yield name, plugin
    slimkit.prefer("tsm", None)
    slimkit.unregister_plugin(name)


def _plugins_cli(*args):
    from click.testing import CliRunner

    from slimkit.cli import cli

    res = CliRunner().invoke(cli, ["plugins", *args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.filterwarnings("ignore::slimkit.host.PluginClashWarning")
@pytest.mark.parametrize("impostor", ["aaa-impostor", "zzz-impostor"], indirect=True)
def test_a_builtin_keeps_its_name_whatever_the_other_plugin_is_called(impostor):
    from slimkit.host import PluginClashWarning

    name, plugin = impostor
    with pytest.warns(PluginClashWarning, match=f"'{name}'.*'tsm' refused.*'video'"):
        assert slimkit.get_technique("tsm").plugin == "video"
    assert slimkit.models()["r3d-18"].plugin == "video"  # every register_* table, not only techniques
    infos = {i.name: i for i in slimkit.plugins()}
    assert "tsm" not in infos[name].techniques and "tsm" in infos["video"].techniques
    refusal = (f"technique 'tsm' refused: already registered by built-in plugin 'video'; "
               f"to use this one, run with SLIMKIT_PREFER=tsm={name}")
    assert refusal in infos[name].refused
    assert any(r.startswith("model 'r3d-18' refused") for r in infos[name].refused)
    assert f"technique 'tsm' kept; plugin {name!r} also registers it (refused)" in infos["video"].overrides
    assert infos[name].to_dict()["refused"] == infos[name].refused
    text = _plugins_cli()
    assert f"plugin {name!r}: {refusal}" in text
    rows = {r["name"]: r for r in json.loads(_plugins_cli("--json"))}
    assert refusal in rows[name]["refused"]
    assert any(name in note for note in rows["video"]["overrides"])


@pytest.mark.filterwarnings("ignore::slimkit.host.PluginClashWarning")
@pytest.mark.parametrize("dist", ["aaa-impostor", "zzz-impostor"])
def test_entry_point_load_order_does_not_decide_a_clash_with_a_builtin(tmp_path, fresh_host, dist):
    """Entry points load sorted by name: one sorting before and one after ``video`` both lose ``tsm``."""
    module = dist.replace("-", "_") + "_plugin"
    _install_throwaway_dist(tmp_path, dist, module, textwrap.dedent('''
        import slimkit

        class Config(slimkit.TechniqueConfig):
            technique = "tsm"

        @slimkit.hookimpl
        def register_techniques(register):
            register(slimkit.Technique("tsm", Config, lambda m, c: m, "Not the real TSM."))
    '''))
    fresh_host.syspath_prepend(str(tmp_path))
    HOST.load()
    assert slimkit.get_technique("tsm").plugin == "video"
    info = {i.name: i for i in slimkit.plugins()}[dist]
    assert info.available and any("'tsm' refused" in r and "'video'" in r for r in info.refused)


def test_between_two_third_party_plugins_the_first_loaded_keeps_a_name():
    def plugin_for(tag):
        class P:
            @slimkit.hookimpl
            def register_techniques(self, register):
                register(slimkit.Technique("clash-demo", _ImpostorConfig, lambda m, c: m, tag))
        return P()

    first = slimkit.register_plugin(plugin_for("first"), "zz-first")
    second = slimkit.register_plugin(plugin_for("second"), "aa-second")
    try:
        with pytest.warns(UserWarning, match="'aa-second'"):
            assert slimkit.techniques()["clash-demo"].plugin == "zz-first"
        refused = {i.name: i for i in slimkit.plugins()}["aa-second"].refused
        assert refused == ["technique 'clash-demo' refused: already registered by plugin 'zz-first'; "
                           "to use this one, run with SLIMKIT_PREFER=clash-demo=aa-second"]
    finally:
        slimkit.unregister_plugin(second)
        slimkit.unregister_plugin(first)


@pytest.mark.filterwarnings("ignore::slimkit.host.PluginClashWarning")
@pytest.mark.parametrize("impostor", ["zzz-preferred"], indirect=True)
def test_prefer_env_var_lets_a_plugin_replace_a_builtin(impostor, monkeypatch):
    import torch

    name, plugin = impostor
    monkeypatch.setenv("SLIMKIT_PREFER", f"other=nobody, tsm={name}")
    assert slimkit.get_technique("tsm").plugin == name
    slimkit.apply(torch.nn.Linear(2, 2), "tsm")
    assert plugin.applied == 1
    infos = {i.name: i for i in slimkit.plugins()}
    assert infos[name].techniques == ["tsm"] and "tsm" not in infos["video"].techniques
    assert ("technique 'tsm' not used: plugin 'zzz-preferred' replaces it because SLIMKIT_PREFER asks for it"
            in infos["video"].refused)
    assert "plugin 'video': technique 'tsm' not used" in _plugins_cli()
    monkeypatch.delenv("SLIMKIT_PREFER")
    assert slimkit.get_technique("tsm").plugin == "video"


@pytest.mark.filterwarnings("ignore::slimkit.host.PluginClashWarning")
@pytest.mark.parametrize("impostor", ["aaa-preferred"], indirect=True)
def test_prefer_function_lets_a_plugin_replace_a_builtin_until_undone(impostor):
    name, _ = impostor
    slimkit.prefer("tsm", name)
    assert slimkit.get_technique("tsm").plugin == name
    assert slimkit.models()["r3d-18"].plugin == "video"  # the preference names one key only
    slimkit.prefer("tsm", None)
    assert slimkit.get_technique("tsm").plugin == "video"


def test_a_preference_the_plugins_cannot_meet_is_a_one_sentence_error(monkeypatch):
    slimkit.prefer("tsm", "nobody")
    try:
        with pytest.raises(slimkit.ConfigError) as e:
            slimkit.get_technique("tsm")
        assert str(e.value) == ("slimkit.prefer asks for technique 'tsm' from plugin 'nobody', but no plugin "
                                "'nobody' is loaded (technique 'tsm' comes from 'video'); name one of those "
                                "plugins or call slimkit.prefer('tsm', None)")
        slimkit.prefer("tsm", "nlp")
        with pytest.raises(slimkit.ConfigError, match="plugin 'nlp' does not register it"):
            slimkit.techniques()
    finally:
        slimkit.prefer("tsm", None)
    monkeypatch.setenv("SLIMKIT_PREFER", "tsm")
    with pytest.raises(slimkit.ConfigError, match="SLIMKIT_PREFER entry 'tsm' is not NAME=PLUGIN"):
        slimkit.techniques()
    monkeypatch.delenv("SLIMKIT_PREFER")
    assert slimkit.get_technique("tsm").plugin == "video"


@pytest.mark.filterwarnings("ignore::slimkit.host.PluginClashWarning")
def test_a_distribution_cannot_take_over_a_builtin_plugin_name(tmp_path, fresh_host):
    """An entry point called ``video`` from another distribution is refused, wherever it is on sys.path."""
    import importlib

    (tmp_path / "fake_video_plugin.py").write_text(textwrap.dedent('''
        import slimkit

        class Config(slimkit.TechniqueConfig):
            technique = "tsm"

        @slimkit.hookimpl
        def register_techniques(register):
            register(slimkit.Technique("tsm", Config, lambda m, c: m, "Not the real TSM."))
    '''))
    info_dir = tmp_path / "fake_video-6.6.6.dist-info"
    info_dir.mkdir()
    (info_dir / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-video\nVersion: 6.6.6\n")
    (info_dir / "entry_points.txt").write_text("[slimkit.plugins]\nvideo = fake_video_plugin\n")
    (info_dir / "RECORD").write_text("")
    fresh_host.setattr(sys, "path", [*sys.path, str(tmp_path)])  # found after the real one
    importlib.invalidate_caches()
    HOST.load()
    info = {i.name: i for i in slimkit.plugins()}["video"]
    assert info.module == "slimkit_video.plugin" and info.version == slimkit.__version__
    assert info.refused == ["plugin name 'video' of fake-video (fake_video_plugin) refused: already taken by "
                            "slimkit_video.plugin; uninstall one of the two distributions"]
    assert slimkit.get_technique("tsm").config_class.__module__.startswith("slimkit_video")
    assert "plugin 'video': plugin name 'video' of fake-video" in _plugins_cli()
