"""What each method (SAM-Fed, its ablations and the baselines) switches on, by name.

Every method runs under the same protocol (split, server initialisation, rounds, epochs,
optimiser); only the client-side pseudo-label source and losses differ:

=====================  ===========  =========  ===========  =====================================
method                 pseudo       global KD  federated    note
=====================  ===========  =========  ===========  =====================================
samfed                 agreement    yes        yes          the method (agreement variant setting)
samfed-no-agreement    teacher      yes        yes          teacher hard labels, weight 1
samfed-no-kd           agreement    no         yes          the global model still votes
samfed-no-sam          none         yes        yes          L_sup + L_kd only, no teacher
sam-only               teacher      no         yes          teacher pseudo-labels only
fixmatch               self         no         yes          own confident labels (threshold 0.95)
supervised             -            -          no           global model on D_p only (lower bound)
centralised            -            -          no           all labels pooled (upper bound)
=====================  ===========  =========  ===========  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass

from samfed.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """pseudo: 'agreement' | 'teacher' | 'self' | None; kd: global-to-local KD; kind: how it trains."""

    name: str
    pseudo: str | None
    kd: bool
    kind: str = "federated"  # 'federated' | 'supervised' | 'centralised'

    @property
    def needs_teacher(self) -> bool:
        return self.pseudo in ("agreement", "teacher")


METHODS: Registry[MethodSpec] = Registry("method")
for _spec in (
    MethodSpec("samfed", "agreement", True),
    MethodSpec("samfed-no-agreement", "teacher", True),
    MethodSpec("samfed-no-kd", "agreement", False),
    MethodSpec("samfed-no-sam", None, True),
    MethodSpec("sam-only", "teacher", False),
    MethodSpec("fixmatch", "self", False),
    MethodSpec("supervised", None, False, kind="supervised"),
    MethodSpec("centralised", None, False, kind="centralised"),
):
    METHODS.add(_spec.name, _spec)


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name`; unknown names raise SamfedError."""
    return METHODS.lookup(name)
