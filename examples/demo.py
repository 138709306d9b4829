"""asyncloop demo: a small CNN learns scikit-learn's 8x8 handwritten digits under the ActorRunner.

Accuracy, a one-cycle learning rate, early stopping, checkpoints, TensorBoard and an event log; the best
checkpoint is evaluated on a held-out test set, and a PNG of the curves is written. The code is
asyncloop/_demo.py (inside the package, so that `asyncloop demo` runs it from an installed asyncloop too).

    python examples/demo.py                  # the full run, ActorRunner
    python examples/demo.py --runner linear  # the same run under the LinearRunner
    python examples/demo.py --quick          # a few seconds, for CI
    python examples/demo.py --help           # every option
"""

import sys

from asyncloop._demo import main

if __name__ == "__main__":
    sys.exit(main())
