"""The quick-start, data-parallel: `torchrun --nproc_per_node=2 examples/distributed.py` (see docs/distributed.md).

The same script as examples/quickstart.py plus one line, `strategy="auto"`: the default, so the quick-start itself
runs data-parallel under torchrun too. Each rank takes every other batch; the metrics printed are the
global ones, equal on every rank; only rank 0 shows progress and tables.
"""

import torch
import trio

import asyncloop
from asyncloop import ActorRunner, Learner, Metrics, ValidationPhase, accuracy

torch.manual_seed(0)  # data: any iterables of (xs, ys) batches; here the quadrant rule x0 * x1 > 0
xs = torch.randn(1024, 2)
batches = [(x, (x[:, 0] * x[:, 1] > 0).long()) for x in xs.split(64)]
model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
learner = Learner(model, torch.nn.functional.cross_entropy, data=(batches[:12], batches[12:]),
                  optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),  # default: Adam
                  callbacks=[Metrics(accuracy)], runner=ActorRunner(),  # plus the default callbacks
                  strategy="auto")  # the default: DDP under torchrun (WORLD_SIZE >= 2), else one process
result = trio.run(asyncloop.fit, learner, 5)  # or `await asyncloop.fit(learner, 5)` inside trio
print(result.epochs, result.stopped, learner.cbstate.history[ValidationPhase()].epochs)  # 5 False 5
print("validation accuracy: %.2f" % learner.cbstate.metrics_epoch[ValidationPhase()].last("Accuracy")[1])
