"""Technique configs: validation, serialisation, dispatch, and one round trip per registered technique."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Union

import pytest

import slimkit
from slimkit.config import TechniqueConfig


@dataclass
class DemoConfig(TechniqueConfig):
    technique: ClassVar[str] = "demo"
    version: ClassVar[int] = 2
    n: int = 8
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    targets: Optional[Union[list[str], str]] = None
    sizes: tuple[int, ...] = (3, 7)
    flag: bool = False

    def validate(self):
        if not 0 < self.ratio <= 1:
            raise slimkit.ConfigError(f"ratio must be in (0, 1], got {self.ratio}")


def test_types_are_enforced_with_one_clear_sentence():
    assert DemoConfig(n=3, ratio=1).ratio == 1.0  # int accepted for float
    with pytest.raises(slimkit.ConfigError, match=r"option 'n' must be int, got str 'x'"):
        DemoConfig(n="x")
    with pytest.raises(slimkit.ConfigError, match=r"option 'n' must be int, got bool"):
        DemoConfig(n=True)
    with pytest.raises(slimkit.ConfigError, match=r"option 'mode' must be one of 'a' or 'b', got 'c'"):
        DemoConfig(mode="c")
    with pytest.raises(slimkit.ConfigError, match=r"ratio must be in \(0, 1\]"):
        DemoConfig(ratio=2.0)
    assert DemoConfig(targets="conv.*").targets == "conv.*"
    assert DemoConfig(targets=["a", "b"]).targets == ["a", "b"]
    assert DemoConfig(sizes=[1, 2]).sizes == (1, 2)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(slimkit.ConfigError) as e:
        DemoConfig.from_options(nn=3)
    assert "unknown option 'nn' for technique 'demo'" in str(e.value)
    assert "'n'" in str(e.value) and "'ratio'" in str(e.value)


def test_round_trip_and_versions(tmp_path):
    cfg = DemoConfig(n=4, sizes=(1, 2, 3), targets=["x"])
    d = cfg.to_dict()
    assert d["type"] == "demo" and d["version"] == 2
    assert json.loads(json.dumps(d)) == d
    assert DemoConfig.from_dict(d) == cfg
    cfg.save_pretrained(tmp_path)
    assert DemoConfig.from_pretrained(tmp_path) == cfg
    newer = {**d, "version": 3}
    with pytest.raises(slimkit.ConfigError, match="newer than the 2 this slimkit reads; upgrade slimkit"):
        DemoConfig.from_dict(newer)
    with pytest.raises(slimkit.ConfigError, match="cannot be read as a 'demo' config"):
        DemoConfig.from_dict({**d, "type": "other"})


def test_load_config_refuses_unknown_types_and_bad_files(tmp_path):
    with pytest.raises(slimkit.ConfigError, match="unknown config type 'nope'; known types are"):
        slimkit.load_config({"type": "nope", "version": 1})
    with pytest.raises(slimkit.ConfigError, match="no slimkit config at"):
        slimkit.load_config(tmp_path / "missing")
    (tmp_path / "slimkit_config.json").write_text("{not json")
    with pytest.raises(slimkit.ConfigError, match="is not valid JSON"):
        slimkit.load_config(tmp_path)


def test_unknown_technique_lists_known_ones():
    with pytest.raises(slimkit.UnknownTechniqueError) as e:
        slimkit.apply(object(), "does-not-exist")
    msg = str(e.value)
    assert msg.startswith("unknown technique 'does-not-exist'; known techniques are")
    for name in slimkit.techniques():
        assert repr(name) in msg


TECHNIQUES = sorted(slimkit.techniques())


@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_technique_config_round_trips(name, tmp_path):
    tech = slimkit.techniques()[name]
    cfg = tech.config_class()
    d = cfg.to_dict()
    assert d["type"] == name and isinstance(d["version"], int)
    assert json.loads(json.dumps(d)) == d, "config must be JSON-serialisable"
    assert slimkit.load_config(d) == cfg
    cfg.save_pretrained(tmp_path)
    again = slimkit.load_config(tmp_path)
    assert type(again) is tech.config_class and again == cfg
    assert again.to_dict() == d
    with pytest.raises(slimkit.ConfigError, match="newer than"):
        slimkit.load_config({**d, "version": d["version"] + 1})
    with pytest.raises(slimkit.ConfigError, match=f"unknown option 'no_such_option' for technique '{name}'"):
        slimkit.make_config(name, no_such_option=1)
    first = tech.config_class.field_names()[0]
    with pytest.raises(slimkit.ConfigError, match=f"option '{first}' must be"):
        slimkit.make_config(name, **{first: object()})


def test_registry_lists_every_issue_technique_once_implemented():
    from slimkit.registry import registry

    known = {"tsm", "r2plus1d", "spatten", "progressive-quant", "lsra", "hat"}
    assert set(registry().techniques) <= known
