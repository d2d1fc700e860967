"""``pxq deploy install``: pxq and every dependency as wheels built here, installed on each host
into a virtual environment of its own from those wheels alone (hosts need no package index).

A *release* names what is installed: pxq's version and a digest of the source it is built
from (``release_of``: ``0.1.0-3f2a9c0d1e4b``), so a changed tree is a new release even before
its version changes. The wheelhouse of a release is built once (``pip wheel`` of a copy of the
source tree, into ``CACHE/<release>``; ``--wheel-cache``, default ``~/.cache/pxq/wheelhouse``)
and reused.

On each host (``base_dir`` of its ``[[hosts]]`` entry)::

    BASE/wheelhouse/<release>/      the wheels, copied over SFTP
    BASE/venv-<release>/            the virtual environment (``python -m venv`` of the host's
                                    interpreter), with INSTALLED_MARK once complete
    BASE/current -> venv-<release>  the release ``up`` runs (replaced atomically)

``pip install --no-index --find-links`` with ``PIP_CONFIG_FILE=/dev/null``: neither an index
nor the host's pip configuration takes part. A host whose ``venv-<release>`` is complete is
left alone (``installed`` False in its result: "already installed"); an incomplete one (an
earlier install interrupted) is made again from scratch.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from net.deploy.ssh import DeployError, HostKeys, Session, session
from pxq.config import ClusterConfig, HostConfig

SOURCE_PARTS: Final = ("pyproject.toml", "README.md", "pxq", "sim", "net")
"""What of the source tree goes into the wheel (and into the release's digest)."""
SKIPPED_DIRS: Final = frozenset({"__pycache__"})
WHEEL_CACHE_DEFAULT: Final = Path("~/.cache/pxq/wheelhouse")
BUILD_TIMEOUT_S: Final = 900.0
INSTALL_TIMEOUT_S: Final = 900.0
INSTALLED_MARK: Final = ".pxq-installed"
CURRENT: Final = "current"
"""The link under ``base_dir`` to the release ``up`` runs."""


class BuildFailed(DeployError):
    """The wheelhouse could not be built here."""


def source_root() -> Path:
    """The source tree this pxq runs from (its ``pyproject.toml`` beside ``pxq/``)."""
    import pxq

    root = Path(pxq.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise BuildFailed(
            f"pxq runs from {root}, which is not a source tree (no pyproject.toml): "
            "pxq deploy install builds its wheels from one (a git clone of pxq)"
        )
    return root


def _source_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for part in SOURCE_PARTS:
        path = root / part
        if path.is_file():
            found.append(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
            found += [Path(dirpath, f) for f in sorted(filenames) if not f.endswith(".pyc")]
    return found


def project_version(root: Path) -> str:
    with (root / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    return str(version)


def release_of(root: Path) -> str:
    """``VERSION-DIGEST``: the project's version and the first 12 hex digits of a BLAKE2b over
    the source files' paths and contents."""
    digest = hashlib.blake2b(digest_size=16)
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return f"{project_version(root)}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Wheelhouse:
    release: str
    version: str
    path: Path
    built: bool
    """Whether this call built it (False: taken from the cache)."""

    def wheels(self) -> list[Path]:
        return sorted(self.path.glob("*.whl"))


def build_wheelhouse(cache: Path, root: Path | None = None) -> Wheelhouse:
    """The wheelhouse of the source tree's release: from ``cache`` if there, else built
    (``pip wheel`` of a copy of the tree's ``SOURCE_PARTS``, so the tree gets no build
    directory) and moved into the cache complete."""
    root = root or source_root()
    release, version = release_of(root), project_version(root)
    cache = cache.expanduser()
    target = cache / release
    if (target / INSTALLED_MARK).is_file():
        return Wheelhouse(release=release, version=version, path=target, built=False)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pxq-wheelhouse-", dir=cache) as tmp:
        source, wheels = Path(tmp, "src"), Path(tmp, release)
        source.mkdir()
        for part in SOURCE_PARTS:
            path = root / part
            if path.is_dir():
                shutil.copytree(path, source / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, source / part)
        argv = [sys.executable, "-m", "pip", "wheel", "--quiet", str(source), "-w", str(wheels)]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildFailed(f"pip wheel did not finish within {BUILD_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise BuildFailed(f"pip wheel failed: {done.stderr.strip()[-2000:]}")
        (wheels / INSTALLED_MARK).write_text(release + "\n")
        shutil.rmtree(target, ignore_errors=True)
        wheels.rename(target)
    return Wheelhouse(release=release, version=version, path=target, built=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostInstall:
    host: HostConfig
    release: str
    installed: bool
    """False: the release was there already and nothing was done."""
    elapsed_s: float
    error: str | None = None


def venv_dir(host: HostConfig, release: str) -> str:
    return f"{host.base_dir}/venv-{release}"


def current_python(host: HostConfig) -> str:
    """The interpreter of the release ``up`` runs on ``host``."""
    return f"{host.base_dir}/{CURRENT}/bin/python"


async def installed_release(s: Session) -> str | None:
    """The release ``current`` points at on the host, if complete; None otherwise."""
    base = s.host.base_dir
    done = await s.run(
        f"cd {shlex.quote(base)} 2>/dev/null && test -f {CURRENT}/{INSTALLED_MARK} "
        f'&& basename "$(readlink {CURRENT})"',
        check=False,
    )
    name = done.stdout.strip()
    if done.exit_status != 0 or not name.startswith("venv-"):
        return None
    return name.removeprefix("venv-")


def install_script(host: HostConfig, house: Wheelhouse) -> str:
    """The shell script that makes ``venv-<release>`` from the copied wheels and points
    ``current`` at it."""
    base = host.base_dir
    venv = venv_dir(host, house.release)
    wheels = f"{base}/wheelhouse/{house.release}"
    q = shlex.quote
    return "\n".join(
        [
            "set -eu",
            "export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1",
            f"rm -rf {q(venv)}",
            f"{q(host.python)} -m venv {q(venv)}",
            f"{q(venv)}/bin/python -m pip install --quiet --no-index --find-links {q(wheels)} "
            f"{q(f'pxq=={house.version}')}",
            f"{q(venv)}/bin/python -c 'import pxq.cli, net.deploy.agent'",
            f"echo {q(house.release)} > {q(venv)}/{INSTALLED_MARK}",
            f"ln -sfn {q(os.path.basename(venv))} {q(base)}/{CURRENT}.new",
            f"mv -T {q(base)}/{CURRENT}.new {q(base)}/{CURRENT}",
        ]
    )


async def install_host(host: HostConfig, keys: HostKeys, house: Wheelhouse) -> HostInstall:
    """Install ``house``'s release on ``host`` unless it is there (see the module docstring)."""
    started = time.monotonic()
    try:
        async with session(host, keys) as s:
            venv = venv_dir(host, house.release)
            there = await s.run(["test", "-f", f"{venv}/{INSTALLED_MARK}"], check=False)
            if there.exit_status == 0:
                base = host.base_dir
                await s.run(
                    f"ln -sfn {shlex.quote(os.path.basename(venv))} {shlex.quote(base)}/"
                    f"{CURRENT}.new && mv -T {shlex.quote(base)}/{CURRENT}.new "
                    f"{shlex.quote(base)}/{CURRENT}"
                )
                return HostInstall(
                    host=host,
                    release=house.release,
                    installed=False,
                    elapsed_s=time.monotonic() - started,
                )
            remote = f"{host.base_dir}/wheelhouse/{house.release}"
            await s.make_dirs(host.base_dir, remote)
            await s.put_many(house.wheels(), remote)
            await s.run(install_script(host, house), timeout_s=INSTALL_TIMEOUT_S)
    except DeployError as exc:
        return HostInstall(
            host=host,
            release=house.release,
            installed=False,
            elapsed_s=time.monotonic() - started,
            error=str(exc),
        )
    return HostInstall(
        host=host, release=house.release, installed=True, elapsed_s=time.monotonic() - started
    )


async def install_all(
    config: ClusterConfig, keys: HostKeys, house: Wheelhouse
) -> list[HostInstall]:
    """``install_host`` on every host of ``config`` in parallel, in the file's order."""
    return list(await asyncio.gather(*(install_host(h, keys, house) for h in config.hosts)))
