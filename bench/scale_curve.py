"""How the leader's cost grows with the cluster (issue 11 goal 5): bench/scale_sim.py on 3
managers at several node counts, tasks = --tasks-per-node x nodes, one run after the other.

For each node count it runs `scale_sim.py --managers 3 --nodes N --tasks T` as a subprocess
(its own JSON in a temporary file) and keeps, per point: committed tasks/s (tasks over the
last RUNNING commit), convergence time (first create to the last RUNNING commit), the
leader's CPU during the run (% of one core, and CPU-seconds per 1,000 tasks: flat means the
leader's work per task does not grow with the cluster), its peak RSS, the nodes seen Down
and the followers' largest lag. Writes bench/results/scale_curve.json and draws
bench/results/scale_curve.svg (matplotlib, Agg): four panels against node count.

    .venv/bin/python bench/scale_curve.py                       # 500,1000,2000,5000 nodes
    .venv/bin/python bench/scale_curve.py --nodes 50,100 --tasks-per-node 5 --procs 2
    .venv/bin/python bench/scale_curve.py --from-json           # redraw the SVG only

The full sweep (5,000 nodes, 100,000 tasks) needs the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
NODES_PER_PROC = 250  # fake nodes per process in scale_sim's full run


def point(nodes: int, tasks: int, result: dict[str, Any]) -> dict[str, Any]:
    """The figures the curve draws, from one scale_sim result."""
    run, leader = result["run"], result["manager"]
    cpu_s = leader["run"]["cpu_s"]
    managers = result.get("managers", {})
    lags = [f["lag_entries_max"] for f in managers.get("followers", {}).values()]
    return {"nodes": nodes, "tasks": tasks,
            "committed_per_s": run["running_per_s"], "assigned_per_s": run["assigned_per_s"],
            "convergence_s": run["running_s"], "join_s": result["join"]["ready_s"],
            "leader_cpu_pct": leader["run"]["cpu_pct"], "leader_cpu_s": cpu_s,
            "leader_cpu_s_per_1k_tasks": round(1000 * cpu_s / tasks, 3) if tasks else 0.0,
            "leader_idle_cpu_pct": leader["idle"]["cpu_pct"],
            "leader_rss_mib": max(w["rss_peak_mib"] for w in leader.values()),
            "max_down": managers.get("max_down"), "ever_down": managers.get("ever_down"),
            "follower_lag_entries_max": max(lags, default=None),
            "other_cpu_pct_run": result["machine"]["other_cpu_pct_run"],
            "agent_restarts": result["fake_nodes"]["agent_restarts"],
            "takeover_write_s": result.get("takeover", {}).get("write_acked_s"),
            "takeover_ready_s": result.get("takeover", {}).get("all_ready_s")}


def run_point(args: argparse.Namespace, nodes: int, tmp: Path) -> dict[str, Any]:
    tasks = args.tasks_per_node * nodes
    procs = args.procs or max(2, -(-nodes // NODES_PER_PROC))
    out = tmp / f"scale_sim-{nodes}.json"
    argv = [sys.executable, str(BENCH / "scale_sim.py"), "--managers", str(args.managers),
            "--nodes", str(nodes), "--tasks", str(tasks), "--procs", str(procs),
            "--services", str(args.services), "--idle", str(args.idle),
            "--timeout", str(args.timeout), "--watch", str(args.watch), "--json", str(out)]
    if args.takeover:
        argv.append("--takeover")
    print(f"== {nodes:,} nodes, {tasks:,} tasks, {procs} fake-node processes", flush=True)
    began = time.time()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:  # kept as a point that did not converge: the curve says so
        print(f"   scale_sim.py at {nodes} nodes exited {proc.returncode}", flush=True)
        return {"nodes": nodes, "tasks": tasks, "failed": f"scale_sim.py exited "
                f"{proc.returncode} after {time.time() - began:.0f} s (see its output)"}
    result = json.loads(out.read_text())
    print(f"   took {time.time() - began:.0f} s", flush=True)
    return {**point(nodes, tasks, result), "result": result}


def added_point(path: Path) -> dict[str, Any]:
    """A point from a scale_sim.py result written by a run of its own."""
    result = json.loads(path.read_text())
    config = result["config"]
    return {**point(config["nodes"], config["tasks"], result), "result": result,
            "added_from": str(path)}


def draw(doc: dict[str, Any], svg: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    pts = sorted((p for p in doc["points"] if "failed" not in p), key=lambda p: p["nodes"])
    failed = [p["nodes"] for p in doc["points"] if "failed" in p]
    x = [p["nodes"] for p in pts]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    panels = [
        (axes[0][0], "committed_per_s", "committed tasks/s", "tasks running per second"),
        (axes[0][1], "convergence_s", "convergence (s)", "first create to last RUNNING"),
        (axes[1][0], "leader_cpu_pct", "leader CPU (% of one core)", "leader CPU, run phase"),
        (axes[1][1], "leader_rss_mib", "leader RSS (MiB)", "leader peak RSS"),
    ]
    for ax, key, ylabel, title in panels:
        ax.plot(x, [p[key] for p in pts], marker="o", color="tab:blue")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    cpu = axes[1][0]
    cpu.set_ylabel("leader CPU (% of one core)", color="tab:blue")
    per_task = cpu.twinx()  # same panel: the work per task is what should stay flat
    per_task.plot(x, [p["leader_cpu_s_per_1k_tasks"] for p in pts], marker="s",
                  linestyle="--", color="tab:orange")
    per_task.set_ylabel("leader CPU-s per 1,000 tasks", color="tab:orange")
    per_task.set_ylim(bottom=0)
    for ax in axes[1]:
        ax.set_xlabel("simulated nodes")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{n:,}" for n in x])
        ax.minorticks_off()
    c = doc["config"]
    missing = f"; did not converge at {', '.join(f'{n:,}' for n in failed)} nodes" \
        if failed else ""
    managers = f"{c['managers']} manager{'s' if c['managers'] != 1 else ''}"
    fig.suptitle(f"Shoal on {managers}: {c['tasks_per_node']} tasks per node "
                 f"({doc.get('date', '')}){missing}")
    fig.tight_layout()
    svg.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(svg)  # the format from the suffix: .svg, or .png for a quick look
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="500,1000,2000,5000", help="comma-separated node counts")
    p.add_argument("--tasks-per-node", type=int, default=20)
    p.add_argument("--managers", type=int, default=3, choices=(1, 3))
    p.add_argument("--procs", type=int, default=0,
                   help=f"fake-node processes per run (0: one per {NODES_PER_PROC} nodes, >= 2)")
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=900.0, help="per phase of each run")
    p.add_argument("--takeover", action="store_true", help="also time a leader takeover")
    p.add_argument("--watch", type=float, default=5.0, metavar="SECONDS",
                   help="scale_sim's --watch: the leader's /metrics lists every task, so "
                        "at 100,000 tasks a sample costs it more than at 1,000")
    p.add_argument("--json", type=Path, default=RESULTS / "scale_curve.json")
    p.add_argument("--svg", type=Path, default=RESULTS / "scale_curve.svg")
    p.add_argument("--from-json", action="store_true",
                   help="only redraw the SVG from --json, running nothing")
    p.add_argument("--add-point", type=Path, action="append", default=[], metavar="JSON",
                   help="a scale_sim.py result run on its own (e.g. the largest size, with "
                        "options of its own), taken as a point of the curve (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        draw(json.loads(args.json.read_text()), args.svg)
        print(f"drew {args.svg} from {args.json}")
        return 0
    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "config": {"managers": args.managers, "nodes": counts,
                   "tasks_per_node": args.tasks_per_node,
                   "procs": args.procs or f"1 per {NODES_PER_PROC} nodes",
                   "services": args.services},
        "points": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoal-curve-") as tmp:
        for nodes in counts:
            doc["points"].append(run_point(args, nodes, Path(tmp)))
            args.json.write_text(json.dumps(doc, indent=2) + "\n")  # a point at a time
    for path in args.add_point:
        doc["points"].append(added_point(path))
    doc["points"].sort(key=lambda p: p["nodes"])
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    draw(doc, args.svg)
    print(f"{'nodes':>6} {'tasks':>7} {'tasks/s':>8} {'conv s':>7} {'CPU %':>6} "
          f"{'CPU-s/1k':>8} {'RSS MiB':>8} {'down':>5}")
    for p in doc["points"]:
        if "failed" in p:
            print(f"{p['nodes']:>6,} {p['tasks']:>7,} did not converge: {p['failed']}")
            continue
        print(f"{p['nodes']:>6,} {p['tasks']:>7,} {p['committed_per_s']:>8,.0f} "
              f"{p['convergence_s']:>7.1f} {p['leader_cpu_pct']:>6.0f} "
              f"{p['leader_cpu_s_per_1k_tasks']:>8.2f} {p['leader_rss_mib']:>8.0f} "
              f"{p['max_down'] if p['max_down'] is not None else '-':>5}")
    print(f"results: {args.json}, {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
