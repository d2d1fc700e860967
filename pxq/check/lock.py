"""The lock service's sequential semantics and the checkers of lock-service histories:
linearizability under leases, fencing tokens, and liveness.

The history format is the one ``sim/lock_workload.py`` records (see its docstring):
``f`` = ``acquire`` / ``renew`` / ``release`` / ``read`` with ``key``, ``holder``, ``version``,
``lease_ms`` on the invoke and ``outcome``, ``holder``, ``version``, ``expiry_ms``, ``at_ms`` on
an ok completion; the op's ``value`` is the lock value (``value_text``): on the invoke, the
value an acquire sets or a renew sets (None: a renew keeping it), on an ok completion the
entry's value in the answer (a history without values reads as ``""`` throughout). ``f`` =
``list`` carries ``prefix``, ``start_after`` on the invoke and ``entries`` (``[key, holder,
version, expiry_ms, value]`` each), ``more``, ``at_ms`` on an ok completion; the
linearizability check reads it as one read per key of the directory (``lease_operations``).

``lock_transition`` is the one statement of the service's rules for the checkers (the state
machine, ``pxq.lock.sm``, applies the same; a differential test keeps them in agreement), and
``LeaseLockModel`` is the one lock model of the linearizability checker: it keeps the expiry
of a grant whose apply time is unknown as an interval that later answers narrow, so an
operation of unknown outcome is never forced to a guessed time (it agreed with a brute-force
search on ~2,200 random small histories).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from pxq.check.history import JSON, HistoryError, Op, pair_ops
from pxq.check.linear import (
    UNKNOWN,
    Operation,
    check_linearizable,
)
from pxq.check.result import CheckResult

LINEARIZABLE_STEPS_MAX: Final = 10_000_000
"""Model steps the linearizability search of one key (partition) may take before that key is
unknown (3-5 µs each). The hardest histories the swarm has produced (``swarm-lock`` seeds 584,
825 and 1935) take 1.3-2.5 M steps over all their keys (``docs/checking.md``, "How fast")."""
LOCK_FS: Final = ("acquire", "renew", "release", "read")
LOCK_OUTCOMES: Final = ("ok", "denied")
"""The ``outcome`` of an ``ok`` completion: the request was granted, or refused."""
LIST_F: Final = "list"
OFFENDERS_MAX: Final = 10

# --------------------------------------------------------------------------------------------
# Sequential semantics

LockInput: TypeAlias = tuple[str, str, str, int | None, int, int | None, str | None]
"""``(op, key, holder, version, lease_ms, at_ms, value)``:

* ``("acquire", key, holder, expected_version or None, lease_ms, at_ms, value)``
* ``("renew", key, holder, version, lease_ms, at_ms, value or None to keep it)``
* ``("release", key, holder, version, 0, at_ms, None)``
* ``("read", key, "", None, 0, at_ms, None)``

