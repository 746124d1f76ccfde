#!/usr/bin/env python3
"""CLI `ensure` cache-hit latency of two warmcache binaries, side by side in the same run.

Usage:  python3 bench/compare_hit.py BEFORE_BIN AFTER_BIN [--sizes 100,1000] [--reps 300] [--work DIR]

For each size: one generated project (the layout of `bench/bench.py`'s ensure section: n small
files under `src/` and a `warmcache.toml` entry over `src/**`), and one fresh cache root per
binary (the two binaries may not share a catalog format, so they never share a root). The first
`ensure` of each binary must report `built`, the second `hit`; then the timed hits alternate call
by call, BEFORE, AFTER, BEFORE, AFTER, ..., so that whatever else the machine does at that moment
is billed to both alike. `--version` is timed the same way (process start-up). Each call is one
whole process timed with time.perf_counter; the table shows median / p90 and the ratio of the
medians (AFTER ÷ BEFORE: above 1 means AFTER is slower), with a 95% bootstrap interval of that
ratio, so that a difference can be told from noise. Also printed: the load average at the start
and the end and how busy the CPUs were during the run (from /proc/stat, where there is one).
Builds nothing: pass the two release binaries.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # importing bench.py must leave no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ENSURE_NAME, REPO, make_inputs, med_p90, pct, rm, run_json, tree_stats, warm  # noqa: E402


def alternating(cmd_a, cmd_b, reps, cwd=None, warmup=3):
    """Runs cmd_a, cmd_b, cmd_a, cmd_b, ... (`warmup` untimed pairs first, then `reps` timed pairs);
    returns the two lists of seconds per run."""
    out_a, out_b = [], []
    for i in range(warmup + reps):
        for cmd, out in ((cmd_a, out_a), (cmd_b, out_b)):
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"benchmark command failed ({proc.returncode}): {cmd}\n{proc.stderr.decode()}")
            if i >= warmup:
                out.append(elapsed)
    return out_a, out_b


def ratio_ci(a, b, rounds=2000, seed=1):
    """95% bootstrap interval of median(b) / median(a), resampling the pairs (a[i], b[i]) together
    (they ran next to each other, under the same load)."""
    rng = random.Random(seed)
    n = len(a)
    ratios = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(b[i] for i in idx) / statistics.median(a[i] for i in idx))
    ratios.sort()
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def cpu_times():
    """(busy, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="the warmcache binary before the change")
    parser.add_argument("after", help="the warmcache binary after the change")
    parser.add_argument("--sizes", default="100,1000", help="comma-separated input counts (default 100,1000)")
    parser.add_argument("--reps", type=int, default=300, help="timed hits of each binary per size (default 300)")
    parser.add_argument("--work", default=os.path.join(REPO, "target", "bench-work", "compare-hit"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    bins = {}
    for label, path in (("before", args.before), ("after", args.after)):
        path = os.path.abspath(path)
        if not os.access(path, os.X_OK):
            parser.error(f"{label} binary {path} is not an executable file")
        bins[label] = path
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)

    load0 = os.getloadavg()
    cpu0 = cpu_times()
    started = time.perf_counter()
    versions = {
        k: subprocess.run([p, "--version"], capture_output=True, text=True).stdout.strip() for k, p in bins.items()
    }
    v_before, v_after = alternating([bins["before"], "--version"], [bins["after"], "--version"], args.reps)

    rows = []
    for n in sizes:
        project = os.path.join(work, f"inputs-{n}")
        make_inputs(project, n)
        _, size = tree_stats(os.path.join(project, "src"))
        warm(os.path.join(project, "src"))
        cmds = {}
        for label, path in bins.items():
            root = os.path.join(work, f"root-{label}-{n}")
            rm(root)  # a fresh cache of its own for each binary
            cmd = [path, "--root", root, "--json", "ensure", ENSURE_NAME]
            first = run_json(cmd, cwd=project)
            again = run_json(cmd, cwd=project)
            if first.get("status") != "built" or again.get("status") != "hit":
                raise SystemExit(
                    f"{label}: expected built then hit, got {first.get('status')} then {again.get('status')}"
                )
            cmds[label] = [path, "--root", root, "ensure", ENSURE_NAME]
        before, after = alternating(cmds["before"], cmds["after"], args.reps, cwd=project)
        for label, path in bins.items():
            root = os.path.join(work, f"root-{label}-{n}")
            last = run_json([path, "--root", root, "--json", "ensure", ENSURE_NAME], cwd=project)
            if last.get("status") != "hit":
                raise SystemExit(f"{label}: the timed runs were not all hits (last: {last.get('status')})")
        rows.append((n, size, before, after))

    elapsed = time.perf_counter() - started
    cpu1 = cpu_times()
    load1 = os.getloadavg()
    busy = ""
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
        share = 100 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1])
        busy = f"; all CPUs {share:.0f}% busy during the run (this harness included)"
    print(
        f"Machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; load average {load0[0]:.1f} at start, "
        f"{load1[0]:.1f} at end{busy}; {args.reps} timed runs of each binary per row, alternating; took {elapsed:.0f} s"
    )
    print(f"BEFORE: {versions['before']}; AFTER: {versions['after']}\n")
    lo, hi = ratio_ci(v_before, v_after)
    vratio = statistics.median(v_after) / statistics.median(v_before)
    print(
        "| inputs | before: CLI hit median / p90 | after: CLI hit median / p90 | after ÷ before (medians, 95% CI) "
        "| `--version` before / after (medians) |"
    )
    print("| --- | --- | --- | --- | --- |")
    vcell = f"{statistics.median(v_before) * 1000:.2f} ms / {statistics.median(v_after) * 1000:.2f} ms"
    for n, size, before, after in rows:
        lo_n, hi_n = ratio_ci(before, after)
        r = statistics.median(after) / statistics.median(before)
        print(
            f"| {n:,} files, {size / 2**20:.1f} MiB | {med_p90(before)} | {med_p90(after)} "
            f"| {r:.2f}× ({lo_n:.2f}–{hi_n:.2f}) | {vcell} |"
        )
    print(
        f"\n`--version` alone (process start-up): before {med_p90(v_before)}, after {med_p90(v_after)}, "
        f"after ÷ before {vratio:.2f}× ({lo:.2f}–{hi:.2f})."
    )
    # Finer than the table's rounding, for whoever wants to look closer.
    print("\nMedians in µs (before, after; p10 before, after):")
    for n, _, before, after in rows:
        print(
            f"- {n} inputs: {statistics.median(before) * 1e6:.0f}, {statistics.median(after) * 1e6:.0f}; "
            f"{pct(before, 0.1) * 1e6:.0f}, {pct(after, 0.1) * 1e6:.0f}"
        )
    print(
        f"- --version: {statistics.median(v_before) * 1e6:.0f}, {statistics.median(v_after) * 1e6:.0f}; "
        f"{pct(v_before, 0.1) * 1e6:.0f}, {pct(v_after, 0.1) * 1e6:.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
