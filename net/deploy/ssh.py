"""SSH to the hosts of a deployment: logging in with verified host keys, running commands with
a bounded time, copying and writing files.

Host keys are always verified against a known_hosts file (``--known-hosts``, default
``~/.ssh/known_hosts``); verification is never turned off. ``HostKeys(accept_new=True)``
(``--accept-new-host-keys``) behaves like OpenSSH's ``StrictHostKeyChecking accept-new``: a
host with no entry has its key fetched (``asyncssh.get_server_host_key``) and appended, and
the login then verifies against the file as always; a host whose entry differs is refused.
Without it, a host with no entry is refused too (``HostKeyUnknown``).

A host logs in as its ``ssh_user`` on its ``ssh_port``; with an ``ssh_key``, that key alone
(no agent), else asyncssh's defaults (the agent, ``~/.ssh/id_*``). Every error is a
``DeployError`` whose message starts with the host's name and address and names the problem:
unreachable, authentication failed, host key unknown or mismatched, a command that failed or
ran out of time.

Secrets (private keys, the cluster file) go to a host with ``Session.write_file`` (created
0600 under a temporary name, then renamed), never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from net.errors import NetError
from net.files import private_dir
from pxq.config import HostConfig

with warnings.catch_warnings():
    # asyncssh warns on import that cryptography deprecates DSA (it supports DSA keys).
    warnings.simplefilter("ignore")
    import asyncssh

CONNECT_TIMEOUT_S: Final = 10.0
COMMAND_TIMEOUT_S: Final = 60.0
KNOWN_HOSTS_DEFAULT: Final = Path("~/.ssh/known_hosts")
OUTPUT_TAIL_CHARS: Final = 2000
"""How much of a failed command's stderr an error carries."""


class DeployError(NetError):
    """A deployment step failed on a host; the message names the host and the problem."""


class HostUnreachable(DeployError):
    """No SSH connection could be made (refused, timed out, no route, name unknown)."""


class AuthFailed(DeployError):
    """The host refused the login (user or key)."""


class HostKeyUnknown(DeployError):
    """The known_hosts file has no entry for the host (and new keys are not accepted)."""


class HostKeyMismatch(DeployError):
    """The host's key differs from its known_hosts entry."""


class CommandFailed(DeployError):
    """A command exited non-zero or did not finish in time."""


def describe(host: HostConfig) -> str:
    """``host`` as errors name it: ``h0 (10.231.0.2:22)``."""
    return f"{host.name} ({host.address}:{host.ssh_port})"


def known_hosts_name(host: HostConfig) -> str:
    """The host's name in a known_hosts file, as OpenSSH writes it (``[addr]:port`` off 22)."""
    if host.ssh_port == 22:
        return host.address
    return f"[{host.address}]:{host.ssh_port}"


class HostKeys:
    """The known_hosts file every login verifies against, and whether unknown hosts get their
    key appended first (``accept_new``). One instance is shared by the parallel logins of a
    command: appends are serialised."""

    def __init__(self, path: Path, *, accept_new: bool = False) -> None:
        self.path = path.expanduser()
        self.accept_new = accept_new
        self.added: list[str] = []
        """The hosts whose key was appended (names, in the order they were)."""
        self._lock = asyncio.Lock()

    def has_entry(self, host: HostConfig) -> bool:
        """Whether the file has a key (or a revocation) for ``host``."""
        if not self.path.is_file():
            return False
        try:
            known = asyncssh.read_known_hosts(str(self.path))
        except (OSError, ValueError) as exc:
            raise HostKeyUnknown(f"{describe(host)}: cannot read {self.path}: {exc}") from exc
        keys, cas, revoked, certs, ca_certs, _, _ = known.match(host.address, "", host.ssh_port)
        return bool(keys or cas or revoked or certs or ca_certs)

    async def prepare(self, host: HostConfig, timeout_s: float) -> None:
        """With ``accept_new``, fetch the key of a host the file has no entry for and append
        it; otherwise nothing (the login then refuses an unknown host)."""
        if not self.accept_new:
            return
        async with self._lock:
            if self.has_entry(host):
                return
            try:
                key = await asyncio.wait_for(
                    asyncssh.get_server_host_key(host.address, host.ssh_port), timeout_s
                )
            except (OSError, TimeoutError, asyncssh.Error) as exc:
                raise HostUnreachable(f"{describe(host)}: unreachable: {_why(exc)}") from exc
            if key is None:
                raise HostKeyUnknown(f"{describe(host)}: the server presented no host key")
            line = f"{known_hosts_name(host)} {key.export_public_key('openssh').decode().strip()}"
            private_dir(self.path.parent)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
            self.added.append(host.name)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.strip()


@dataclass(frozen=True, slots=True)
class Completed:
    """A command that ran to its end."""

    exit_status: int
    stdout: str
    stderr: str


