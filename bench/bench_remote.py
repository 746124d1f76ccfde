#!/usr/bin/env python3
"""Benchmark of `warmcache snapshot` / `warmcache restore` against the pipeline a user would
write instead, on the same local S3 server:

    tar -c | zstd -T0 | aws s3 cp - s3://...          (snapshot)
    aws s3 cp s3://... - | zstd -d | tar -x           (restore)

The tree is the Python installation's `lib/` (from `sysconfig`): a real dependency tree of
hundreds of MB and tens of thousands of files. The S3 server is the project's own
`examples/s3_server.rs` (s3s + s3s-fs on loopback), built and started here. The AWS CLI comes
from PyPI: when `aws` is not on PATH it is installed into a virtual environment under WORK.

Every figure is the median of RUNS runs, wall time, page cache warm. Peak RSS is `ru_maxrss`
from wait4(2): for a pipeline, the largest single process of it (the kernel reports the maximum
over the waited-for descendants, not their sum).

Usage:  python3 bench/bench_remote.py [--runs N] [--work DIR] [--bin PATH]
or, from bench.py:  bench_remote(work, runs, bin_path)
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "warmcache-bench"
ACCESS_KEY = "warmcache"  # the static keys of examples/s3_server.rs
SECRET_KEY = "warmcache-secret"


def _rm(path):
    if os.path.lexists(path):
        subprocess.run(["chmod", "-R", "u+w", path], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _tree_stats(path):
    files = size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def _python_lib():
    return os.path.dirname(sysconfig.get_paths()["stdlib"])


def _timed(cmd, env):
    """Runs a command (a list, or a bash pipeline string with pipefail); returns (seconds, KiB)."""
    if isinstance(cmd, str):
        cmd = ["bash", "-o", "pipefail", "-c", cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0:
        raise SystemExit(f"benchmark command failed ({status}): {cmd}\n{err}")
    return elapsed, usage.ru_maxrss


def _median(make_cmd, prepare, runs, env):
    times, peaks = [], []
    for i in range(runs):
        prepare(i)
        t, rss = _timed(make_cmd(i), env)
        times.append(t)
        peaks.append(rss)
    return statistics.median(times), max(peaks)


def _aws(work):
    """The `aws` command: the one on PATH if it runs, else one installed from PyPI into WORK."""
    found = shutil.which("aws")
    if found and subprocess.run([found, "--version"], capture_output=True).returncode == 0:
        return found
    venv = os.path.join(work, "awscli-venv")
    aws = os.path.join(venv, "bin", "aws")
    if not os.path.exists(aws):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "awscli"], check=True)
    return aws


def _start_server(data):
    """Builds and starts examples/s3_server.rs on a free loopback port; returns (process, endpoint)."""
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "--example", "s3_server"], cwd=REPO, check=True
    )
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    server_bin = os.path.join(os.path.abspath(target), "release", "examples", "s3_server")
    proc = subprocess.Popen(
        [server_bin, data, "--bucket", BUCKET], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("endpoint="):
        proc.kill()
        raise SystemExit(f"the S3 server did not start: {line!r}")
    return proc, line.removeprefix("endpoint=")


def _env(endpoint):
    """The environment for both tools: this server only, nothing from the caller's AWS setup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("WARMCACHE_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def _object_size(data, key):
    path = os.path.join(data, BUCKET, key)
    return os.path.getsize(path) if os.path.exists(path) else 0


def _warmcache_archive_size(data, key):
    folder = os.path.join(data, BUCKET, key, "snapshots")
    sizes = [os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".tar.zst")]
    return max(sizes) if sizes else 0


def bench_remote(work, runs, bin_path):
    """Prints the Markdown tables for snapshot and restore through a local S3 server."""
    os.makedirs(work, exist_ok=True)
    work = os.path.abspath(work)
    aws = _aws(work)
    data = os.path.join(work, "s3-data")
    _rm(data)
    os.makedirs(data)
    server, endpoint = _start_server(data)
    try:
        _run(work, runs, bin_path, aws, data, _env(endpoint))
    finally:
        server.terminate()
        server.wait()
        _rm(data)


