"""``Replica``: the node that hosts every Paxos group of one replica set on one machine.

It implements the ``Node`` protocol of ``pxq.effects``: it routes peer messages by group,
answers client ``Propose`` calls (or redirects them), fires the groups' timers on ``Wake``
and rebuilds everything from its storage view on ``Boot``. The protocol itself lives in
``group.py``; this module owns only dispatch, the deadline, the snapshot cache and the
node-level ``check_invariants``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    InvariantViolation,
    NodeId,
    Now,
    Received,
    Rng,
    StorageLow,
    StorageView,
    Wake,
)
from pxq.paxos.catchup import SnapshotCache
from pxq.paxos.config import PaxosConfig
from pxq.paxos.group import Group
from pxq.paxos.messages import Accepted, Propose, ProposeRejected
from pxq.paxos.repair import classify, storage_blank
from pxq.paxos.sm import StateMachine
from pxq.paxos.validate import Peers, is_peer_message, problem

_TICKS_PER_WAKE_MAX = 3


class Replica:
    """One member of a Paxos replica set, hosting ``config.groups`` groups; a ``Node``."""

    def __init__(
        self,
        node_id: NodeId,
        config: PaxosConfig,
        storage: StorageView,
        rng: Rng,
        state_machines: Callable[[int], StateMachine],
    ) -> None:
        if node_id not in config.replicas:
            raise ValueError(f"node_id: {node_id!r} is not in replicas {config.replicas}")
        self.node_id = node_id
        self.config = config
        self.storage = storage
        self.rng = rng
        self.state_machines = state_machines
        self.groups: list[Group] = []
        # Each group's deadline, as of its last step: a group's deadline changes only when it
        # is stepped, so a step re-reads the deadlines of the groups it touched, not all.
        self._deadlines: list[int | None] = []
        self._stale: set[int] = set()  # groups stepped since their deadlines were read
        self._all_stale = True  # every group's (after a boot or a wake)
        self._stepped: list[int] = []  # the groups the current step routed to
        self.snapshots = SnapshotCache(config.snapshot_cache_max)
        self.booted = False
        self.peers = Peers(config.replicas, config.index_of(node_id))

    # -- Node protocol --------------------------------------------------------------------------

    def step(self, now: Now, inp: Input) -> Effects:
        t = now.mono_ms
        fx = EffectsBuilder()
        stepped = self._stepped
        stepped.clear()
        every_group = False
        match inp:
            case Boot():
                every_group = True
                self._boot(t, inp, fx)
            case Received(src=src, msg=msg):
                self._require_boot()
                self._on_received(t, src, msg, fx)
            case Wake():
                self._require_boot()
                groups = self.groups
                for i, due in enumerate(self._fresh_deadlines()):
                    if due is None or due > t:
                        continue  # not due: the tick would do nothing
                    stepped.append(i)
                    g = groups[i]
                    # A tick may change the group's role and so expose another timer that is
                    # already due (a failed candidate's catch-up retry): handle it now too.
                    for _ in range(_TICKS_PER_WAKE_MAX):
                        g.tick(t, fx)
                        d = g.deadline()
                        if d is None or d > t:
                            break
            case ClientCall(call_id=call_id, request=request):
                self._require_boot()
                self._on_call(t, call_id, request, fx)
            case StorageLow():
                pass  # the log takes what its master proposes; the service decides refusals
            case _:
                assert_never(inp)
        if every_group:
            self._all_stale = True
            for g in self.groups:
                g.finish(fx)
        else:
            groups = self.groups
            for i in stepped:  # the groups this step routed to: no other group changed
                groups[i].finish(fx)
            self._stale.update(stepped)
        return fx.build()

    def next_deadline(self) -> int | None:
        best: int | None = None
        for d in self._fresh_deadlines():
            if d is not None and (best is None or d < best):
                best = d
        return best

    def _fresh_deadlines(self) -> list[int | None]:
        """Each group's ``deadline()``, re-read only for the groups stepped since the last
        read (a group's deadline depends on its own state alone)."""
        groups = self.groups
        deadlines = self._deadlines
        if self._all_stale:
            deadlines[:] = [g.deadline() for g in groups]
            self._all_stale = False
        else:
            for i in self._stale:
                deadlines[i] = groups[i].deadline()
        self._stale.clear()
        return deadlines

    # -- queries for the node that wraps this one -------------------------------------------------

    def is_master(self, group: int, now: Now) -> bool:
        """True while this replica holds the lease of ``group`` and may serve it."""
        return self.groups[group].is_master(now.mono_ms)

    def master_of(self, group: int) -> NodeId | None:
        """The master of ``group`` as far as this replica knows (possibly stale)."""
        return self.groups[group].master_of()

    def applied(self, group: int) -> int:
        """The last instance of ``group`` applied to its state machine here."""
        return self.groups[group].learner.applied

    def state_machine(self, group: int) -> StateMachine:
        return self.groups[group].learner.sm

    def check_invariants(self) -> None:
        """Raise ``InvariantViolation`` if a group's state breaks what must hold between steps
        (``Group.check_invariants``). Pure and cheap: the simulator calls it after every step."""
        for g in self.groups:
            g.check_invariants()

    # -- internals ------------------------------------------------------------------------------

    def _require_boot(self) -> None:
        if not self.booted:
            raise InvariantViolation("the first input of an incarnation must be Boot")

    def _boot(self, t: int, boot: Boot, fx: EffectsBuilder) -> None:
        # A new incarnation: forget everything volatile and rebuild from storage.
        self.snapshots = SnapshotCache(self.config.snapshot_cache_max)
        self.groups = [
            Group(
                group=g,
                me=self.node_id,
                config=self.config,
                view=self.storage,
                rng=self.rng,
                sm_factory=self.state_machines,
                snapshots=self.snapshots,
            )
            for g in range(self.config.groups)
        ]
        # Blank storage (what it means is the driver's word, ``Boot.if_blank``); damaged
        # records are repaired group by group (``repair.py``).
        blank = not boot.damaged and storage_blank(self.storage)
        if boot.if_blank == "replace" and not blank:
            fx.event("replace_ignored", reason="storage is not blank")
        damage = classify(boot.damaged, self.config.groups)
        for g in self.groups:
            g.boot(t, fx, damage=damage[g.group], blank=blank, if_blank=boot.if_blank)
        self.booted = True

    def _on_received(self, t: int, src: NodeId, msg: object, fx: EffectsBuilder) -> None:
        if src not in self.config.replicas or (src == self.node_id and type(msg) is not Accepted):
            # From itself only the leader's own vote (see group.py, "Early Accepts").
            fx.event("dropped", reason="unknown source", source=src)
            return
        if not is_peer_message(msg):
            fx.event("dropped", reason="unknown message", source=src)
            return
        if not 0 <= msg.group < len(self.groups):
            fx.event("dropped", reason="unknown group", source=src, group=msg.group)
            return
        bad = problem(msg, self.config.index_of(src), self.peers)
        if bad is not None:
            # No honest replica sends it: evidence about the sender, never a crash here.
            fx.alarm("invalid_message", source=src, type=type(msg).__name__, problem=bad)
            return
        self._stepped.append(msg.group)
        self.groups[msg.group].on_message(t, src, msg, fx)

    def _on_call(self, t: int, call_id: int, request: object, fx: EffectsBuilder) -> None:
        if not isinstance(request, Propose):
            fx.reply(call_id, ProposeRejected(group=-1, reason="unknown request"))
            return
        if not 0 <= request.group < len(self.groups):
            fx.reply(call_id, ProposeRejected(group=request.group, reason="no such group"))
            return
        self._stepped.append(request.group)
        self.groups[request.group].on_propose(t, call_id, request.value, fx)