``at_ms`` is the time the lock state machine applied the command at (the proposer's time,
raised to the group's latest: ``LockOk.at_ms`` / ``LockDenied.at_ms``), None when unknown (an
operation of unknown outcome: ``LeaseLockModel`` keeps it open). Values are text
(``value_text``).
"""

LockOutput: TypeAlias = tuple[bool, str, int | None, int, str]
"""``(ok, holder, version, expiry_ms, value)``: for a success, the entry after the command (a
grant or renewal: the requester, its fencing token, lease expiry and value; a release: ``""``,
the version, 0, ``""``; a read: the entry as it stands); for a denial, the entry that caused
it. A free or expired entry reads as ``("", version, 0, "")``, version 0 for a key never
granted. A ``version`` of None in an *expected* output matches any version (a listing shows
that a key is free, not its version)."""

LockState: TypeAlias = tuple[str, int, int, int, str]
"""``(holder, version, expiry_ms, time_ms, value)`` of one key; holder ``""`` when free."""


def value_text(value: bytes) -> str:
    """A lock value as history text: one character per byte (Latin-1), so the mapping is
    one-to-one and ASCII values read as themselves."""
    return value.decode("latin-1")


def lock_transition(state: LockState, input: LockInput) -> tuple[LockState, LockOutput]:
    """The lock service's sequential semantics for one key (``pxq.lock.sm`` applies the same
    rules; ``tests/test_lock_sm.py`` checks that they agree).

    At time ``t`` an entry is *held* iff it has a holder and ``t < expiry``. Versions (fencing
    tokens) are per key, start at 1 and grow by one at every grant to a new owner, never
    reused: a free key keeps its last version as a floor. A grant sets the value, a renewal
    replaces it when it carries one, a release clears it.
    """
    op, _, who, version, lease_ms, at_ms, new_value = input
    holder, current, expiry, time_ms, value = state
    t = time_ms if at_ms is None else max(at_ms, time_ms)
    held = holder != "" and t < expiry
    view: LockOutput = (
        (True, holder, current, expiry, value) if held else (True, "", current, 0, "")
    )
    if op == "read":
        return (holder, current, expiry, t, value), view
    if op == "acquire":
        granted = new_value or ""
        if held and holder == who:
            return (who, current, t + lease_ms, t, granted), (
                True,
                who,
                current,
                t + lease_ms,
                granted,
            )
        if not held or version == current:
            return (who, current + 1, t + lease_ms, t, granted), (
                True,
                who,
                current + 1,
                t + lease_ms,
                granted,
            )
        return (holder, current, expiry, t, value), (False, *view[1:])
    if op == "renew":
        if held and holder == who and version == current:
            kept = value if new_value is None else new_value
            return (who, current, t + lease_ms, t, kept), (True, who, current, t + lease_ms, kept)
        return (holder, current, expiry, t, value), (False, *view[1:])
    if op == "release":
        if version == current and (not held or holder == who):
            return ("", current, 0, t, ""), (True, "", current, 0, "")
        return (holder, current, expiry, t, value), (False, *view[1:])
    raise ValueError(f"unknown lock operation {op!r}")


def output_matches(result: LockOutput, expected: Any) -> bool:
    """Whether ``result`` is the answer ``expected`` (a None version in it matches any)."""
    if result == expected:
        return True
    return (
        isinstance(expected, tuple)
        and len(expected) == 5
        and expected[2] is None
        and result[:2] == expected[:2]
        and result[3:] == expected[3:]
    )


# --------------------------------------------------------------------------------------------
# From the history


def _text(v: JSON) -> str:
    return v if isinstance(v, str) else ""


def lock_from_history(invoke: Op, completion: Op | None) -> tuple[Any, Any] | None:
    """Converter (``pxq.check.linear.Converter``) from this workload's history to
    ``LockInput`` / ``LockOutput`` (the output is ignored for an unknown outcome). A listing
    is not converted here (it is several reads: ``lease_operations``)."""
    if invoke.f not in LOCK_FS:
        return None
    done = completion is not None and completion.type == "ok"
    version = invoke.get("version")
    lease = invoke.get("lease_ms")
    at = completion.get("at_ms") if done and completion is not None else None
    if not isinstance(invoke.get("key"), str):
        raise HistoryError(f"op {invoke.index}: {invoke.f} without a string key field")
    if done and completion is not None:
        if completion.get("outcome") not in LOCK_OUTCOMES:
            raise HistoryError(
                f"op {completion.index}: outcome {completion.get('outcome')!r} is not one of "
                f"{list(LOCK_OUTCOMES)}"
            )
        if not isinstance(at, int):
            raise HistoryError(f"op {completion.index}: {invoke.f} ok without an int at_ms")
    value: str | None = None
    if invoke.f == "acquire":
        value = _text(invoke.value)
    elif invoke.f == "renew" and isinstance(invoke.value, str):
        value = invoke.value
    inp: LockInput = (
        invoke.f,
        str(invoke.get("key")),
        str(invoke.get("holder") or ""),
        version if isinstance(version, int) else None,
        lease if isinstance(lease, int) else 0,
        at if isinstance(at, int) else None,
        value,
    )
    if not done or completion is None:
        return inp, None
    out = (
        completion.get("outcome") == "ok",
        completion.get("holder"),
        completion.get("version"),
        completion.get("expiry_ms"),
        _text(completion.value),
    )
    return inp, out


def _directory(key: str) -> str:
    cut = key.rfind("/")
    return key if cut < 0 else key[: cut + 1]


def _list_reads(invoke: Op, completion: Op, keys_of_dir: dict[str, set[str]]) -> list[Operation]:
    """An ok listing as reads at its ``at_ms``: each entry listed is a read of its key that
    saw it; each other key of the directory the history names, in the range the listing
    covered, a read that saw it free (any version)."""
    prefix = str(invoke.get("prefix"))
    after = _text(invoke.get("start_after"))
    at = completion.get("at_ms")
    raw = completion.get("entries")
    if not isinstance(at, int) or not isinstance(raw, list):
        raise ValueError(f"op {completion.index}: a list completion needs at_ms and entries")
    seen: dict[str, LockOutput] = {}
    for e in raw:
        if not (isinstance(e, list) and len(e) == 5):
            raise ValueError(f"op {completion.index}: malformed list entry {e!r}")
        key, holder, version, expiry, value = e
        if not (
            isinstance(key, str)
            and isinstance(holder, str)
            and isinstance(version, int)
            and isinstance(expiry, int)
        ):
            raise ValueError(f"op {completion.index}: malformed list entry {e!r}")
        seen[key] = (True, holder, version, expiry, _text(value))
    last = max(seen) if seen else None
    if completion.get("more") is True:
        if last is None:
            return []
        covered = [k for k in keys_of_dir.get(prefix, ()) if after < k <= last]
    else:
        covered = [k for k in keys_of_dir.get(prefix, ()) if after < k]
    free: LockOutput = (True, "", None, 0, "")
    out = []
    for key in sorted(set(covered) | set(seen)):
        out.append(
            Operation(
                call_index=invoke.index,
                return_index=completion.index,
                process=invoke.process,
                input=("read", key, "", None, 0, at, None),
                output=seen.get(key, free),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# The model

_INF: Final = 1 << 62

LeaseEntry: TypeAlias = tuple[str, int, int, int, int, int, str]
"""``(holder, version, expiry_lo, expiry_hi, time_ms, lease_ms, value)``: the key's entry with
its expiry known to lie in ``[expiry_lo, expiry_hi]`` (equal when known exactly), the latest
apply time, while the expiry is not exact the lease of the grant of unknown time that set it
(that grant's apply time is ``expiry - lease_ms``), and the entry's value."""
LeaseState: TypeAlias = LeaseEntry
"""The state of one key: its entry."""
LeaseInput: TypeAlias = tuple[
    str, str, str, int | None, int, int | None, str | None, str | None, int
]
"""A ``LockInput``, then ``side`` and ``alt``: an info acquire is offered to the search as two
alternatives, ``side = "held"`` (applied while the current lease is in force) and ``"free"``
(applied after it ended), with ``alt`` as their ``Operation.choice``, so at most one of them
applies. ``side`` None and ``alt`` -1 for every other operation."""


class LeaseLockModel:
    """The lock service per key (``lock_transition``), partitioned per key, with operations
    of unknown outcome placed at an unknown time. Inputs ``LeaseInput`` (``lease_alternatives``
    turns ``LockInput`` operations into them), outputs ``LockOutput``.

    The state carries the key's latest apply time, so a linearization that would apply
    commands against the order of their ``at_ms`` is refused (the log applies them in order
    and time never goes back in it).

    An ``info`` operation's apply time is unknown: it is only bounded below by the latest
    apply time before it, and above by the apply time of any operation linearized after it.
    Applying it at the lower bound would make the expiry of a lease it granted too early, and
    a later denial naming the real expiry would then fail to linearize (a false alarm most
    partitions of a faulty run produce). Here a grant of unknown time ``t`` leaves the expiry
    as an interval ``[t + lease, ∞)``; later operations of known time ``a`` narrow it: to at
    most ``a + lease`` (the grant was applied before them), above ``a`` when the answer shows
    the holder's lease in force, exactly when a denial or read names it, and to at most ``a``
    when the answer shows the lease over.

    Which side of the current lease an info operation falls on is a choice: an info acquire
    comes as two alternatives (``LeaseInput``) and the search picks; an info renew or release
    is applied on the side where it changes the state (leaving it out covers the side where it
    is refused, and a release frees the key on either side).

    Every accepted linearization corresponds to concrete apply times and expiries consistent
    with all outputs, so the model is sound: it accepts no history that no sequential
    execution of the lock service explains.
    """

    __slots__ = ("name", "owners")

    def __init__(self, owners: dict[tuple[str, int], str] | None = None) -> None:
        self.name = "lock-lease"
        self.owners = owners or {}
        """(key, version) -> the holder some completed answer names for it: a version is
        granted once, so a linearization that grants it to anyone else is cut at once instead
        of where the answer is reached (pruning only; it accepts nothing more)."""

    def init(self) -> LeaseState:
        return ("", 0, 0, 0, 0, 0, "")

    def _owner_ok(self, key: str, entry: LeaseEntry, before: LeaseEntry) -> bool:
        if entry[1] == before[1] or entry[0] == "":
            return True
        owner = self.owners.get((key, entry[1]))
        return owner is None or owner == entry[0]

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Any]:
        entry = state
        holder, version, lo, hi, time_ms, lease, value = entry
        at, side, alt = input[5], input[7], input[8]
        lock_input: LockInput = input[:7]
        if at is not None:
            if at < time_ms:
                return False, state
            if lo < hi and at + lease < hi:  # the unknown grant came before this command
                if at + lease < lo:
                    return False, state
                entry = (holder, version, lo, at + lease, time_ms, lease, value)
        if alt >= 0:
            if side == "held" and holder == "":
                return False, state
            nxt = _lease_step(entry, lock_input, output, held=side == "held")
            if nxt is None or not nxt[1] or not self._owner_ok(input[1], nxt[0], entry):
                return False, state  # refused on this side: the same as leaving it out
            return True, nxt[0]
        if holder == "":
            nxt = _lease_step(entry, lock_input, output, held=False)
            return (nxt is not None), (state if nxt is None else nxt[0])
        if output is UNKNOWN:
            options = [_lease_step(entry, lock_input, output, held=h) for h in (True, False)]
            changing = [
                o
                for o in options
                if o is not None and o[1] and self._owner_ok(input[1], o[0], entry)
            ]
            if changing:
                return True, changing[0][0]
            return False, state  # refused on either side: the same as leaving it out here
        for h in (True, False):
            nxt = _lease_step(entry, lock_input, output, held=h)
            if nxt is not None:
                return True, nxt[0]
        return False, state

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        groups: dict[object, list[Operation]] = {}
        for op in ops:
            groups.setdefault(op.input[1], []).append(op)
        return list(groups.values())

    def read_only(self, input: Any) -> bool:
        return bool(input[0] == "read")

    def describe(self, input: Any, output: Any) -> str:
        op, key, who, version, lease_ms, at_ms, value = input[:7]
        args = [repr(key)]
        if op != "read":
            args += [repr(who), f"v={version}"]
        if op in ("acquire", "renew"):
            args.append(f"lease={lease_ms}")
            if value is not None:
                args.append(f"value={value!r}")
        side = "" if len(input) < 8 or input[7] is None else f" [{input[7]}]"
        return f"{op}({', '.join(args)}) @{at_ms}{side} -> {output!r}"

    def ranks(self, input: Any, output: Any) -> tuple[int | None, ...]:
        """The key's fencing version (every answer shows the state's, which only grows) and
        the apply time (the log applies commands in time order)."""
        version = output[2] if isinstance(output, tuple) else None
        return (version if isinstance(version, int) else None, input[5])


def lease_alternatives(ops: Iterable[Operation]) -> list[Operation]:
    """``LockInput`` operations as ``LeaseLockModel`` inputs (``LeaseInput``): an acquire of
    unknown outcome as its two alternatives, every other operation as itself."""
    out: list[Operation] = []
    alt = 0
    for op in ops:
        if op.return_index is None and op.input[0] == "acquire":
            for side in ("held", "free"):
                out.append(
                    Operation(
                        call_index=op.call_index,
                        return_index=None,
                        process=op.process,
                        input=(*op.input, side, alt),
                        output=op.output,
                        choice=alt,
                    )
                )
            alt += 1
            continue
        out.append(
            Operation(
                call_index=op.call_index,
                return_index=op.return_index,
                process=op.process,
                input=(*op.input, None, -1),
                output=op.output,
            )
        )
    return out


def lock_operations(ops: Iterable[Op]) -> list[Operation]:
    """The history's lock operations as ``LockInput`` operations (``fail``s and nemesis ops
    left out, an unknown outcome with output ``UNKNOWN``), an ok listing as its reads."""
    pairs = [(i, c) for i, c in pair_ops(ops) if i.process != "nemesis"]
    keys_of_dir: dict[str, set[str]] = {}
    for invoke, completion in pairs:
        names: list[str] = []
        if invoke.f in LOCK_FS:
            names.append(str(invoke.get("key")))
        elif invoke.f == LIST_F and completion is not None and completion.type == "ok":
            raw = completion.get("entries")
            if isinstance(raw, list):
                names += [e[0] for e in raw if isinstance(e, list) and e and isinstance(e[0], str)]
        for key in names:
            keys_of_dir.setdefault(_directory(key), set()).add(key)
    out: list[Operation] = []
    for invoke, completion in pairs:
        if completion is not None and completion.type == "fail":
            continue
        if invoke.f == LIST_F:
            if completion is not None and completion.type == "ok":
                out += _list_reads(invoke, completion, keys_of_dir)
            continue  # a listing of unknown outcome changed nothing
        converted = lock_from_history(invoke, completion)
        if converted is None:
            continue
        done = completion is not None and completion.type == "ok"
        if invoke.f == "read" and not done:
            continue  # a read of unknown outcome changed nothing and constrains nothing
        out.append(
            Operation(
                call_index=invoke.index,
                return_index=completion.index if done and completion is not None else None,
                process=invoke.process,
                input=converted[0],
                output=converted[1] if done else UNKNOWN,
            )
        )
    return out


def lease_operations(ops: Iterable[Op]) -> list[Operation]:
    """The history's lock operations as ``LeaseLockModel`` inputs (``LeaseInput``)."""
    return lease_alternatives(lock_operations(ops))