def _run(work, runs, bin_path, aws, data, env):
    src = _python_lib()
    files, size = _tree_stats(src)
    subprocess.run(f"tar -C '{src}' -cf - . > /dev/null", shell=True, check=True)  # warm the page cache
    root = os.path.join(work, "remote-root")
    dst = os.path.join(work, "remote-dst")
    url = f"s3://{BUCKET}"

    def clean(_):
        _rm(dst)

    def wc(*args):
        # --strict: a degraded run (remote error turned into a warning) must not count as fast.
        return [bin_path, "--root", root, "-q", *args, "--strict"]

    snap = {}
    snap["pipeline"] = _median(
        lambda i: f"tar -C '{src}' -cf - . | zstd -T0 -q | '{aws}' s3 cp --only-show-errors - {url}/pipe/{i}.tar.zst",
        clean,
        runs,
        env,
    )
    # A fresh key per run, so every run uploads.
    snap["warmcache"] = _median(lambda i: wc("snapshot", src, "--remote", f"{url}/wc/{i}"), clean, runs, env)
    snap["unchanged"] = _median(lambda i: wc("snapshot", src, "--remote", f"{url}/wc/0"), clean, runs, env)

    rest = {}
    rest["pipeline"] = _median(
        lambda i: f"mkdir -p '{dst}' && '{aws}' s3 cp --only-show-errors {url}/pipe/0.tar.zst - | zstd -d -q | tar -C '{dst}' -xf -",
        clean,
        runs,
        env,
    )
    rest["pipeline+sync"] = _median(
        lambda i: f"mkdir -p '{dst}' && '{aws}' s3 cp --only-show-errors {url}/pipe/0.tar.zst - | zstd -d -q "
        f"| tar -C '{dst}' -xf - && sync -f '{dst}'",
        clean,
        runs,
        env,
    )
    rest["warmcache"] = _median(lambda i: wc("restore", dst, "--remote", f"{url}/wc/0"), clean, runs, env)
    rest["unchanged"] = _median(lambda i: wc("restore", dst, "--remote", f"{url}/wc/0"), lambda i: None, runs, env)
    clean(0)

    pipe_zst = _object_size(data, "pipe/0.tar.zst")
    ours_zst = _warmcache_archive_size(data, "wc/0")
    print(
        f"\n### Snapshot and restore through a local S3 server: `{src}` ({files} files, {size / 2**20:.0f} MiB)\n"
    )
    print(
        f"Archive: warmcache {ours_zst / 2**20:.0f} MiB (zstd -3, worker threads), pipeline {pipe_zst / 2**20:.0f} MiB "
        f"(zstd -3 -T0). Server: examples/s3_server.rs (s3s-fs) on loopback. Speed-up = pipeline time ÷ this time.\n"
    )
    print("| operation | command | durable | median wall time | speed-up vs pipeline | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = [
        ("snapshot", "`tar -c \\| zstd -T0 \\| aws s3 cp -`", "n/a", snap["pipeline"], snap["pipeline"]),
        ("snapshot", "`warmcache snapshot`", "n/a", snap["warmcache"], snap["pipeline"]),
        ("snapshot", "`warmcache snapshot`, tree unchanged (uploads nothing)", "n/a", snap["unchanged"], snap["pipeline"]),
        ("restore", "`aws s3 cp - \\| zstd -d \\| tar -x`", "no", rest["pipeline"], rest["pipeline"]),
        ("restore", "the same + `sync -f`", "yes", rest["pipeline+sync"], rest["pipeline"]),
        ("restore", "`warmcache restore` (atomic swap)", "yes", rest["warmcache"], rest["pipeline"]),
        ("restore", "`warmcache restore`, DIR unchanged (downloads nothing)", "yes", rest["unchanged"], rest["pipeline"]),
    ]
    for op, label, durable, (t, rss), (base, _) in rows:
        print(f"| {op} | {label} | {durable} | {t:.2f} s | {base / t:.2f}× | {rss / 1024:.1f} MiB |")

    # Peak memory against tree size: bounded by the transfer settings, not by the tree.
    print("\nPeak RSS of warmcache against the size of the tree:\n")
    print("| tree | files | MiB | snapshot peak RSS | restore peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    py = sorted(d for d in os.listdir(src) if d.startswith("python3"))
    subtrees = [os.path.join(src, py[0], "json"), os.path.join(src, py[0], "email"), os.path.join(src, py[0])] if py else []
    for n, sub in enumerate(subtrees + [src]):
        f, s = _tree_stats(sub)
        key = f"{url}/size/{n}"
        _, snap_rss = _timed(wc("snapshot", sub, "--remote", key), env)
        clean(0)
        _, rest_rss = _timed(wc("restore", dst, "--remote", key), env)
        clean(0)
        print(f"| `{sub}` | {f} | {s / 2**20:.0f} | {snap_rss / 1024:.1f} MiB | {rest_rss / 1024:.1f} MiB |")
    _rm(root)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(REPO, "target", "bench-work"))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    parser.add_argument("--bin", default=os.path.join(os.path.abspath(target), "release", "warmcache"))
    args = parser.parse_args()
    if not os.path.exists(args.bin):
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "--bin", "warmcache"], cwd=REPO, check=True)
    print(f"Machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; work dir {args.work}")
    bench_remote(args.work, args.runs, args.bin)


if __name__ == "__main__":
    sys.exit(main())
