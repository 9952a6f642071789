"""Shorter waits inside Flower 1.42's SuperNode and ClientApp: version-guarded, in one place.

Flower 1.42 has fixed waits that dominate a round once the ClientApp starts fast (warm executor):

- the SuperNode's main loop (`flwr.supernode.start_client_internal`) sleeps `FLWR_IDLE_SLEEP_S`
  after an empty pull from the SuperLink before asking again, and half a second between checks
  for its ClientApp's reply;
- a ClientApp starts while its SuperNode is still receiving the message, and pulls each object
  that is not there yet again after a backoff of whole seconds, doubling (`pull_objects`,
  `FLWR_PULL_BACKOFF`).

`supernode_waits` and `object_pull_backoff` shorten them, and only when the installed Flower is a
`FLOWER_SERIES` release whose code still has exactly these waits (checked, not assumed); otherwise
they change nothing and return False, and Flower runs with its own timings. Revisit them on a Flower
upgrade (tests/test_warm_exec.py fails when they no longer apply).
"""

from __future__ import annotations

import time

FLOWER_SERIES = "1.42."
IDLE_PULL_S = 0.5  # each pull is one request to the SuperLink: the load a waiting node puts on it
LOCAL_WAIT_S = 0.05  # checks of the node's own state: no network
FLWR_IDLE_SLEEP_S = 3  # what Flower's SuperNode loop sleeps after an empty pull
PULL_BACKOFF_S = 0.05  # first retry of an object the SuperNode does not hold yet (local: cheap)
PULL_BACKOFF_CAP_S = 0.5
FLWR_PULL_BACKOFF = {"initial_backoff": 1, "backoff_cap": 10}  # Flower's, to check against


def _flower_series() -> bool:
    import flwr

    return flwr.__version__.startswith(FLOWER_SERIES)


class SuperNodeClock:
    """Stands in for the `time` module inside Flower's `start_client_internal`: everything is
    `time`'s, except that its idle sleep after an empty pull lasts `idle_s` and its waits on the
    node's own state at most `local_s`."""

    def __init__(self, idle_s: float = IDLE_PULL_S, local_s: float = LOCAL_WAIT_S):
        self.idle_s, self.local_s = idle_s, local_s

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle_s if seconds >= FLWR_IDLE_SLEEP_S else min(seconds, self.local_s))


def supernode_waits(idle_s: float = IDLE_PULL_S, local_s: float = LOCAL_WAIT_S) -> bool:
    """Install `SuperNodeClock` in the SuperNode's loop (call in the SuperNode process) -> whether it was."""
    from flwr.supernode import start_client_internal as loop

    if not _flower_series() or loop.time is not time:
        return False
    loop.time = SuperNodeClock(idle_s, local_s)
    return True


def object_pull_backoff(initial_s: float = PULL_BACKOFF_S, cap_s: float = PULL_BACKOFF_CAP_S) -> bool:
    """Make a ClientApp retry objects its SuperNode does not hold yet after `initial_s` (doubling up
    to `cap_s`) instead of Flower's `FLWR_PULL_BACKOFF` (call before the ClientApp runs) -> whether
    it did."""
    from flwr.supercore.inflatable import inflatable_utils as pulls

    functions = (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree)
    defaults = [f.__kwdefaults__ or {} for f in functions]
    if not _flower_series() or any(d.get(k) != v for d in defaults for k, v in FLWR_PULL_BACKOFF.items()):
        return False
    for d in defaults:
        d.update(initial_backoff=initial_s, backoff_cap=cap_s)
    return True
