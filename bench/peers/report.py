"""Turn the workers' raw results into the summary, the Markdown report, the issue's targets and the plots."""

from __future__ import annotations

import statistics
from pathlib import Path

FRAMEWORKS = ("asyncloop", "ignite", "lightning", "fastai", "torch")
SCENARIOS = {"a": "minimal, no callbacks", "b": "defaults (progress + metrics)",
             "c": "trivial callbacks on step end", "d": "slow observer releasing the GIL",
             "e": "GIL-bound observer", "f": "checkpoint stall"}
#: the configuration of each peer that the issue's targets compare against
IGNITE_MIN = "engine_none"


def build(meta: dict, runs: list[dict]) -> dict:
    rows = []
    memory = None
    save_s = None
    build_counts: dict = {}
    for run in runs:
        if run.get("torch_save_s") is not None:
            save_s = run["torch_save_s"]
    for run in runs:
        fw, workload = run["framework"], run["workload"]
        cal = meta["calibration"].get(workload, {})
        for name, res in run["configs"].items():
            row = {"framework": fw, "workload": workload, "config": name, "scenario": res["scenario"],
                   "callbacks": res.get("callbacks"), "base": res.get("base")}
            if "na" in res:
                row["na"] = res["na"]
                rows.append(row)
                continue
            for key in ("us_per_step", "bare_us_per_step", "over_bare_us", "ratio", "cpu_us_per_step",
                        "cpu_over_bare_us", "same_weights", "weights_max_abs_diff", "fit_over_bare_us",
                        "loop_over_bare_us", "in_run_lost_ms", "in_run_bias_ms"):
                if key in res:
                    row[key] = res[key]
            row["rounds"] = len(res["wall"])
            row["over_bare_min_us"] = min(res["wall"]) - min(res["bare_wall"])
            row["diffs"] = [c - b for c, b in zip(res["wall"], res["bare_wall"])]
            if res["scenario"] == "f":
                n = run["checkpoints_per_fit"]
                row["lost_per_checkpoint_ms"] = res["over_bare_us"] * run["steps"] / n / 1000
                row["fit_lost_per_checkpoint_ms"] = res["fit_over_bare_us"] * run["steps"] / n / 1000
                if save_s:
                    row["torch_save_ms"] = save_s * 1000
                    row["lost_vs_torch_save"] = row["lost_per_checkpoint_ms"] / (save_s * 1000)
            if res["scenario"] in "de" and cal:
                row["block_us"] = cal["sleep_blocks_us"] if res["scenario"] == "d" else cal["gil_us"]
            rows.append(row)
        if "memory" in run:
            memory = summarize_memory(run["memory"])
        if "build_counts" in run:
            build_counts[workload] = run["build_counts"]
    by = {(r["framework"], r["workload"], r["config"]): r for r in rows}
    for r in rows:  # time lost per step to an observer: its configuration minus the one without the observer
        if r.get("base") and "na" not in r and r["scenario"] in ("d", "e"):
            base = by.get((r["framework"], r["workload"], r["base"]))
            if base and "na" not in base:
                r["lost_us"] = r["over_bare_us"] - base["over_bare_us"]
                r["hidden"] = 1 - r["lost_us"] / r["block_us"]
                if "loop_over_bare_us" in r:  # the loop alone, a detached observer's backlog at the end left out
                    r["loop_lost_us"] = r["loop_over_bare_us"] - base["over_bare_us"]
    for r in rows:  # a checkpoint's cost between fits: minus the same fit without checkpoints (the loop's own
        # per-step overhead is scenario a/b's, not the checkpoints'); a configuration without a base (torch.save
        # in the bare loop) is all checkpoint
        base = by.get((r["framework"], r["workload"], r.get("base")))
        if r["scenario"] == "f" and "lost_per_checkpoint_ms" in r and base and "na" not in base:
            base["checkpoint_base"] = True
            r["lost_per_checkpoint_ms"] -= base["lost_per_checkpoint_ms"]
            r["fit_lost_per_checkpoint_ms"] -= base["fit_lost_per_checkpoint_ms"]
            if r.get("torch_save_ms"):
                r["lost_vs_torch_save"] = r["lost_per_checkpoint_ms"] / r["torch_save_ms"]
    for r in rows:  # the in-run estimate against the bare loop's synchronous torch.save, measured the same way
        sync = by.get(("torch", r["workload"], "torch_save_sync"))
        if "in_run_lost_ms" in r and sync and sync.get("in_run_lost_ms"):
            r["in_run_vs_torch_save"] = r["in_run_lost_ms"] / sync["in_run_lost_ms"]
    summary = {"rows": rows, "memory": memory, "torch_save_ms": save_s * 1000 if save_s else None,
               "versions": {run["framework"]: run["versions"] for run in runs}, "build_counts": build_counts}
    summary["targets"] = targets(summary, by, meta)
    summary["weights_differ"] = [f"{r['framework']} {r['workload']} {r['config']}" for r in rows
                                 if "na" not in r and not r["same_weights"]]
    return summary


