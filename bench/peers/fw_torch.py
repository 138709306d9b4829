"""The framework-free reference of the checkpoint stall: the bare loop calling ``torch.save`` synchronously."""

from __future__ import annotations

import os

import common
from harness import Config

NAME = "torch"


def configs(workload: str, scenarios: set[str], ckpt_every: int, folder: str) -> list[Config]:
    if "f" not in scenarios:
        return []
    path = os.path.join(folder, "state.pt")
    return [Config("torch_save_sync", "f", lambda b: common.bare(workload, b, save_every=ckpt_every, save_path=path),
                   drained=True)]