class Session:
    """One login to one host."""

    def __init__(self, host: HostConfig, conn: asyncssh.SSHClientConnection) -> None:
        self.host = host
        self.conn = conn

    async def run(
        self,
        argv: Sequence[str] | str,
        *,
        timeout_s: float = COMMAND_TIMEOUT_S,
        check: bool = True,
        stdin: str | None = None,
    ) -> Completed:
        """Run ``argv`` (a list, quoted for the remote shell; or a shell command line) and
        wait at most ``timeout_s``. With ``check``, a non-zero exit raises ``CommandFailed``
        with its stderr's tail."""
        command = argv if isinstance(argv, str) else shlex.join(argv)
        try:
            result = await asyncio.wait_for(
                self.conn.run(command, check=False, input=stdin), timeout_s
            )
        except TimeoutError as exc:
            raise CommandFailed(
                f"{describe(self.host)}: `{_short(command)}` did not finish within {timeout_s} s"
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(
                f"{describe(self.host)}: connection lost running `{_short(command)}`: {_why(exc)}"
            ) from exc
        status = result.exit_status if result.exit_status is not None else -1
        done = Completed(status, _text(result.stdout), _text(result.stderr))
        if check and status != 0:
            tail = done.stderr.strip()[-OUTPUT_TAIL_CHARS:] or done.stdout.strip()[-200:]
            raise CommandFailed(
                f"{describe(self.host)}: `{_short(command)}` exited {status}: {tail or '(no output)'}"
            )
        return done

    async def put(self, local: Path, remote: str, *, recurse: bool = False) -> None:
        """Copy the file (or, with ``recurse``, the directory) ``local`` to ``remote``."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote, recurse=recurse)
        except (OSError, asyncssh.Error) as exc:
            raise DeployError(
                f"{describe(self.host)}: copying {local} to {remote}: {_why(exc)}"
            ) from exc

    async def put_many(self, files: Sequence[Path], remote_dir: str) -> None:
        """Copy ``files`` into the existing directory ``remote_dir`` (one SFTP session)."""
        if not files:
            return
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put([str(f) for f in files], remote_dir)
        except (OSError, asyncssh.Error) as exc:
            raise DeployError(
                f"{describe(self.host)}: copying {len(files)} files to {remote_dir}: {_why(exc)}"
            ) from exc

    async def write_file(self, remote: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``remote`` atomically with permissions ``mode`` (0600: nothing else may read
        it at any moment): created under a temporary name with that mode, then renamed."""
        temporary = f"{remote}.tmp-{os.getpid()}"
        try:
            async with self.conn.start_sftp_client() as sftp:
                attrs = asyncssh.SFTPAttrs(permissions=mode)
                async with sftp.open(temporary, "wb", attrs) as f:
                    await f.write(data)
                await sftp.chmod(temporary, mode)  # the umask may have narrowed it
                await sftp.posix_rename(temporary, remote)
        except (OSError, asyncssh.Error) as exc:
            raise DeployError(f"{describe(self.host)}: writing {remote}: {_why(exc)}") from exc

    async def read_file(self, remote: str) -> bytes | None:
        """The content of ``remote``; None if it does not exist."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                if not await sftp.exists(remote):
                    return None
                async with sftp.open(remote, "rb") as f:
                    data = await f.read()
        except (OSError, asyncssh.Error) as exc:
            raise DeployError(f"{describe(self.host)}: reading {remote}: {_why(exc)}") from exc
        return data if isinstance(data, bytes) else data.encode()

    async def make_dirs(self, *paths: str) -> None:
        """Create ``paths`` (and their parents) if missing; the last level is made 0700."""
        await self.run(["mkdir", "-p", "-m", "0700", "--", *paths])

    async def close(self) -> None:
        self.conn.close()
        with contextlib.suppress(Exception):
            await self.conn.wait_closed()


def _text(out: object) -> str:
    if isinstance(out, bytes):
        return out.decode(errors="replace")
    return out if isinstance(out, str) else ""


def _short(command: str) -> str:
    return command if len(command) <= 120 else command[:117] + "..."


async def connect(
    host: HostConfig, keys: HostKeys, *, timeout_s: float = CONNECT_TIMEOUT_S
) -> Session:
    """Log into ``host``, its key verified against ``keys`` (see the module docstring)."""
    await keys.prepare(host, timeout_s)
    if not keys.path.is_file():
        raise HostKeyUnknown(
            f"{describe(host)}: host key unknown: there is no known_hosts file {keys.path} "
            f"(pass --known-hosts FILE, or --accept-new-host-keys to make it)"
        )
    options: dict[str, object] = {}
    if host.ssh_key is not None:
        options["client_keys"] = [host.ssh_key]
        options["agent_path"] = None
    try:
        conn = await asyncssh.connect(
            host.address,
            port=host.ssh_port,
            username=host.ssh_user,
            known_hosts=str(keys.path),
            connect_timeout=timeout_s,
            **options,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        if not keys.has_entry(host):
            raise HostKeyUnknown(
                f"{describe(host)}: host key unknown: {keys.path} has no entry for "
                f"{known_hosts_name(host)} (add it, or pass --accept-new-host-keys to "
                f"accept the key it presents now)"
            ) from exc
        raise HostKeyMismatch(
            f"{describe(host)}: host key mismatch: the key it presents is not the one "
            f"{keys.path} has for {known_hosts_name(host)} ({_why(exc)}); if the host was "
            f"reinstalled, remove its old entry (ssh-keygen -R); otherwise someone may be "
            f"in the middle"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        key = host.ssh_key or "the agent's and ~/.ssh's keys"
        raise AuthFailed(
            f"{describe(host)}: authentication failed as {host.ssh_user} with {key}"
        ) from exc
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise HostUnreachable(f"{describe(host)}: unreachable: {_why(exc)}") from exc
    return Session(host, conn)


@contextlib.asynccontextmanager
async def session(
    host: HostConfig, keys: HostKeys, *, timeout_s: float = CONNECT_TIMEOUT_S
) -> AsyncIterator[Session]:
    """``connect``, closed on the way out."""
    s = await connect(host, keys, timeout_s=timeout_s)
    try:
        yield s
    finally:
        await s.close()
