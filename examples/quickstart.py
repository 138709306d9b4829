"""The README quick-start: fit a small classifier on generated data and read back its metrics."""

import torch
import trio

import asyncloop
from asyncloop import ActorRunner, Learner, Metrics, TrainingPhase, ValidationPhase, accuracy

# Data: any iterables of (xs, ys) batches -- here points labelled by the quadrant rule x0 * x1 > 0.
torch.manual_seed(0)
xs = torch.randn(1024, 2)
ys = (xs[:, 0] * xs[:, 1] > 0).long()
batches = [(xs[i : i + 64], ys[i : i + 64]) for i in range(0, 1024, 64)]
train, valid = batches[:12], batches[12:]

model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
learner = Learner(
    model,
    torch.nn.functional.cross_entropy,  # loss_fn(preds, targets)
    data=(train, valid),
    optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),  # a factory, or an Optimizer; default Adam
    callbacks=[Metrics(accuracy)],  # plus the defaults: progress bar, metrics table, NaN stop, Recorder
    runner=ActorRunner(),  # printers run detached; the default is LinearRunner()
)

result = trio.run(asyncloop.fit, learner, 5)  # or `await asyncloop.fit(learner, 5)` inside trio
print(result.epochs, result.stopped)  # 5 False

history = learner.cbstate.history[TrainingPhase()]
print(history.epochs, history.steps)  # 5 60
epoch, acc = learner.cbstate.metrics_epoch[ValidationPhase()].last("Accuracy")
print(f"validation accuracy after epoch {epoch}: {acc:.2f}")