def _lease_step(
    state: LeaseEntry, input: LockInput, output: Any, *, held: bool
) -> tuple[LeaseEntry, bool] | None:
    """Apply ``input`` assuming the current holder's lease is (``held``) or is not in force
    at the apply time: the new state and whether the command changed the entry, or None if
    that assumption is impossible or the answer does not match."""
    holder, version, lo, hi, time_ms, lease, value = state
    op, key, who, ver, lease_ms, at, new_value = input
    if holder == "":
        t = at if at is not None else time_ms
        expiries = [0]
    elif held:
        t = at if at is not None else time_ms
        if not t < hi:
            return None
        expiries = [max(lo, t + 1)]
        if output is not UNKNOWN:
            named = output[3]
            if isinstance(named, int) and max(lo, t + 1) <= named <= hi and named != expiries[0]:
                expiries.append(named)  # a denial or read that names the expiry
    else:
        t = at if at is not None else max(time_ms, lo)
        if t < lo:
            return None
        expiries = [min(t, hi)]
    for e in expiries:
        new, result = lock_transition(
            (holder, version, e, time_ms, value), (op, key, who, ver, lease_ms, t, new_value)
        )
        if output is not UNKNOWN and not output_matches(result, output):
            continue
        nh, nv, ne, nt, nval = new
        if result[0] and op != "read":  # the command changed the entry
            if op in ("acquire", "renew") and at is None:
                return (nh, nv, ne, _INF, nt, lease_ms, nval), True  # granted at a time >= t
            return (nh, nv, ne, ne, nt, 0, nval), True
        if holder == "":
            return (holder, version, lo, hi, nt, lease, value), False
        if held:
            if output is not UNKNOWN and output[1] == holder and output[3] == e:
                return (holder, version, e, e, nt, 0, value), False  # the answer names the expiry
            return (holder, version, max(lo, t + 1), hi, nt, lease, value), False
        new_hi = min(hi, t)
        return (holder, version, lo, new_hi, nt, lease if lo < new_hi else 0, value), False
    return None


