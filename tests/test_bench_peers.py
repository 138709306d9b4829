"""The peers suite (bench/peers/, issue 14) in its smoke mode, so that it never rots.

These tests check the structure of what the suite writes and the arithmetic of its report, never timings: a
benchmark number is measured by ``bash bench/peers/run.sh``, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
sys.path.insert(0, str(PEERS))

import report  # noqa: E402

ASYNCLOOP_CONFIGS = {
    "linear_none", "actor_none", "linear_defaults", "actor_defaults",
    "linear_cb1", "linear_cb10", "linear_cb50", "actor_cb1", "actor_cb10", "actor_cb50",
    "linear_sleep", "actor_sleep", "process_sleep", "linear_gil", "actor_gil", "process_gil",
}
MEASURED = ("us_per_step", "bare_us_per_step", "over_bare_us", "ratio", "cpu_us_per_step", "cpu_over_bare_us")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("peers")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(PEERS / "suite.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_smoke_writes_every_asyncloop_configuration(smoke: Path) -> None:
    """The smoke run measures every asyncloop configuration of scenarios (a)-(e) on the tiny workload, each
    with its paired medians, or marks it n/a with the reason (process actors on an asyncloop without them)."""
    data = json.loads((smoke / "results.json").read_text())
    rows = [r for r in data["summary"]["rows"] if r["workload"] == "tiny"]
    assert {r["config"] for r in rows if r["framework"] == "asyncloop"} == ASYNCLOOP_CONFIGS
    for r in rows:
        if "na" in r:
            assert r["config"].startswith("process_"), r
            assert r["na"].startswith("n/a (not supported by this asyncloop"), r
            continue
        for key in MEASURED:
            assert isinstance(r[key], float), (r["config"], key)
        assert r["rounds"] == 1


def test_smoke_trains_every_configuration_to_the_bare_weights(smoke: Path) -> None:
    """Every measured configuration, checkpoint stall included, ends with exactly the bare loop's weights, and
    the report says so."""
    data = json.loads((smoke / "results.json").read_text())
    measured = [r for r in data["summary"]["rows"] if "na" not in r]
    assert measured and all(r["same_weights"] and r["weights_max_abs_diff"] == 0.0 for r in measured)
    assert data["summary"]["weights_differ"] == []
    assert "Every configuration trained to exactly the bare loop's weights" in (smoke / "results.md").read_text()


def test_smoke_measures_the_checkpoint_stall_against_torch_save(smoke: Path) -> None:
    """Scenario (f) runs asyncloop's Checkpointer under both runners next to a synchronous torch.save loop and
    the same fits without a Checkpointer (their bases), and reports the time lost per checkpoint (minus the
    base's) relative to one torch.save; the bases are not checkpointers in the peers comparison."""
    data = json.loads((smoke / "results.json").read_text())
    ck = {r["config"]: r for r in data["summary"]["rows"] if r["scenario"] == "f"}
    assert set(ck) == {"torch_save_sync", "linear_checkpointer", "actor_checkpointer", "linear_defaults",
                       "actor_defaults"}
    assert data["summary"]["torch_save_ms"] > 0
    for name in ("torch_save_sync", "linear_checkpointer", "actor_checkpointer"):
        r = ck[name]
        assert isinstance(r["lost_per_checkpoint_ms"], float) and isinstance(r["lost_vs_torch_save"], float)
    for runner in ("linear", "actor"):
        assert ck[f"{runner}_checkpointer"]["base"] == f"{runner}_defaults"
        assert ck[f"{runner}_defaults"]["checkpoint_base"] is True


def test_smoke_records_memory_and_lag_samples(smoke: Path) -> None:
    """Scenario (g) samples (step, RSS MB, detached logger lag) over the run, in step order."""
    mem = json.loads((smoke / "results.json").read_text())["summary"]["memory"]
    assert mem["steps"] == 1000
    steps = [s[0] for s in mem["samples"]]
    assert steps == sorted(steps) and len(steps) >= 10
    assert all(s[1] > 0 and s[2] >= 0 for s in mem["samples"])


def test_smoke_writes_the_report_targets_and_plots(smoke: Path) -> None:
    """results.md has the tables and the targets section; every target has a verdict; both plots are PNGs."""
    md = (smoke / "results.md").read_text()
    assert "## Workload tiny" in md and "## Targets (issue 14), from this run" in md
    data = json.loads((smoke / "results.json").read_text())
    assert data["meta"]["mode"] == "smoke" and data["meta"]["command"] == "python bench/peers/suite.py --smoke"
    targets = data["summary"]["targets"]
    assert any(t["target"].startswith("slow GIL-releasing observer") for t in targets)
    assert all(t["holds"] in (True, False, None) and t["detail"] for t in targets)
    for name in ("callbacks.png", "observer.png"):
        assert (smoke / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(fw, workload, configs):
    out = {}
    for name, (scenario, over, ratio, extra) in configs.items():
        out[name] = {"scenario": scenario, "base": extra.get("base"), "callbacks": extra.get("callbacks"),
                     "same_weights": True, "weights_max_abs_diff": 0.0, "wall": [1.0], "cpu": [1.0],
                     "bare_wall": [1.0], "bare_cpu": [1.0], "us_per_step": 100 + over, "bare_us_per_step": 100.0,
                     "over_bare_us": over, "ratio": ratio, "cpu_us_per_step": 100.0, "cpu_over_bare_us": over}
    return {"framework": fw, "workload": workload, "versions": {}, "configs": out}


def test_report_computes_hidden_fraction_and_targets() -> None:
    """The time an observer costs is its configuration's paired overhead minus its base configuration's; the
    hidden fraction is 1 - lost / block; the targets compare against ignite's minimal trainer in the same run."""
    meta = {"calibration": {"small": {"sleep_blocks_us": 100.0, "gil_us": 100.0, "bare_step_us": 100.0}}}
    runs = [
        _run("asyncloop", "small", {
            "linear_none": ("a", 2.0, 1.02, {}), "actor_none": ("a", 5.0, 1.05, {}),
            "linear_defaults": ("b", 10.0, 1.1, {}), "actor_defaults": ("b", 25.0, 1.25, {}),
            "linear_cb1": ("c", 3.0, 1.03, {"callbacks": 1}), "linear_cb50": ("c", 150.0, 2.5, {"callbacks": 50}),
            "actor_sleep": ("d", 35.0, 1.35, {"base": "actor_defaults"}),
            "process_gil": ("e", 20.0, 1.2, {"base": "actor_defaults"}),
        }),
        _run("ignite", "small", {"engine_none": ("a", 60.0, 1.6, {}),
                                 "engine_sleep": ("d", 160.0, 2.6, {"base": "engine_none"})}),
    ]
    summary = report.build(meta, runs)
    rows = {(r["framework"], r["config"]): r for r in summary["rows"]}
    assert rows["asyncloop", "actor_sleep"]["lost_us"] == 10.0
    assert rows["asyncloop", "actor_sleep"]["hidden"] == pytest.approx(0.9)
    assert rows["ignite", "engine_sleep"]["hidden"] == pytest.approx(0.0)
    verdicts = {t["target"]: t["holds"] for t in summary["targets"]}
    assert verdicts["defaults, both runners: overhead <= 1/3 of ignite's minimal trainer"] is False  # 25 > 20
    assert verdicts["ActorRunner defaults <= LinearRunner defaults + 10 us"] is False  # 25 > 10 + 10
    assert verdicts["no callbacks (linear): within 3% of bare"] is True
    assert verdicts["no callbacks (actor): within 3% of bare"] is False
    assert verdicts["<= +2 us per extra inline callback (linear)"] is False  # (150 - 3) / 49 = 3 us
    assert verdicts["slow GIL-releasing observer: ActorRunner hides >= 85%"] is True
    assert verdicts["GIL-bound observer in a process actor: <= 1.25x bare"] is True
    assert verdicts["asyncloop ahead of every peer: minimal, no callbacks"] is True


def _stamps(dt: list[float]) -> list[float]:
    out = [0.0]
    for d in dt:
        out.append(out[-1] + d)
    return out


def test_in_run_lost_measures_each_checkpoint_against_the_steps_before_it() -> None:
    """A checkpoint's cost is what the steps after it took beyond the steps just before it: a 50 ms save inside
    step 800 and a 30 ms slowdown spread over the 300 steps after step 1600 come out as 50 and 30 ms; a slow
    step among the baseline's steps is left out; the checkpoint whose window runs past the last batch is not
    counted; with checkpoints too close for a baseline (the smoke mode) there is nothing to measure."""
    import harness

    dt = [0.001] * 2400
    dt[799] += 0.050
    for i in range(1600, 1900):
        dt[i] += 0.0001
    dt[1550] += 0.5  # a stray slow step before the second checkpoint: trimmed from its baseline
    lost = harness.in_run_lost(_stamps(dt), 800)
    assert lost == [pytest.approx(50.0), pytest.approx(30.0)]
    assert harness.in_run_lost(_stamps(dt), 5) == []


def test_in_run_lost_is_free_of_drift_between_fits() -> None:
    """A fit that runs 20% slower throughout (the machine's drift between fits) loses nothing to a
    checkpoint-free window: the estimate compares steps of the same fit."""
    import harness

    assert harness.in_run_lost(_stamps([0.0012] * 2400), 800) == [pytest.approx(0.0, abs=1e-9)] * 2


def test_checkpoint_target_needs_both_estimates() -> None:
    """The checkpoint-stall target holds only when the stall is <= 15% of a synchronous torch.save both between
    fits (paired with the bare loop) and inside each fit (against the bare loop's torch.save measured the same
    way)."""
    def ckpt_runs(between_us: float, in_run_ms: float) -> list[dict]:
        torch_run = _run("torch", "ckpt", {"torch_save_sync": ("f", 100.0, 1.1, {})})
        torch_run["torch_save_s"] = 0.1
        torch_run["configs"]["torch_save_sync"]["in_run_lost_ms"] = 100.0
        al_run = _run("asyncloop", "ckpt", {"actor_checkpointer": ("f", between_us, 1.01, {})})
        al_run["configs"]["actor_checkpointer"]["in_run_lost_ms"] = in_run_ms
        for run in (torch_run, al_run):
            run.update(checkpoints_per_fit=3, steps=2400)
            for res in run["configs"].values():
                res["fit_over_bare_us"] = res["over_bare_us"]
        return [torch_run, al_run]

    name = "checkpoint stall: ActorRunner loses <= 15% of a synchronous torch.save per checkpoint"
    # 12.5 us/step over 2400 steps = 30 ms over 3 checkpoints = 10 ms per checkpoint = 10% of 100 ms
    for in_run, holds in ((10.0, True), (40.0, False)):
        summary = report.build({"calibration": {}}, ckpt_runs(12.5, in_run))
        rows = {(r["framework"], r["config"]): r for r in summary["rows"]}
        assert rows["asyncloop", "actor_checkpointer"]["in_run_vs_torch_save"] == pytest.approx(in_run / 100)
        assert {t["target"]: t["holds"] for t in summary["targets"]}[name] is holds


def test_checkpoint_cost_between_fits_leaves_out_the_loops_own_overhead() -> None:
    """Between fits, a checkpointer's cost is its fit's paired overhead minus the same framework's fit without
    checkpoints (its base): the loop's own per-step overhead is not charged to the checkpoints, and the base is
    left out of the peers comparison."""
    torch_run = _run("torch", "ckpt", {"torch_save_sync": ("f", 100.0, 1.1, {})})
    torch_run["torch_save_s"] = 0.1
    al_run = _run("asyncloop", "ckpt", {"actor_defaults": ("f", 5.0, 1.05, {}),
                                         "actor_checkpointer": ("f", 12.5, 1.1, {"base": "actor_defaults"})})
    ig_run = _run("ignite", "ckpt", {"engine_none": ("f", 1.0, 1.01, {}),
                                     "checkpoint_handler": ("f", 10.0, 1.1, {"base": "engine_none"})})
    for run in (torch_run, al_run, ig_run):
        run.update(checkpoints_per_fit=3, steps=2400)
        for res in run["configs"].values():
            res["fit_over_bare_us"] = res["over_bare_us"]
    summary = report.build({"calibration": {}}, [torch_run, al_run, ig_run])
    rows = {(r["framework"], r["config"]): r for r in summary["rows"]}
    assert rows["asyncloop", "actor_checkpointer"]["lost_per_checkpoint_ms"] == pytest.approx(6.0)  # 7.5 us x 800
    assert rows["asyncloop", "actor_checkpointer"]["lost_vs_torch_save"] == pytest.approx(0.06)
    assert rows["ignite", "checkpoint_handler"]["lost_per_checkpoint_ms"] == pytest.approx(7.2)  # 9 us x 800
    ahead = {t["target"]: t for t in summary["targets"]}["asyncloop ahead of every peer: checkpoint stall"]
    assert ahead["holds"] is True and "engine_none" not in ahead["detail"] and "actor_defaults" not in ahead["detail"]


def test_a_reused_process_learner_trains_on_the_batches_of_each_call() -> None:
    """The process configurations keep one learner (and its worker) across fits; each fit still runs over the
    batches it is given, not those the learner was first built with."""
    import common
    import fw_asyncloop

    first = common.StampedBatches(common.make_batches("tiny", 3), 0)
    second = common.StampedBatches(common.make_batches("tiny", 5), 0)
    fw_asyncloop._observed_process("tiny", first, "sleep")
    try:
        fw_asyncloop._observed_process("tiny", second, "sleep")
        assert len(second.stamps) == 6  # five batches handed out, then the end of the pass
    finally:
        learner = fw_asyncloop._PROCESS_LEARNERS.pop(("tiny", "sleep"))[0]
        learner.runner.shutdown()
