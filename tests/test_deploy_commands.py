"""``pxq deploy destroy`` and ``upgrade`` refusals that need no host: ``destroy`` without
``--yes`` lists what it would remove on every host (spares too) and exits 2; ``upgrade`` of
a file without ``[metrics] enabled = true`` exits 2 saying why. Nothing is contacted (the
addresses are in the documentation range)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pxq.cli import main

HOSTS = [("a0", "192.0.2.10", "a"), ("b0", "192.0.2.11", "b"), ("c0", "192.0.2.12", "c")]


def cluster_file(tmp_path: Path, *, metrics: bool) -> Path:
    lines = ["[cluster]", 'name = "t"', 'id = "c-t"', ""]
    if metrics:
        lines += ["[metrics]", "enabled = true", ""]
    for name, address, zone in [*HOSTS, ("spare", "192.0.2.13", "a")]:
        lines += ["[[hosts]]", f'name = "{name}"', f'address = "{address}"']
        lines += [f'zone = "{zone}"', f'base_dir = "/srv/{name}"', ""]
    lines += ["[[stores]]", 'name = "store0"', "groups = 1", ""]
    for i, (name, _, _) in enumerate(HOSTS):
        lines += ["[[stores.replicas]]", f'node = "s{i}"', f'on = "{name}"', "port = 7101", ""]
    lines += [
        "[[topics]]",
        'name = "events"',
        "queues = 2",
        "[[topics.consumer_groups]]",
        'name = "g"',
    ]
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_destroy_without_yes_lists_and_exits_2(tmp_path: Path) -> None:
    path = cluster_file(tmp_path, metrics=False)
    result = CliRunner().invoke(main, ["deploy", "destroy", str(path)])
    assert result.exit_code == 2
    err = result.stderr
    assert "run again with --yes" in err
    assert "a0 (192.0.2.10; stops s0)" in err
    assert "spare (192.0.2.13; stops no nodes)" in err
    for name in ("a0", "b0", "c0", "spare"):
        for part in ("data", "logs", "run", "cluster", "wheelhouse", "venv-*", "current"):
            assert f"/srv/{name}/{part}\n" in err


def test_upgrade_needs_metrics(tmp_path: Path) -> None:
    path = cluster_file(tmp_path, metrics=False)
    result = CliRunner().invoke(main, ["deploy", "upgrade", str(path)])
    assert result.exit_code == 2
    assert "[metrics] enabled = true" in result.stderr
