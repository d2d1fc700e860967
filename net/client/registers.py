"""The client side of the lock service's compare-and-set registers (``AsyncClient.register_*``).

This module owns the argument checks of the register calls (``TypeError`` / ``ValueError``
before anything is sent), the call to the master of the key's lock group, and what its
answers mean to the application:

* Reads are safe to re-send: timeouts, lost connections and redirects are retried on the
  next replica until ``call_timeout_ms``.
* A write or cas is sent until one replica may have applied it, and never again after:
  a re-sent cas that had been applied would find its own value and report a false mismatch,
  a re-sent write would write twice. So a timeout or a lost connection after the request was
  sent, or an indefinite ``LockError``, raises ``OutcomeUnknown``; redirects and connections
  that could not be set up (nothing sent) are retried.
* ``RegisterMismatch`` raises ``CasMismatch`` (definite, with the current value and version);
  a definite ``LockError`` raises ``RequestFailed`` (code ``fenced`` for a fence lock not
  held with its version, ``too_many_keys``, ``too_many_bytes``, ``bad_request``...).
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

from net.client.driver import CALL_TIMEOUT_MARGIN_S, NodePool
from net.client.types import (
    CasMismatch,
    MachineFailed,
    OutcomeUnknown,
    PermissionDenied,
    RegisterValue,
    RequestFailed,
)
from net.errors import CallOutcomeUnknown, NetError
from pxq.config import ClusterConfig
from pxq.lock.messages import (
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    CasRegister,
    LockError,
    LockRedirect,
    ReadRegister,
    RegisterMismatch,
    RegisterOk,
    WriteRegister,
    group_of_key,
)
from pxq.routing import backoff_ms

ATTEMPTS_MAX: Final = 16
"""Attempts of one register call (redirects included) before giving up."""
BACKOFF_MS: Final = 20
BACKOFF_MAX_MS: Final = 500
VERSION_MAX: Final = 2**64 - 1

Fence = tuple[str, int]
"""``(lock key, version)``: the lock that must be held with that version (fencing token)."""


def check_key(key: object, name: str = "key") -> str:
    if type(key) is not str:
        raise TypeError(f"{name}: expected str, got {type(key).__name__}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not encodable as UTF-8") from None
    if not 0 < size <= KEY_BYTES_MAX:
        raise ValueError(f"{name}: must be 1..{KEY_BYTES_MAX} UTF-8 bytes, got {size}")
    return key


def check_value(value: object, name: str = "value") -> bytes:
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if type(value) is not bytes:
        hint = " (encode str values first, e.g. text.encode())" if isinstance(value, str) else ""
        raise TypeError(f"{name}: expected bytes, got {type(value).__name__}{hint}")
    if len(value) > VALUE_BYTES_MAX:
        raise ValueError(f"{name}: {len(value)} bytes exceeds VALUE_BYTES_MAX = {VALUE_BYTES_MAX}")
    return value


def check_expected(expected: object) -> bytes | None:
    """A cas's expected value: bytes, or None for "never written"."""
    return None if expected is None else check_value(expected, "expected")


def check_fence(fence: object, key: str, groups: int) -> Fence | None:
    """``fence`` as sent; it must name a lock of the register's lock group."""
    if fence is None:
        return None
    if not (isinstance(fence, tuple) and len(fence) == 2):
        raise TypeError(f"fence: expected (lock key, version) or None, got {fence!r}")
    lock_key = check_key(fence[0], "fence lock key")
    version = fence[1]
    if type(version) is not int:
        raise TypeError(f"fence version: expected int, got {type(version).__name__}")
    if not 0 <= version <= VERSION_MAX:
        raise ValueError(f"fence version: must be 0..{VERSION_MAX}")
    if group_of_key(lock_key, groups) != group_of_key(key, groups):
        raise ValueError(
            f"fence: lock {lock_key!r} lives in another lock group than register {key!r} "
            "(keep them in one directory, e.g. 'app/lock' and 'app/value')"
        )
    return (lock_key, version)


async def register_call(
    pool: NodePool,
    config: ClusterConfig,
    rng: random.Random,
    request: ReadRegister | WriteRegister | CasRegister,
    *,
    request_timeout_ms: int,
    call_timeout_ms: int,
) -> RegisterOk:
    """Send ``request`` to the master of its key's lock group (see the module docstring);
    the ``RegisterOk`` it answered, or the error its answer means."""
    locks = config.locks
    if locks is None:
        raise RequestFailed("unavailable", "the cluster has no lock service")
    replicas = [r.node for r in locks.replicas]
    mutating = not isinstance(request, ReadRegister)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + call_timeout_ms / 1000
    target = replicas[group_of_key(request.key, locks.groups) % len(replicas)]
    timeout_s = request_timeout_ms / 1000 + CALL_TIMEOUT_MARGIN_S
    what = type(request).__name__
    last = "no attempt"
    for attempt in range(ATTEMPTS_MAX):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            answer = await pool.call(target, request, min(timeout_s, remaining))
        except (CallOutcomeUnknown, TimeoutError) as exc:
            if mutating:
                raise OutcomeUnknown(f"{what} to {target}: {exc}") from None
            last = f"{target}: {exc}"
            target = replicas[(replicas.index(target) + 1) % len(replicas)]
        except (NetError, OSError) as exc:  # not sent
            last = f"{target}: {exc}"
            target = replicas[(replicas.index(target) + 1) % len(replicas)]
        else:
            match answer:
                case RegisterOk():
                    return answer
                case RegisterMismatch(key=key, value=value, version=version):
                    raise CasMismatch(key, value, version)
                case LockRedirect(master=master) if master in replicas and master != target:
                    last = f"{target} redirected (master {master})"
                    target = master
                    continue
                case LockRedirect():
                    last = f"{target} redirected (no master known)"
                    target = replicas[(replicas.index(target) + 1) % len(replicas)]
                case LockError(code="permission_denied", message=message):
                    raise PermissionDenied(message)
                case LockError(definite=True, code="overloaded", message=message):
                    last = f"overloaded: {message}"
                case LockError(definite=True, code=code, message=message):
                    raise RequestFailed(code, message)
                case LockError(code=code, message=message):
                    if mutating:
                        raise OutcomeUnknown(f"{what}: {code}: {message}")
                    last = f"{code}: {message}"
                case _:
                    raise MachineFailed(f"unexpected answer to {what}: {answer!r}")
        delay = backoff_ms(rng, attempt + 1, BACKOFF_MS, BACKOFF_MAX_MS)
        await asyncio.sleep(min(delay / 1000, max(0.0, deadline - loop.time())))
    raise RequestFailed("unavailable", f"{what} gave up: {last}")


def register_value(answer: RegisterOk) -> RegisterValue:
    return RegisterValue(value=answer.value, version=answer.version)
