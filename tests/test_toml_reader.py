"""The strict TOML reader shared by cluster files and scenario files: key-path errors for wrong
types, missing keys and unknown keys, worded alike through both callers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pxq.config import ConfigError, load_config, loads_config
from pxq.toml_reader import TomlError, TomlTable, parse, read_text
from sim.scenario import ScenarioError
from sim.scenario import load as load_scenario
from sim.scenario import loads as loads_scenario


def table(text: str, allowed: tuple[str, ...] | None = None) -> TomlTable:
    return parse(text, file="f.toml", error=TomlError, allowed=allowed)


def error_of(text: str, read: str, allowed: tuple[str, ...] | None = None) -> TomlError:
    """The error raised by reading the key path ``read`` ("a.b.c": tables a and b, then c)."""
    with pytest.raises(TomlError) as info:
        t = table(text, allowed)
        *tables, key = read.split(".")
        for name in tables:
            t = t.table(name)
        t.integer(key)
        t.done()
    return info.value


def test_a_wrong_type_names_the_key_path_and_both_kinds() -> None:
    e = error_of("[a.b]\nc = 'x'\n", "a.b.c")
    assert (e.file, e.key_path, e.reason) == (
        "f.toml",
        "a.b.c",
        "expected an integer, got a string",
    )
    assert str(e) == "f.toml: a.b.c: expected an integer, got a string"


def test_a_missing_key_is_reported_at_its_path() -> None:
    e = error_of("[a.b]\n", "a.b.c")
    assert (e.key_path, e.reason) == ("a.b.c", "missing")


def test_a_table_where_a_value_belongs_is_refused() -> None:
    e = error_of("a = 3\n", "a.c")
    assert (e.key_path, e.reason) == ("a", "expected a table, got an integer")


def test_unknown_keys_are_refused_after_reading_listing_what_was_read() -> None:
    e = error_of("[a]\nc = 1\nd = 2\n", "a.c")
    assert (e.key_path, e.reason) == ("a.d", "unknown key (allowed: c)")


def test_unknown_keys_are_refused_up_front_when_the_keys_are_declared() -> None:
    # Up front: the misspelt key is reported, not the spelling it stands for as missing.
    with pytest.raises(TomlError) as info:
        table("nmae = 'x'\n", allowed=("name", "size")).string("name")
    assert (info.value.key_path, info.value.reason) == (
        "nmae",
        "unknown key (allowed: name, size)",
    )


def test_bounds_choices_and_array_items_name_the_key() -> None:
    t = table("n = 0\nmode = 'fast'\nxs = [1, -2]\nflag = 1\ntabs = 3\n")
    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: t.integer("n", lo=1), "n", "must be >= 1, got 0"),
        (lambda: t.integer("n", hi=-1), "n", "must be <= -1, got 0"),
        (
            lambda: t.choice("mode", ("slow", "safe")),
            "mode",
            "must be one of slow, safe; got 'fast'",
        ),
        (lambda: t.integers("xs", lo=0), "xs[1]", "must be >= 0, got -2"),
        (lambda: t.boolean("flag", False), "flag", "expected a boolean, got an integer"),
        (
            lambda: t.tables("tabs"),
            "tabs",
            "expected an array of tables ([[tabs]]), got an integer",
        ),
    ]
    for read, key_path, reason in cases:
        with pytest.raises(TomlError) as info:
            read()
        assert (info.value.key_path, info.value.reason) == (key_path, reason)


def test_absent_keys_give_their_defaults() -> None:
    t = table("")
    assert t.integer("n", 7) == 7 and t.string("s", None) is None
    assert t.choice("mode", ("slow", "safe"), "safe") == "safe"
    assert t.boolean("flag", True) and t.integers("xs") == () and t.tables("tabs") == []
    t.done()


def test_unreadable_and_invalid_files_are_errors_of_the_callers_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as config_error:
        read_text(tmp_path / "absent.toml", error=ConfigError)
    assert config_error.value.key_path == "-" and "cannot read" in config_error.value.reason
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"name = '\xe9'\n")
    with pytest.raises(ScenarioError) as scenario_error:
        read_text(bad, error=ScenarioError)
    assert scenario_error.value.key_path == "" and "not UTF-8" in scenario_error.value.reason
    assert str(scenario_error.value).startswith(f"{bad}: not UTF-8")


# -- the same wording through both callers ------------------------------------------------------

CLUSTER = """
[cluster]
name = "c"
[[stores]]
name = "s"
groups = 1
[[stores.replicas]]
node = "n0"
port = 7000
"""
SCENARIO = 'version = 1\nname = "s"\nduration_ms = 1000\n[workload]\nclients = 2\n'


@pytest.mark.parametrize(
    ("cluster", "scenario", "reason"),
    [
        (
            CLUSTER.replace("groups = 1", "groups = '1'"),
            SCENARIO.replace("clients = 2", "clients = '2'"),
            "expected an integer, got a string",
        ),
        (
            CLUSTER.replace("groups = 1\n", ""),
            SCENARIO.replace("duration_ms = 1000\n", ""),
            "missing",
        ),
        (
            CLUSTER.replace("groups = 1", "groups = 1\ncolour = 1"),
            SCENARIO.replace("clients = 2", "clients = 2\ncolour = 1"),
            "unknown key (allowed: ",
        ),
    ],
)
def test_cluster_and_scenario_files_report_the_same_faults_alike(
    cluster: str, scenario: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as config_error:
        loads_config(cluster, file="c.toml")
    with pytest.raises(ScenarioError) as scenario_error:
        loads_scenario(scenario, file="s.toml")
    assert config_error.value.reason.startswith(reason), config_error.value
    assert scenario_error.value.reason.startswith(reason), scenario_error.value
    assert config_error.value.key_path.startswith("stores[0].")
    assert scenario_error.value.key_path in ("workload.clients", "duration_ms", "workload.colour")


def test_both_loaders_read_files_through_the_reader(tmp_path: Path) -> None:
    cluster, scenario = tmp_path / "c.toml", tmp_path / "s.toml"
    cluster.write_text(CLUSTER)
    scenario.write_text(SCENARIO)
    assert load_config(cluster).stores[0].name == "s"
    assert load_scenario(scenario).workload.clients == 2
    for loader, error in ((load_config, ConfigError), (load_scenario, ScenarioError)):
        with pytest.raises(error, match="cannot read"):
            loader(tmp_path / "absent.toml")
