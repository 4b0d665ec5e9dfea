"""The results of bench/scale_sim.py: the JSON document and the table printed from it."""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

from scale_sim_procs import Sampler

SWARMKIT_TASKS_PER_S = 4400.0
NOMAD_TASKS_PER_S = (1500.0, 3750.0)


def summarize(args: argparse.Namespace, join: dict[str, Any], run: dict[str, Any],
              facts: dict[str, Any], times: dict[str, Any],
              passes: list[tuple[float, int]], sampler: Sampler,
              idle: tuple[float, float]) -> dict[str, Any]:
    start = run["start"]
    prepared, started = times["prepared"].values(), times["started"].values()
    assigned_s = max(prepared) - start if prepared else 0.0
    run_passes = [(t, n) for t, n in passes if t >= start]
    scheduled_s = run_passes[-1][0] - start if run_passes else 0.0
    running_s = facts["running_committed_s"]  # the last RUNNING commit (the poll: coarser)
    end = start + run["running_s"]
    assigned_per_s = args.tasks / assigned_s if assigned_s else 0.0
    result = {
        "config": {"nodes": args.nodes, "tasks": args.tasks, "services": args.services,
                   "procs": args.procs, "poll_s": args.poll, "quick": args.quick,
                   "fake_nodes_nice": args.nice,
                   "cpus": os.cpu_count(), "python": platform.python_version()},
        "join": {k: v for k, v in join.items() if k != "start"},
        "run": {"created_s": facts["created_s"], "scheduled_s": round(scheduled_s, 2),
                "assigned_s": round(assigned_s, 2), "running_s": running_s,
                "running_p50_s": facts["running_committed_p50_s"],
                "running_seen_by_poll_s": run["running_s"],
                "last_container_started_s": round(max(started) - start, 2) if started else 0,
                "tasks_seen_by_nodes": len(times["prepared"]),
                "assigned_per_s": round(assigned_per_s, 1),
                "running_per_s": round(args.tasks / running_s, 1) if running_s else 0.0,
                "status_report_lag_p50_s": facts["report_lag_p50_s"],
                "status_report_lag_p99_s": facts["report_lag_p99_s"],
                "status_report_lag_max_s": facts["report_lag_max_s"],
                "scheduler_passes": len(run_passes),
                "largest_pass": max((n for _, n in run_passes), default=0),
                "create_calls_s": run["create_calls_s"], "status_polls": run["polls"]},
        "placement": {k: v for k, v in facts.items()
                      if not k.startswith(("created", "running_", "report_"))},
        "manager": {"join": sampler.window(join["start"], start, "manager"),
                    "idle": sampler.window(idle[0], idle[1], "manager"),
                    "run": sampler.window(start, end, "manager")},
        "machine": {"loadavg_1m_at_start": args.loadavg_at_start,
                    "other_cpu_pct_join": sampler.others(join["start"], start),
                    "other_cpu_pct_run": sampler.others(start, end)},
        "fake_nodes": {"join": sampler.window(join["start"], start, "agents"),
                       "run": sampler.window(start, end, "agents"),
                       "agent_restarts": times["agent_restarts"]},
        "baselines": {"swarmkit_scheduler_in_memory_tasks_per_s": SWARMKIT_TASKS_PER_S,
                      "nomad_containers_per_s": list(NOMAD_TASKS_PER_S)},
        "ratios": ratios(assigned_per_s, args.tasks / running_s if running_s else 0.0),
    }
    return result


def ratios(assigned_per_s: float, running_per_s: float) -> dict[str, float]:
    """Our rates over the baselines' (Nomad: over its lowest and its highest figure)."""
    out = {}
    for name, rate in (("assigned", assigned_per_s), ("running", running_per_s)):
        out[f"{name}_vs_swarmkit"] = round(rate / SWARMKIT_TASKS_PER_S, 3)
        out[f"{name}_vs_nomad_low"] = round(rate / NOMAD_TASKS_PER_S[0], 3)
        out[f"{name}_vs_nomad_high"] = round(rate / NOMAD_TASKS_PER_S[1], 3)
    return out


