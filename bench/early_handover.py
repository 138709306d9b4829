"""A/B of the ActorRunner's early hand-over: an idle detached actor with ``EARLY_WORK`` seconds of work queued gets
it at once instead of at the next ``flush_interval``.

Settings of ``asyncloop.runners._delivery.EARLY_WORK``: 10 ms (the shipped value), 1 ms (the value shipped before)
and "never"; the method is ``_observer_ab``'s.

Run: ``.venv/bin/python bench/early_handover.py --workload small --steps 600 --rounds 9`` (and ``--workload tiny
--steps 1500``); prints a table and writes bench/results/early_handover_<workload>.json.
"""

from __future__ import annotations

import _observer_ab

import asyncloop.runners._delivery as delivery

SETTINGS: dict[str, _observer_ab.Setting] = {
    "early 10 ms": ({}, _observer_ab.constant(delivery, "EARLY_WORK", 0.01)),
    "early 1 ms": ({}, _observer_ab.constant(delivery, "EARLY_WORK", 0.001)),
    "never": ({}, _observer_ab.constant(delivery, "EARLY_WORK", float("inf"))),
}

if __name__ == "__main__":
    _observer_ab.main("early hand-over", "early_handover", SETTINGS, __doc__.splitlines()[0])