def check_lock_linearizable(
    ops: Iterable[Op], *, max_steps: int = LINEARIZABLE_STEPS_MAX
) -> CheckResult:
    """The lock operations of the history are linearizable with respect to the lock
    service's sequential semantics, per key (``LeaseLockModel``). ``ok`` only for the verdict
    ``"ok"``: a search that runs out of its step budget is not a pass."""
    operations = lease_operations(ops)
    owners: dict[tuple[str, int], str] = {}
    for op in operations:
        if op.return_index is not None and op.output[1] and isinstance(op.output[2], int):
            owners.setdefault((op.input[1], op.output[2]), op.output[1])
    return check_linearizable(LeaseLockModel(owners), operations, max_steps=max_steps)


# --------------------------------------------------------------------------------------------
# Fencing and liveness


@dataclass(frozen=True, slots=True)
class _Grant:
    key: str
    holder: str
    version: int
    at_ms: int
    expiry_ms: int
    invoke_index: int
    complete_index: int


def check_fencing(ops: Iterable[Op]) -> CheckResult:
    """Fencing tokens do what the store relies on, per key, over the acknowledged answers.

    A *grant* is an ``ok`` acquire or renew with outcome ``ok``: the requester holds the key
    with ``version`` for the log-time interval ``[at_ms, expiry_ms)``. An answer (of any
    operation) that shows the key free with ``version`` at ``at_ms`` ends every interval of
    that version there: the holder released it (a client stops using a token once it sends the
    release, so this counts releases whose acknowledgement was lost), or it expired. A
    release of unknown outcome (``info``, or never completed) may end its version's lease at
    any time after it was invoked, so it excuses an overlap with a later version first granted
    after that invoke. That the service shows a key free, or grants it again, only after a
    release or expiry is the linearizability check's business, not this one's.

    * ``token-went-back`` (real-time order): if grant A completed before grant B was invoked
      (history order), then ``B.version >= A.version``, and ``B.version > A.version`` when B's
      holder differs from A's.
    * ``two-holders-of-a-version``: one version is granted to one holder only.
    * ``overlapping-leases`` (mutual exclusion in the service's time): for versions
      ``v < w`` of a key, every interval of ``v`` (cut at its release) ends at or before every
      interval of ``w`` starts. So no two clients hold a valid lease on a key at the same
      instant of the log's clock, the clock every lease is measured on. (This workload never
      takes a lock over with ``expected_version``, which would end the previous lease early.)
    """
    grants: list[_Grant] = []
    releases: dict[tuple[str, int], int] = {}
    unknown_releases: dict[tuple[str, int], int] = {}
    for invoke, completion in pair_ops(ops):
        if invoke.f not in LOCK_FS:
            continue
        if invoke.f == "release" and (completion is None or completion.type == "info"):
            sent_version = invoke.get("version")
            if isinstance(sent_version, int):
                unknown_releases.setdefault((str(invoke.get("key")), sent_version), invoke.index)
            continue
        if completion is None or completion.type != "ok":
            continue
        key = str(invoke.get("key"))
        version, at, expiry = (
            completion.get("version"),
            completion.get("at_ms"),
            completion.get("expiry_ms"),
        )
        if not (isinstance(version, int) and isinstance(at, int) and isinstance(expiry, int)):
            continue
        if invoke.f in ("acquire", "renew") and completion.get("outcome") == "ok":
            grants.append(
                _Grant(
                    key=key,
                    holder=str(completion.get("holder")),
                    version=version,
                    at_ms=at,
                    expiry_ms=expiry,
                    invoke_index=invoke.index,
                    complete_index=completion.index,
                )
            )
        if completion.get("holder") == "":  # free at ``at``: its version's lease is over
            k = (key, version)
            releases[k] = min(releases.get(k, at), at)
    went_back: list[dict[str, JSON]] = []
    two_holders: list[dict[str, JSON]] = []
    overlapping: list[dict[str, JSON]] = []
    keys = sorted({g.key for g in grants})
    for key in keys:
        mine = [g for g in grants if g.key == key]
        # Real-time order: sweep invokes and completions in history order.
        events: list[tuple[int, int, _Grant]] = []
        for g in mine:
            events.append((g.invoke_index, 0, g))
            events.append((g.complete_index, 1, g))
        events.sort(key=lambda e: (e[0], e[1]))
        best: _Grant | None = None
        before: dict[int, _Grant | None] = {}
        for _, kind, g in events:
            if kind == 0:
                before[g.invoke_index] = best
                continue
            prior = before[g.invoke_index]
            if prior is not None and (
                g.version < prior.version
                or (g.version == prior.version and g.holder != prior.holder)
            ):
                went_back.append(
                    {
                        "key": key,
                        "earlier": [prior.holder, prior.version, prior.complete_index],
                        "later": [g.holder, g.version, g.complete_index],
                    }
                )
            if best is None or g.version > best.version:
                best = g
        # One holder per version; intervals per version.
        holder_of: dict[int, str] = {}
        start: dict[int, int] = {}
        end: dict[int, int] = {}
        first_done: dict[int, int] = {}
        for g in mine:
            other = holder_of.setdefault(g.version, g.holder)
            if other != g.holder:
                two_holders.append({"key": key, "version": g.version, "holders": [other, g.holder]})
            start[g.version] = min(start.get(g.version, g.at_ms), g.at_ms)
            end[g.version] = max(end.get(g.version, g.expiry_ms), g.expiry_ms)
            first_done[g.version] = min(
                first_done.get(g.version, g.complete_index), g.complete_index
            )
        versions = sorted(start)
        for v in versions:
            released = releases.get((key, v))
            if released is not None:
                end[v] = min(end[v], max(released, start[v]))
        for i, v in enumerate(versions):
            for w in versions[i + 1 :]:
                if end[v] <= start[w]:
                    continue
                sent = unknown_releases.get((key, v))
                if sent is not None and sent < first_done[w]:
                    continue  # v's holder had let go: its release may have been applied first
                overlapping.append(
                    {
                        "key": key,
                        "version": v,
                        "ends_ms": end[v],
                        "next_version": w,
                        "starts_ms": start[w],
                    }
                )
    problems = {
        "token-went-back": went_back,
        "two-holders-of-a-version": two_holders,
        "overlapping-leases": overlapping,
    }
    ok = not any(problems.values())
    summary = (
        f"fencing: ok, {len(grants)} grants over {len(keys)} keys"
        if ok
        else "fencing: FAILED, "
        + ", ".join(f"{len(v)} {name}" for name, v in problems.items() if v)
    )
    details: dict[str, object] = {"grants": len(grants), "keys": len(keys)}
    details |= {name: v[:OFFENDERS_MAX] for name, v in problems.items()}
    return CheckResult(name="fencing", ok=ok, summary=summary, details=details)