def table(r: dict[str, Any]) -> str:
    c, j, run, ratio = r["config"], r["join"], r["run"], r["ratios"]
    m = r["manager"]
    lo, hi = NOMAD_TASKS_PER_S

    def versus(name: str) -> tuple[str, str]:
        return (f"x{ratio[name + '_vs_swarmkit']:.2f}",
                f"x{ratio[name + '_vs_nomad_high']:.2f}-x{ratio[name + '_vs_nomad_low']:.2f}")

    rows = [
        ("figure", "Shoal", f"/ swarmkit {SWARMKIT_TASKS_PER_S:,.0f}/s",
         f"/ Nomad {lo:,.0f}-{hi:,.0f}/s"),
        ("tasks assigned/s", f"{run['assigned_per_s']:,.0f}", *versus("assigned")),
        ("tasks running/s", f"{run['running_per_s']:,.0f}", *versus("running")),
        ("all assigned (s)", f"{run['assigned_s']:.1f}", "", ""),
        ("all running (s)", f"{run['running_s']:.1f}", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{c['nodes']:,} nodes, {c['tasks']:,} tasks in {c['services']} services "
             f"({c['procs']} fake-node processes, {c['cpus']} CPUs)"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        f"tasks created by {run['created_s']:.1f} s, last scheduler pass done at "
        f"{run['scheduled_s']:.1f} s ({run['scheduler_passes']} passes), last task at its "
        f"node at {run['assigned_s']:.1f} s, half running at {run['running_p50_s']:.1f} s, all "
        f"at {run['running_s']:.1f} s (status report lag p50 "
        f"{run['status_report_lag_p50_s']:.2f} s, p99 {run['status_report_lag_p99_s']:.2f} s)",
        f"join: {c['nodes']:,} nodes ready in {j['ready_s']:.1f} s ({j['nodes_per_s']:.0f}/s; "
        f"certificates by {j['certificates_s']:.1f} s, {j['failed_joins']} failed joins)",
        f"manager CPU (% of one core): join {m['join']['cpu_pct']:.0f}, idle with "
        f"{c['nodes']:,} sessions {m['idle']['cpu_pct']:.0f}, run {m['run']['cpu_pct']:.0f}; "
        f"peak RSS {max(w['rss_peak_mib'] for w in m.values()):.0f} MiB",
        f"fake nodes CPU (% of one core): join {r['fake_nodes']['join']['cpu_pct']:.0f}, "
        f"run {r['fake_nodes']['run']['cpu_pct']:.0f}"
        + (f" (at nice {c['fake_nodes_nice']})" if c.get("fake_nodes_nice") else ""),
        f"other load on the machine (% of one core): join "
        f"{r['machine']['other_cpu_pct_join']:.0f}, run {r['machine']['other_cpu_pct_run']:.0f}"
        f" (1-min load average {r['machine']['loadavg_1m_at_start']:.1f} at the start)",
    ]
    lines += cluster_lines(r)
    if r["fake_nodes"]["agent_restarts"]:
        lines.append(f"WARNING: {r['fake_nodes']['agent_restarts']} fake nodes were restarted "
                     "because their agent ended after losing its session (see "
                     "bench/scale_sim_agents.py)")
    return "\n".join(lines)




def cluster_lines(r: dict[str, Any]) -> list[str]:
    """The managers' lines: heartbeats kept, the followers' lag, the takeover."""
    m = r.get("managers")
    if not m:
        return []
    lines = [f"managers: {m['count']} (leader {m['leader']}); nodes seen Down from the join to "
             f"the end of the run: at most {m['max_down']} at once, {m['ever_down']} in all "
             f"({m['samples']} samples every {m['interval_s']:g} s; the leader's /metrics "
             f"took up to {m['leader_scrape_s_max']:.3f} s, "
             f"{m['leader_scrape_s_total']:.1f} s in all)"]
    if len(m.get("leaders_seen", [])) > 1 or m.get("ticks_without_leader") or \
            m.get("read_errors") or m.get("write_errors"):
        lines.append(f"WARNING: leaders seen during the run {m['leaders_seen']}, "
                     f"{m['ticks_without_leader']} samples without a leader, "
                     f"{m['read_errors']} reads and {m['write_errors']} service creates a "
                     "manager could not answer (its quorum lost, then retried)")
    if m.get("start_attempts", 1) > 1:
        lines.append(f"the managers were started {m['start_attempts']} times: a join left a "
                     "manager without ManagerStatus (see scale_sim_cluster.Cluster)")
    for name, f in m["followers"].items():
        ms = f["lag_ms_est_max"]
        lines.append(f"follower {name}: behind the leader's applied index by p50 "
                     f"{f['lag_entries_p50']:.0f}, max {f['lag_entries_max']:.0f} entries" +
                     (f" (~{ms:.0f} ms at the leader's mean apply rate between two samples, "
                      "while busy)" if ms is not None else ""))
    t = r.get("takeover")
    if t:
        lines.append(f"takeover: {t['killed']} SIGKILLed; a write acknowledged after "
                     f"{t['write_acked_s']:.2f} s, {t['new_leader']} leads with every node's "
                     f"session after {t['all_sessions_s']:.2f} s and all Ready after "
                     f"{t['all_ready_s']:.2f} s; at most {t['max_down']} nodes Down meanwhile")
    return lines