def summarize_memory(mem: dict) -> dict:
    samples = mem["samples"]
    if not samples:
        return {"steps": mem["steps"], "samples": []}
    tail = samples[len(samples) // 10:]  # after the first 10% (allocator warm-up)
    half = len(tail) // 2
    return {
        "steps": mem["steps"], "samples": samples,
        "rss_first_mb": tail[0][1], "rss_last_mb": tail[-1][1], "rss_max_mb": max(s[1] for s in samples),
        "rss_growth_mb": tail[-1][1] - tail[0][1],
        "lag_max_first_half": max(s[2] for s in tail[:half] or tail), "lag_max_second_half": max(s[2] for s in tail[half:]),
        "lag_max": max(s[2] for s in samples),
    }


def _get(by, fw, w, c, key="over_bare_us"):
    r = by.get((fw, w, c))
    if r is None or "na" in r or key not in r:
        return None
    return r[key]


def targets(summary: dict, by: dict, meta: dict) -> list[dict]:
    out = []

    def add(target, workload, holds, detail):
        out.append({"target": target, "workload": workload, "holds": holds, "detail": detail})

    workloads = {w for (_, w, _) in by}
    for w in ("tiny", "small"):
        if w not in workloads:
            continue
        ign = _get(by, "ignite", w, IGNITE_MIN)
        lin, act = _get(by, "asyncloop", w, "linear_defaults"), _get(by, "asyncloop", w, "actor_defaults")
        if ign is not None and lin is not None and act is not None:
            add("defaults, both runners: overhead <= 1/3 of ignite's minimal trainer", w,
                max(lin, act) <= ign / 3,
                f"linear {lin:+.0f} us, actor {act:+.0f} us; ignite minimal {ign:+.0f} us (1/3: {ign / 3:.0f} us)")
        if lin is not None and act is not None:
            add("ActorRunner defaults <= LinearRunner defaults + 10 us", w, act <= lin + 10,
                f"actor {act:+.0f} us vs linear {lin:+.0f} us")
        for runner in ("linear", "actor"):
            ratio = _get(by, "asyncloop", w, f"{runner}_none", "ratio")
            if ratio is not None:
                add(f"no callbacks ({runner}): within 3% of bare", w, ratio <= 1.03, f"ratio {ratio:.3f}")
        for runner in ("linear", "actor"):
            c1, c50 = _get(by, "asyncloop", w, f"{runner}_cb1"), _get(by, "asyncloop", w, f"{runner}_cb50")
            if c1 is not None and c50 is not None:
                slope = (c50 - c1) / 49
                add(f"<= +2 us per extra inline callback ({runner})", w, slope <= 2,
                    f"{slope:+.2f} us per callback (1 -> 50 callbacks: {c1:+.0f} -> {c50:+.0f} us)")
        need = {"tiny": 0.5, "small": 0.85}[w]
        r = by.get(("asyncloop", w, "actor_sleep"))
        if r and "hidden" in r:
            add(f"slow GIL-releasing observer: ActorRunner hides >= {need:.0%}", w, r["hidden"] >= need,
                f"hides {r['hidden']:.0%} (loses {r['lost_us']:+.0f} us of a {r['block_us']:.0f} us block)")
        others = [x for x in summary["rows"] if x["workload"] == w and x["scenario"] == "d" and "hidden" in x
                  and not (x["framework"] == "asyncloop" and x["config"] != "linear_sleep")]
        if others:
            add("... where the LinearRunner and every peer hide 0%", w, None,
                "; ".join(f"{x['framework']} {x['config']} {x['hidden']:.0%}" for x in others))
    if "small" in workloads:
        r = by.get(("asyncloop", "small", "process_gil"))
        t = by.get(("asyncloop", "small", "actor_gil"))
        thread = f"; thread actor {t['ratio']:.2f}x" if t and "ratio" in t else ""
        if r is None or "na" in r:
            add("GIL-bound observer in a process actor: <= 1.25x bare", "small", None,
                (r or {}).get("na", "not run") + thread)
        else:
            add("GIL-bound observer in a process actor: <= 1.25x bare", "small", r["ratio"] <= 1.25,
                f"{r['ratio']:.2f}x{thread}")
    if "medium" in workloads:
        # "within noise": |median paired difference| <= 3% of the bare step, or the paired differences of the
        # rounds straddle zero (the run cannot tell the configuration from the bare loop)
        verdicts = []
        for (fw, w, c), r in sorted(by.items()):
            if w == "medium" and r["scenario"] in "ab" and "na" not in r:
                rel = abs(r["over_bare_us"]) / r["bare_us_per_step"]
                d = r["diffs"]
                verdicts.append((fw, c, rel, rel <= 0.03 or min(d) <= 0 <= max(d)))
        asy = [v for v in verdicts if v[0] == "asyncloop"]
        if asy:
            add("medium: every configuration (a, b) within noise of bare (abs(over bare) <= 3% of a step, or the "
                "rounds' paired differences straddle 0)", "medium", all(v[3] for v in asy),
                "; ".join(f"{fw} {c} {rel:.1%}{'' if ok else ' (beyond noise)'}" for fw, c, rel, ok in verdicts))
    ck = [x for x in summary["rows"] if x["scenario"] == "f" and "lost_vs_torch_save" in x]
    act = next((x for x in ck if x["config"] == "actor_checkpointer"), None)
    if act:  # held only when both estimates hold: between fits (the pairs) and inside each fit
        in_run = act.get("in_run_vs_torch_save")
        detail = (f"loses {act['lost_per_checkpoint_ms']:.0f} ms per checkpoint = {act['lost_vs_torch_save']:.0%} of "
                  f"torch.save ({act['torch_save_ms']:.0f} ms)")
        if in_run is not None:
            detail += (f"; inside each fit {act['in_run_lost_ms']:.0f} ms = {in_run:.0%} of the bare loop's "
                       f"synchronous save measured the same way")
        add("checkpoint stall: ActorRunner loses <= 15% of a synchronous torch.save per checkpoint", act["workload"],
            act["lost_vs_torch_save"] <= 0.15 and (in_run is None or in_run <= 0.15), detail)
    mem = summary["memory"]
    if mem and mem.get("samples"):
        flat = mem["rss_growth_mb"] <= 2.0 and \
            mem["lag_max_second_half"] <= 1.5 * mem["lag_max_first_half"] + 50
        add(f"memory: RSS and actor lag flat over {mem['steps']} tiny steps (defaults + a detached logger)", "tiny",
            flat, f"RSS {mem['rss_first_mb']:.1f} -> {mem['rss_last_mb']:.1f} MB after the first 10% of the steps "
            f"({mem['rss_growth_mb'] * 2**20 / (mem['steps'] * 0.9):.0f} bytes/step; flat: <= 2 MB); lag max {mem['lag_max_first_half']} "
            f"(first half) / {mem['lag_max_second_half']} (second half) steps")
    for w, counts in summary.get("build_counts", {}).items():
        once = all(c["graphs"] == 1 for c in counts.values()) and all(
            counts[f"{r}_steps"]["plans"] == counts[f"{r}_steps_x10"]["plans"] for r in ("linear", "actor"))
        add("the graph and plans are built once per fit (50 callbacks)", w, once, "; ".join(
            f"{k}: {c['steps']} steps, {c['graphs']} graph, {c['plans']} plans" for k, c in counts.items()))
    out.extend(ahead(summary["rows"]))
    return out


def ahead(rows: list[dict]) -> list[dict]:
    """Per scenario and workload: asyncloop's best configuration against each peer's best."""
    out = []
    groups: dict = {}
    for r in rows:
        if "na" in r or r["framework"] == "torch" or r.get("checkpoint_base"):
            continue
        key = (r["workload"], r["scenario"], r.get("callbacks"))
        value = r.get("lost_per_checkpoint_ms", r["over_bare_us"])
        groups.setdefault(key, {}).setdefault(r["framework"], []).append((value, r["config"]))
    for (w, s, n), fws in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        if "asyncloop" not in fws or len(fws) < 2:
            continue
        mine = min(fws["asyncloop"])
        peers = {fw: min(v) for fw, v in fws.items() if fw != "asyncloop"}
        unit = "ms/checkpoint" if s == "f" else "us/step"
        label = SCENARIOS[s] + (f" ({n})" if n else "")
        add = {"target": f"asyncloop ahead of every peer: {label}", "workload": w,
               "holds": all(mine[0] < v[0] for v in peers.values()),
               "detail": f"asyncloop {mine[1]} {mine[0]:+.0f} {unit}; " + ", ".join(
                   f"{fw} {v[1]} {v[0]:+.0f}" for fw, v in peers.items())}
        out.append(add)
    return out


def _fmt(x, spec="+.0f"):
    return "" if x is None else format(x, spec)


def markdown(meta: dict, summary: dict) -> str:
    rows = summary["rows"]
    lines = [f"# asyncloop against its peers ({meta['mode']} run, {meta['date_utc']} UTC)", ""]
    lines += [f"Command: `{meta['command']}`; {meta['seconds']:.0f} s. Machine: {meta['cpu']}, {meta['cpus']} CPUs, "
              f"Python {meta['python']}, {meta['platform']}; load average at the end "
              f"{', '.join(f'{x:.1f}' for x in meta['load_average_at_end'])}."]
    if meta.get("note"):
        lines += ["", meta["note"]]
    versions: dict = {}
    for v in summary.get("versions", {}).values():
        versions.update(v)
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."]
    lines += ["", "Every configuration is timed right after a bare torch loop over the same batches in the same "
              "process, rounds interleaved; *over bare* is the median of the paired differences (us/step), *ratio* "
              "the median of paired ratios, *CPU over bare* the same for process CPU time. Observer scenarios "
              "count until the observer handled its last event (a backlog counts).", ""]
    for w, plan in meta["plans"].items():
        cal = meta["calibration"].get(w) or {}
        head = f"## Workload {w}: {plan['steps']} steps, warm-up {plan['warmup']}, {plan['rounds']} rounds"
        if cal:
            head += (f"; bare step {cal['bare_step_us']:.0f} us at calibration; slow observer blocks "
                     f"{cal['sleep_blocks_us']:.0f} us, GIL-bound observer works {cal['gil_us']:.0f} us")
        lines += [head, ""]
        ws = [r for r in rows if r["workload"] == w]
        if any(r["scenario"] == "f" for r in ws):
            lines += [f"Checkpoint every {meta['ckpt_every']} steps, {plan['steps'] // meta['ckpt_every']} per fit; "
                      f"synchronous `torch.save` of the same state: {_fmt(summary['torch_save_ms'], '.0f')} ms. "
                      "*lost per checkpoint* counts training time until the last batch was used, minus the same "
                      "framework's fit without checkpoints (its base row, whose own value is the loop's overhead); "
                      "*whole fit* until "
                      "the fit returned (writers drained; asyncloop's Checkpointer also writes an end-of-epoch "
                      "checkpoint then, and fsyncs every file). *Inside the fit*: the steps after each checkpoint "
                      "against the steps just before it in the same fit, minus the paired bare loop's value over the "
                      "same windows (`harness.in_run_lost`; free of the drift between fits), and that against the "
                      "bare loop's synchronous `torch.save` (torch_save_sync) measured the same way.", "",
                      "| framework | configuration | lost per checkpoint (ms) | vs torch.save | inside the fit (ms) | "
                      "vs torch.save inside the fit | whole fit, per checkpoint (ms) | CPU over bare (us/step) | same weights |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---|"]
            for r in ws:
                if "na" in r:
                    lines.append(f"| {r['framework']} | {r['config']} | {r['na']} | | | | | | |")
                    continue
                name = r["config"] + (" (the base: no checkpoints)" if r.get("checkpoint_base") else "")
                lines.append(f"| {r['framework']} | {name} | {r['lost_per_checkpoint_ms']:.0f} | "
                             f"{_fmt(r.get('lost_vs_torch_save'), '.0%')} | {_fmt(r.get('in_run_lost_ms'), '.0f')} | "
                             f"{_fmt(r.get('in_run_vs_torch_save'), '.0%')} | {r['fit_lost_per_checkpoint_ms']:.0f} | "
                             f"{r['cpu_over_bare_us']:+.0f} | {'yes' if r['same_weights'] else 'NO'} |")
            lines.append("")
            continue
        lines += ["| scenario | framework | configuration | us/step | bare us/step | over bare (us) | min - bare min (us) "
                  "| ratio | CPU over bare (us) | lost to observer (us) | hidden | same weights |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in sorted(ws, key=lambda r: (r["scenario"], FRAMEWORKS.index(r["framework"]))):
            if "na" in r:
                lines.append(f"| {r['scenario']} | {r['framework']} | {r['config']} | {r['na']} | | | | | | | | |")
                continue
            lines.append(
                f"| {r['scenario']} | {r['framework']} | {r['config']} | {r['us_per_step']:.0f} | "
                f"{r['bare_us_per_step']:.0f} | {r['over_bare_us']:+.0f} | {r['over_bare_min_us']:+.0f} | {r['ratio']:.2f} | "
                f"{r['cpu_over_bare_us']:+.0f} | {_fmt(r.get('lost_us'))} | {_fmt(r.get('hidden'), '.0%')} | "
                f"{'yes' if r['same_weights'] else 'NO'} |")
        loops = [r for r in ws if "loop_lost_us" in r]
        if loops:
            lines += ["", "Observers, the loop alone (until the last batch; a detached observer's backlog left out): "
                      + "; ".join(f"{r['framework']} {r['config']} loses {r['loop_lost_us']:+.0f} us/step" for r in loops)]
        lines.append("")
    mem = summary["memory"]
    if mem and mem.get("samples"):
        lines += [f"## Memory ({mem['steps']} tiny steps, ActorRunner, defaults + a detached logger)", "",
                  f"RSS {mem['rss_first_mb']:.1f} MB after 10% of the steps, {mem['rss_last_mb']:.1f} MB at the end "
                  f"(max {mem['rss_max_mb']:.1f}); the detached logger's lag: at most {mem['lag_max_first_half']} steps "
                  f"in the first half, {mem['lag_max_second_half']} in the second.", ""]
    lines += ["## Targets (issue 14), from this run", "", "| target | workload | holds | measured |", "|---|---|---|---|"]
    for t in summary["targets"]:
        holds = {True: "yes", False: "**no**", None: "n/a"}[t["holds"]]
        lines.append(f"| {t['target']} | {t['workload']} | {holds} | {t['detail']} |")
    lines.append("")
    if summary["weights_differ"]:
        lines += ["Configurations that did NOT train to the bare loop's weights: " + ", ".join(summary["weights_differ"]), ""]
    else:
        lines += ["Every configuration trained to exactly the bare loop's weights (max |difference| 0).", ""]
    return "\n".join(lines)


def plots(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "na" not in r]
    workloads = [w for w in ("tiny", "small") if any(r["workload"] == w and r["scenario"] == "c" for r in rows)]
    if workloads:
        fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
        for ax, w in zip(axes[0], workloads):
            series: dict = {}
            for r in rows:
                if r["workload"] == w and r["scenario"] == "c":
                    label = f"{r['framework']} {r['config'].rsplit('_', 1)[0]}"
                    series.setdefault(label, []).append((r["callbacks"], r["over_bare_us"]))
            for label, pts in sorted(series.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xlabel("trivial callbacks on step end")
            ax.set_ylabel("us per step over the bare loop")
            ax.set_title(f"cost vs number of callbacks ({w})")
            ax.set_xticks([1, 10, 50])
            ax.set_yscale("symlog", linthresh=100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "callbacks.png", dpi=110)
        plt.close(fig)
    workloads = [w for w in ("tiny", "small", "medium") if any(r["workload"] == w and "lost_us" in r
                                                               and r["scenario"] == "d" for r in rows)]
    if workloads:
        fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.2), squeeze=False)
        for ax, w in zip(axes[0], workloads):
            pts = [r for r in rows if r["workload"] == w and r["scenario"] == "d" and "lost_us" in r]
            pts.sort(key=lambda r: FRAMEWORKS.index(r["framework"]))
            labels = [f"{r['framework']}\n{r['config']}" for r in pts]
            colors = ["tab:blue" if r["framework"] == "asyncloop" else "tab:gray" for r in pts]
            scale, unit = (1000, "ms") if pts[0]["block_us"] > 5000 else (1, "us")
            ax.bar(range(len(pts)), [r["lost_us"] / scale for r in pts], color=colors)
            ax.axhline(pts[0]["block_us"] / scale, color="tab:red", linestyle="--", label="the observer's block")
            ax.set_xticks(range(len(pts)), labels, fontsize=7, rotation=30, ha="right")
            ax.set_ylabel(f"training time lost per step ({unit})")
            ax.set_title(f"slow observer (sleeps one bare step) - {w}")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(out / "observer.png", dpi=110)
        plt.close(fig)
