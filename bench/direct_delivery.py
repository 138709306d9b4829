"""A/B of direct delivery: a thread actor takes its events straight from the training thread, or through the
caller's loop.

Settings: ``direct`` (shipped: ``_delivery.DIRECT = True``; an idle actor is woken by one lock release once
``DIRECT_WORK`` of its events are queued, a busy one takes new events without any wake-up) and ``via the loop``
(``DIRECT = False``: the outbox is handed to the caller's trio loop, which passes one batch per hand-off to the
actor's thread, as before). The method is ``_observer_ab``'s: the defaults and a one-bare-step sleep observer,
each paired with a bare loop, rounds interleaved.

Run: ``.venv/bin/python bench/direct_delivery.py --workload tiny --steps 350 --rounds 9`` (and ``--workload
small --steps 240 --rounds 7``: the peers suite's fit lengths); prints a table and writes
bench/results/direct_delivery_<workload>.json.
"""

from __future__ import annotations

import _observer_ab

from asyncloop.runners import _delivery

SETTINGS: dict[str, _observer_ab.Setting] = {
    "direct": ({}, _observer_ab.constant(_delivery, "DIRECT", True)),
    "via the loop": ({}, _observer_ab.constant(_delivery, "DIRECT", False)),
}

if __name__ == "__main__":
    _observer_ab.main("direct delivery", "direct_delivery", SETTINGS, __doc__.splitlines()[0])
