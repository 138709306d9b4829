"""The examples and the documentation's code run as they are shown.

Each example runs in its own interpreter (``sys.executable``), in quick mode where it has one. The ```python
blocks of README.md and docs/callbacks.md run top to bottom as one script per file; README's quick-start block
must be examples/quickstart.py (which runs on its own), so it is compared rather than run again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def run_python(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` from the repository root; fail with its output if it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)},  # this tree's asyncloop
    )
    output = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{args[0]} exited with {proc.returncode}\n{output}"
    return proc


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def quickstart_code() -> str:
    """examples/quickstart.py without its module docstring."""
    text = (ROOT / "examples" / "quickstart.py").read_text()
    return re.sub(r'\A""".*?"""\n\n', "", text, flags=re.S)


class TestExamples:
    def test_demo_learns(self, tmp_path: Path) -> None:
        """examples/demo.py --quick (under the LinearRunner; CI runs it under the ActorRunner, tests/test_demo.py
        too) learns the digits, printing the progress bar, the epoch table and where its files went."""
        out = tmp_path / "runs"
        proc = run_python(["examples/demo.py", "--quick", "--runner", "linear", "--out", str(out)], tmp_path)
        match = re.search(r"^demo: test accuracy (\d\.\d+) ", proc.stdout, flags=re.M)
        assert match, proc.stdout[-2000:]
        assert float(match.group(1)) >= 0.85  # chance is 0.1
        assert "under the linear runner" in proc.stdout
        assert "Accuracy" in proc.stdout  # the metrics table
        assert "Epoch 1 TrainingPhase()" in proc.stderr  # the progress bar
        assert f"demo: everything went to {out / 'version_0'}\n" in proc.stdout
        assert (out / "version_0" / "curves.png").is_file()

    def test_demo_rejects_bad_arguments(self, tmp_path: Path) -> None:
        """A bad option is an argparse error naming the script, not a traceback."""
        args = [sys.executable, "examples/demo.py", "--epochs", "0"]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 2
        assert proc.stderr.splitlines()[-1] == (
            "demo.py: error: argument --epochs: expected a whole number >= 1, got '0'"
        )

    def test_demo_script_sets_up_then_passes_arguments(self, tmp_path: Path) -> None:
        """scripts/demo.sh runs scripts/setup.sh, then the demo with .venv's python and every argument as given
        (checked in a copy of the layout whose setup and python only record what they were asked); CI runs it
        with --quick."""
        (tmp_path / "scripts").mkdir()
        (tmp_path / "scripts" / "demo.sh").write_text((ROOT / "scripts" / "demo.sh").read_text())
        (tmp_path / "scripts" / "setup.sh").write_text('echo "setup" >> calls.txt\n')
        python = tmp_path / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        record = '{ printf python; for a in "$@"; do printf " [%s]" "$a"; done; echo; } >> calls.txt'
        python.write_text(f"#!/bin/sh\n{record}\n")
        python.chmod(0o755)
        subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh"), "--epochs", "2", "--out", "a b"], cwd=ROOT,
                       check=True, timeout=TIMEOUT)
        assert (tmp_path / "calls.txt").read_text() == "setup\npython [examples/demo.py] [--epochs] [2] [--out] [a b]\n"
        assert "bash scripts/demo.sh --quick\n" in (ROOT / ".ci" / "run").read_text()

    def test_every_example_is_run_by_a_test(self) -> None:
        """Every script in examples/ is named by some test module (this one or the one of its topic), so none can
        rot unnoticed."""
        tests = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
        untested = [p.name for p in sorted((ROOT / "examples").glob("*.py")) if f"examples/{p.name}" not in tests
                    and f'"{p.name}"' not in tests]
        assert untested == []

    def test_quickstart(self, tmp_path: Path) -> None:
        """The quick-start trains 5 epochs without stopping, validating after each, in 15 lines of code."""
        proc = run_python(["examples/quickstart.py"], tmp_path)
        assert "5 False 5\n" in proc.stdout
        lines = [line for line in quickstart_code().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) <= 15

    def test_custom_callback(self, tmp_path: Path) -> None:
        """The custom phase trains, its epoch is cut short once, and the async report is written for every epoch."""
        proc = run_python(["examples/custom_callback.py", "--quick"], tmp_path)
        report = re.findall(r"^epoch (\d+): (\d+) steps", proc.stdout, flags=re.M)
        assert [int(e) for e, _ in report] == [1, 2, 3, 4]
        assert any(int(steps) < 64 for _, steps in report)  # CancelEpochException cut an epoch short
        assert "custom_callback: 4 epochs" in proc.stdout

    def test_dict_batches(self, tmp_path: Path) -> None:
        """The dict-batch example trains a two-input model under fit with custom phases; the kept checkpoint is
        named by the custom validation phase's accuracy."""
        proc = run_python(["examples/dict_batches.py", "--quick"], tmp_path)
        match = re.search(r"^4 epochs, validation accuracy (\d\.\d+)$", proc.stdout, flags=re.M)
        assert match, proc.stdout[-2000:]
        assert float(match.group(1)) >= 0.8
        kept = re.search(r"^kept: \['checkpoint_epoch_00\d_accuracy_(0\.\d+)\.pt'\]$", proc.stdout, flags=re.M)
        assert kept, proc.stdout[-2000:]
        assert "DictValidation" in proc.stdout  # the metrics table

    def test_gan(self, tmp_path: Path) -> None:
        """The GAN example's two-optimizer phase moves the generated mean towards the real one under fit."""
        proc = run_python(["examples/gan.py", "--quick"], tmp_path)
        match = re.search(r"^6 epochs; generated mean (-?\d+\.\d+)", proc.stdout, flags=re.M)
        assert match, proc.stdout[-2000:]
        assert abs(float(match.group(1)) - 3.0) < 1.0
        assert re.search(r"^kept: \[('checkpoint_epoch_\d{3}_loss_\d\.\d+\.pt'(, )?)+\]$", proc.stdout, flags=re.M)

    def test_conflict(self, tmp_path: Path) -> None:
        """Two callbacks writing the gradients are refused without resolve_conflict; with it the noise runs before
        the freeze, so the frozen layer stays exactly as it was while the head trains."""
        proc = run_python(["examples/conflict.py", "--quick"], tmp_path)
        assert "without resolve_conflict: Write conflict detected between GradientNoise and NaiveFreeze!" in proc.stdout
        assert ("GradientNoise -> FreezeLayers: GradientNoise resolves its write conflict with FreezeLayers by "
                "running first") in proc.stdout
        assert "frozen layer unchanged: True; head changed: True" in proc.stdout
        assert "largest gradient norm applied: frozen 0," in proc.stdout
        match = re.search(r"^conflict: 64 steps, validation accuracy (\d\.\d+)", proc.stdout, flags=re.M)
        assert match, proc.stdout[-2000:]
        assert float(match.group(1)) >= 0.85

    def test_one_cycle(self, tmp_path: Path) -> None:
        """lr_find suggests a peak; the one-cycle schedule applied starts at peak/25, peaks a quarter into the
        fit, ends far below it, and the model learns the digits."""
        proc = run_python(["examples/one_cycle.py", "--quick"], tmp_path)
        suggested = re.search(r"^lr_find suggests (\S+) ", proc.stdout, flags=re.M)
        cycle = re.search(r"^one_cycle: (\d+) steps; lr (\S+) at step 1, peak (\S+) at step (\d+), (\S+) at the last "
                          r"step$", proc.stdout, flags=re.M)
        assert suggested and cycle, proc.stdout[-2000:]
        steps, peak_step = int(cycle[1]), int(cycle[4])
        first, peak, last = float(cycle[2]), float(cycle[3]), float(cycle[5])
        assert 1e-4 < float(suggested[1]) < 1.0 and peak == float(suggested[1])
        assert first == pytest.approx(peak / 25, rel=1e-2) and peak_step == -(-steps // 4) + 1 and last < first
        accuracies = re.findall(r"^ *(one_cycle|constant): 4 epochs, validation loss \S+, accuracy (\S+)$",
                                proc.stdout, flags=re.M)
        assert [name for name, _ in accuracies] == ["one_cycle", "constant"]
        assert all(float(accuracy) >= 0.9 for _, accuracy in accuracies)

    def test_resume_after_crash(self, tmp_path: Path) -> None:
        """A child process killed mid-epoch leaves complete checkpoints; the resumed fit ends bit for bit where an
        uninterrupted one does, and the event log holds both sessions and the rewind."""
        proc = run_python(["examples/resume_after_crash.py", "--quick"], tmp_path)
        assert "child: killed in epoch 3, step 16\nchild exited with status 3; checkpoints left: [" in proc.stdout
        resumed = re.search(r"^resumed from checkpoint_epoch_(\d{3})_loss_\S+\.pt: (\d) more epochs, 4 in total$",
                            proc.stdout, flags=re.M)
        assert resumed, proc.stdout[-2000:]
        assert int(resumed[1]) + int(resumed[2]) == 4 and int(resumed[1]) in (1, 2)
        assert "identical to an uninterrupted run: True" in proc.stdout
        assert re.search(r"^event log: 2 sessions, \d+ values, 1 rewind, 1 closed", proc.stdout, flags=re.M)

    def test_concurrent_logging(self, tmp_path: Path) -> None:
        """Two fits at once each deliver every step, in order, and every epoch summary to the slow async service,
        and write their event logs; the LinearRunner runs the same fit too."""
        proc = run_python(["examples/concurrent_logging.py", "--quick"], tmp_path)
        for run in ("fit-a", "fit-b"):
            line = (rf"^{run}: \S+s under the ActorRunner; the service received 96 steps \(all, in order: True\) "
                    r"and 4 epoch summaries; event log: \d+ values$")
            assert re.search(line, proc.stdout, flags=re.M), proc.stdout
        assert re.search(r"^the same fit under the LinearRunner: \S+s \(each of its 96 sends", proc.stdout, flags=re.M)
        match = re.search(r"validation accuracy fit-a (\S+), fit-b (\S+)$", proc.stdout, flags=re.M)
        assert match and min(float(match[1]), float(match[2])) >= 0.9


class TestDocs:
    def test_readme_quickstart_is_the_example(self) -> None:
        """README's quick-start block is examples/quickstart.py, verbatim."""
        blocks = python_blocks(ROOT / "README.md")
        assert blocks, "README.md has no python block"
        assert blocks[0] == quickstart_code()

    @pytest.mark.parametrize("doc", ["README.md", "docs/callbacks.md"])
    def test_snippets_run(self, doc: str, tmp_path: Path) -> None:
        """Every python block of the page runs, in order, as one script."""
        blocks = python_blocks(ROOT / doc)
        if doc == "README.md":
            blocks = blocks[1:]  # the quick-start is examples/quickstart.py
        assert blocks, f"{doc} has no python block to run"
        script = tmp_path / "snippets.py"
        script.write_text("\n\n".join(blocks))
        run_python([str(script)], tmp_path)