def check_lock_liveness(ops: Iterable[Op], heal_time_ms: int, bound_ms: int) -> CheckResult:
    """After the heal, the service grants locks again within ``bound_ms``: among the acquires
    and renews invoked at or after ``heal_time_ms``, the earliest ``ok`` completion with
    outcome ``ok`` (a grant) has ``time_ms <= heal_time_ms + bound_ms``."""
    invoked = 0
    first: Op | None = None
    for invoke, completion in pair_ops(ops):
        if invoke.f not in ("acquire", "renew") or invoke.time_ms < heal_time_ms:
            continue
        invoked += 1
        if completion is None or completion.type != "ok" or completion.get("outcome") != "ok":
            continue
        if first is None or (completion.time_ms, completion.index) < (first.time_ms, first.index):
            first = completion
    recovery = None if first is None else first.time_ms - heal_time_ms
    ok = recovery is not None and recovery <= bound_ms
    return CheckResult(
        name="liveness",
        ok=ok,
        summary=(
            f"liveness: first grant {recovery} ms after the heal (bound {bound_ms} ms)"
            if ok
            else f"liveness: FAILED, no grant within {bound_ms} ms of the heal "
            f"(first after {recovery} ms, {invoked} acquires/renews invoked)"
        ),
        details={
            "heal_time_ms": heal_time_ms,
            "bound_ms": bound_ms,
            "recovery_ms": recovery,
            "invoked_after_heal": invoked,
        },
    )
