"""A/B of ``ActorRunner(switch_interval=...)``: the GIL switch interval while detached actors' threads run.

Settings: 0.5 ms (the shipped value) and ``None`` (the interpreter's 5 ms); the method is ``_observer_ab``'s.

Run: ``.venv/bin/python bench/switch_interval.py --workload tiny --steps 1500 --rounds 9`` (and ``--workload small
--steps 600``); prints a table and writes bench/results/switch_interval_<workload>.json.
"""

from __future__ import annotations

import _observer_ab

SETTINGS: dict[str, _observer_ab.Setting] = {
    "0.5 ms": ({"switch_interval": 0.0005}, None),
    "None (5 ms)": ({"switch_interval": None}, None),
}

if __name__ == "__main__":
    _observer_ab.main("switch interval", "switch_interval", SETTINGS, __doc__.splitlines()[0])
