#!/usr/bin/env python3
"""warmcache benchmarks, side by side with what a user would run instead.

Usage:  python3 bench/bench.py [SECTION ...] [--runs N] [--work DIR]
Sections: import (default: all sections). Prints Markdown tables for BENCHMARKS.md.

Every figure is the median of N runs (default 3) of a whole command, wall time, with the page
cache warm (the source is read once before timing), on the same file system as --work. Peak
memory is the child's max RSS from wait4(2). Builds warmcache in release mode first.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "warmcache")


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=REPO, check=True)


def timed(cmd, env=None, shell=False):
    """Runs a command; returns (seconds, peak RSS in KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        err = proc.stderr.read().decode(errors="replace")
        raise SystemExit(f"benchmark command failed ({status}): {cmd}\n{err}")
    return elapsed, usage.ru_maxrss


def median_run(make_cmd, prepare, runs, shell=False):
    """Runs prepare() then the command `runs` times; returns the median time and the max RSS."""
    times, peaks = [], []
    for i in range(runs):
        prepare(i)
        t, rss = timed(make_cmd(i), shell=shell)
        times.append(t)
        peaks.append(rss)
    return statistics.median(times), max(peaks)


def rm(path):
    if os.path.lexists(path):
        subprocess.run(["chmod", "-R", "u+w", path], check=False)
        shutil.rmtree(path, ignore_errors=True)


def tree_stats(path):
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def python_lib():
    import sysconfig

    lib = os.path.dirname(sysconfig.get_paths()["stdlib"])
    return lib


def warm(path):
    subprocess.run(f"tar -C '{path}' -cf - . > /dev/null", shell=True, check=True)


def bench_import(work, runs):
    src = python_lib()
    files, size = tree_stats(src)
    warm(src)
    dst = os.path.join(work, "dst")
    root = os.path.join(work, "root")

    def clean(_):
        rm(dst)
        rm(root)

    rows = []
    cases = [
        ("`cp -a`", lambda i: ["cp", "-a", src, dst], False, False),
        ("`cp -a` + `sync -f` (durable)", lambda i: f"cp -a '{src}' '{dst}' && sync -f '{dst}'", True, True),
        ("`tar -c \\| tar -x`", lambda i: f"mkdir -p '{dst}' && tar -C '{src}' -cf - . | tar -C '{dst}' -xf -", True, False),
        (
            "`tar -c \\| tar -x` + `sync -f` (durable)",
            lambda i: f"mkdir -p '{dst}' && tar -C '{src}' -cf - . | tar -C '{dst}' -xf - && sync -f '{dst}'",
            True,
            True,
        ),
        ("`warmcache import` (always durable)", lambda i: [BIN, "--root", root, "-q", "import", src, "--name", "lib"], False, True),
    ]
    results = {}
    for label, cmd, shell, durable in cases:
        t, rss = median_run(cmd, clean, runs, shell=shell)
        results[label] = (t, rss, durable)
    clean(0)
    ours = results["`warmcache import` (always durable)"][0]
    print(f"\n### Import of a real tree: `{src}` ({files} files, {size / 2**20:.0f} MiB)\n")
    print("| command | durable | median wall time | warmcache time ÷ this | peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    for label, (t, rss, durable) in results.items():
        print(f"| {label} | {'yes' if durable else 'no'} | {t:.2f} s | {ours / t:.2f}× | {rss / 1024:.1f} MiB |")

    # Peak memory against tree size: the same tool on subtrees of growing size.
    print("\nPeak memory of `warmcache import` against the size of the tree:\n")
    print("| tree | files | MiB | peak RSS |")
    print("| --- | --- | --- | --- |")
    py = [d for d in os.listdir(src) if d.startswith("python3")]
    subtrees = [os.path.join(src, py[0], "json"), os.path.join(src, py[0], "email"), os.path.join(src, py[0]), src] if py else [src]
    for sub in subtrees:
        f, s = tree_stats(sub)
        _, rss = median_run(lambda i: [BIN, "--root", root, "-q", "import", sub], clean, 1)
        print(f"| `{sub}` | {f} | {s / 2**20:.0f} | {rss / 1024:.1f} MiB |")
    clean(0)


SECTIONS = {"import": bench_import}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help="one or more of: " + ", ".join(SECTIONS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(REPO, "target", "bench-work"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    build()
    print(f"Machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; work dir {args.work}")
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    for name in args.sections or list(SECTIONS):
        SECTIONS[name](args.work, args.runs)


if __name__ == "__main__":
    sys.exit(main())
