"""The targets ``pxq test --target`` chooses from, and the one factory that builds them.

- ``local`` (``net.jepsen.local.LocalTarget``): every node a process on 127.0.0.1; faults
  kill, pause, (with libfaketime) clock and (with lazy disks) power and disk-full.
- ``netns`` (``net.jepsen.netns.NetnsTarget``): every node on a host of its own (a network
  namespace); faults kill, pause, partition, slow-link, (with libfaketime) clock and (with
  lazy disks) power and disk-full. Needs root, ``ip`` and ``nft``.

Both take lazy disks and preloaded libraries (the ``--unsafe-no-fsync`` control) alike.

Both run the same cluster file: the one given, or the embedded default with its ports from
``base_port`` and the second consumer group ``audit`` (``local_cluster_toml``), so that the
queue workload reads with two groups on either target. The target's home is ``root`` (the
run directory's ``cluster/``); the runner tears it down whatever happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from net.cluster.processes import new_cluster_id
from net.jepsen.hosts import missing_tools
from net.jepsen.local import BASE_PORT_DEFAULT, LocalTarget, local_cluster_toml
from net.jepsen.netns import NetnsTarget
from net.jepsen.target import Target

TARGETS: Final = ("local", "netns")


class BadTarget(ValueError):
    """A target this machine or these options cannot build; the message says why."""


def make_target(
    kind: str,
    root: Path,
    *,
    config_file: Path | None = None,
    base_port: int | None = None,
    clock: bool = False,
    lazy_disks: bool = False,
    preload: Sequence[Path] = (),
) -> Target:
    """The target ``kind`` with its home in ``root``, nothing started yet. ``BadTarget``
    naming the problem: an unknown kind, a netns target without root/``ip``/``nft``, a
    clock nemesis without libfaketime, a base port out of range; ``LazyFsError`` when lazy
    disks cannot mount here."""
    if kind not in TARGETS:
        raise BadTarget(f"unknown target {kind!r} (one of {', '.join(TARGETS)})")
    missing = missing_tools() if kind == "netns" else []
    if missing:
        raise BadTarget(f"the netns target needs {', '.join(missing)}")
    port = BASE_PORT_DEFAULT if base_port is None else base_port
    try:
        if kind == "local":
            return LocalTarget(
                root,
                config_file=config_file,
                base_port=port,
                clock=clock,
                lazy_disks=lazy_disks,
                preload=preload,
            )
        if config_file is not None:
            base = config_file.read_text(encoding="utf-8")
        else:
            base = local_cluster_toml(port, cluster_id=new_cluster_id())
        return NetnsTarget(
            root, base_toml=base, clock=clock, lazy_disks=lazy_disks, preload=preload
        )
    except FileNotFoundError as exc:  # libfaketime
        raise BadTarget(f"--nemesis clock: {exc}") from exc
    except ValueError as exc:  # the base port
        raise BadTarget(str(exc)) from exc
