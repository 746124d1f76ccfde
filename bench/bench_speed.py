#!/usr/bin/env python3
"""Issue 12, "never the reason a start is slow": every row of its table in one command.

    python3 bench/bench_speed.py [PART ...] [--runs N] [--quick] [--work DIR] [--no-build]
                                 [--trees node,pylib] [--servers moto,s3s]

Parts (default: remote, hit, swr, gc; `import` only when named):

- `remote`: snapshot and restore of a real `node_modules` (installed from `bench/package.json` and
  `bench/package-lock.json` with `npm ci --ignore-scripts`), and with `--trees node,pylib` also of
  Python's `lib/`, through two loopback S3 servers: moto (PyPI, not ours) and
  `examples/s3_server.rs` (s3s-fs), against
  `tar -c | zstd -3 -T0 | aws s3 cp -` and `aws s3 cp - | zstd -dc | tar -x` + `sync -f`; the same
  runs give warmcache's own phase breakdown (the `phases` object of `--json`, when the build has
  it) and the floors, each phase alone with standard tools.
- `import`: `warmcache import` of the same `node_modules` (a directory, and its zip) against
  `cp -a` + `sync -f` and `unzip -q` + `sync -f`.
- `hit`: the CLI `ensure` hit whose inputs are `node_modules/lodash` (about 1,050 files) against
  `warmcache --version`, call by call, and the in-process hit over the same inputs
  (`examples/bench_ensure.rs`).
- `swr`: the latency of `ensure` after an input change with a 2 s builder, waiting vs
  `--stale-while-revalidate` (skipped when the binary does not know the flag).
- `gc`: the gc section of `bench/bench.py` (100,000 artifacts).

Whole commands are timed `--runs` times (default 3; Python's lib/, the floors and the import rows
use at most 3): warmcache and the alternative in the same run, one after the other, the order
alternating run by run, the file system flushed (`sync`) before each. Shown: the medians, the ratio of the medians
(warmcache ÷ alternative: below 1 is faster) and its spread (min–max of the per-run ratios).
Peak RSS comes from GNU time (`/usr/bin/time`; for a pipeline, its largest process).

The AWS CLI and moto are installed, pinned, into a virtual environment under the work dir; the npm
tree into `WORK/node-tree` (both reused while their pins and lock file are unchanged).
`--quick` uses `node_modules/lodash` as the only tree, 2 runs and small gc and hit counts: it
checks the harness in a minute or two (once the tools and the npm tree are installed); its figures
mean nothing.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers and the gc section)

REPO = bench.REPO
BIN = bench.BIN
BENCH_ENSURE = bench.BENCH_ENSURE
S3_SERVER = os.path.join(bench.RELEASE, "examples", "s3_server")

# Pinned tools from PyPI, installed into WORK/tools-venv.
PIP_PINS = ["awscli==1.46.3", "moto[server]==5.2.5"]
BUCKET = "warmcache-bench"
SWR_BUILD_SECONDS = 2


# ---------------------------------------------------------------------------------------------
# Set-up: binaries, tools, the npm tree


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "--bin", "warmcache", "--features", "internals"]
        + ["--example", "bench_ensure", "--example", "bench_gc", "--example", "s3_server"],
        cwd=REPO,
        check=True,
    )


def tools(work):
    """The pinned AWS CLI and moto server, in WORK/tools-venv; (aws, moto_server) paths."""
    venv = os.path.join(work, "tools-venv")
    stamp = os.path.join(venv, "warmcache-bench-pins")
    want = "\n".join(PIP_PINS)
    if not os.path.exists(stamp) or open(stamp).read() != want:
        bench.rm(venv)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", *PIP_PINS], check=True)
        with open(stamp, "w") as f:
            f.write(want)
    return os.path.join(venv, "bin", "aws"), os.path.join(venv, "bin", "moto_server")


def node_tree(work):
    """WORK/node-tree with node_modules installed by `npm ci --ignore-scripts` from the committed
    lock file; reinstalled only when the lock file changed."""
    project = os.path.join(work, "node-tree")
    os.makedirs(project, exist_ok=True)
    lock = open(os.path.join(REPO, "bench", "package-lock.json"), "rb").read()
    digest = hashlib.sha256(lock + open(os.path.join(REPO, "bench", "package.json"), "rb").read()).hexdigest()
    stamp = os.path.join(project, ".installed")
    modules = os.path.join(project, "node_modules")
    if not (os.path.isdir(modules) and os.path.exists(stamp) and open(stamp).read() == digest):
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(os.path.join(REPO, "bench", name), os.path.join(project, name))
        bench.rm(modules)
        bench.rm(stamp)
        started = time.perf_counter()
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=project, check=True
        )
        print(f"(npm ci took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        with open(stamp, "w") as f:
            f.write(digest)
    return project


# ---------------------------------------------------------------------------------------------
# Timing


def timed(cmd, env=None, cwd=None, want_json=False):
    """Runs a command (an argv list, or a bash pipeline string with pipefail); returns (seconds,
    peak RSS in KiB from GNU time, the JSON object on stdout when want_json)."""
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    fd, rss_file = tempfile.mkstemp(prefix="warmcache-bench-rss-")
    os.close(fd)
    argv = [bench.GNU_TIME, "-q", "-f", "%M", "-o", rss_file] + argv
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    with open(rss_file) as f:
        text = f.read().split()
    os.unlink(rss_file)
    if proc.returncode != 0:
        raise SystemExit(
            f"benchmark command failed ({proc.returncode}): {cmd}\n{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    peak = int(text[-1]) if text and text[-1].isdigit() else 0
    data = json.loads(proc.stdout) if want_json else None
    return elapsed, peak, data


class Pair:
    """warmcache and its alternative, timed in the same runs."""

    def __init__(self):
        self.ours, self.alt, self.ours_rss, self.alt_rss, self.ours_json = [], [], [], [], []

    def ratio(self):
        return statistics.median(self.ours) / statistics.median(self.alt)

    def spread(self):
        rs = [o / a for o, a in zip(self.ours, self.alt)]
        return min(rs), max(rs)


def paired(runs, prepare, ours_cmd, alt_cmd, env=None, check=None):
    """Times both commands `runs` times, alternating which goes first; prepare(i) before each."""
    pair = Pair()
    for i in range(runs):
        order = ("ours", "alt") if i % 2 else ("alt", "ours")
        for who in order:
            prepare(i)
            if who == "ours":
                t, rss, data = timed(ours_cmd(i), env=env, want_json=True)
                if check:
                    check(i, data)
                pair.ours.append(t)
                pair.ours_rss.append(rss)
                pair.ours_json.append(data)
            else:
                t, rss, _ = timed(alt_cmd(i), env=env)
                pair.alt.append(t)
                pair.alt_rss.append(rss)
    return pair


def repeat(runs, prepare, cmd, env=None):
    """Median seconds of `runs` runs of one command."""
    out = []
    for i in range(runs):
        prepare(i)
        out.append(timed(cmd(i), env=env)[0])
    return statistics.median(out)


def shown(path):
    """A path for the printed tables: relative to the repository, or PYTHON/... for Python's own
    directories, so that no machine's absolute paths end up in BENCHMARKS.md."""
    path = os.path.abspath(path)
    if path.startswith(REPO + os.sep):
        return os.path.relpath(path, REPO)
    lib = bench.python_lib()
    if path == lib or path.startswith(lib + os.sep):
        return "PYTHON/lib" + path[len(lib):]
    return path


def rm(path):
    """`rm -rf` (much less CPU than shutil.rmtree on 26,000 files); read-only trees (artifacts in a
    cache root) are made writable first only when that fails."""
    if not os.path.lexists(path):
        return
    if subprocess.run(["rm", "-rf", path], stderr=subprocess.DEVNULL).returncode != 0:
        bench.rm(path)


def nothing(_):
    bench.settle()


def s(seconds):
    return f"{seconds:.2f} s"


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def phases_text(jsons):
    """The median of each phase over the runs, from warmcache's `--json` `phases` object."""
    keys = []
    for data in jsons:
        for k in (data or {}).get("phases") or {}:
            if k not in keys:
                keys.append(k)
    if not keys:
        return "not reported (no `phases` in this build's `--json`)"
    parts = []
    for k in keys:
        vals = [d["phases"][k] for d in jsons if d and isinstance(d.get("phases"), dict) and k in d["phases"]]
        nums = [v for v in vals if isinstance(v, (int, float))]
        parts.append(f"{k} {statistics.median(nums):.0f} ms" if nums else f"{k} {vals[0]}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# S3 servers on loopback


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, name, label, proc, endpoint, access, secret):
        self.name, self.label, self.proc, self.endpoint = name, label, proc, endpoint
        # This server only: nothing from the caller's AWS or warmcache settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WARMCACHE_"))}
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID=access,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ALLOW_HTTP="true",
            AWS_EC2_METADATA_DISABLED="true",
        )
        self.env = env

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_moto(moto_server, aws, work):
    port = free_port()
    log = open(os.path.join(work, "moto.log"), "wb")
    proc = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"moto did not start; see {log.name}")
            time.sleep(0.2)
    server = Server("moto", "moto 5.2.5 (`moto_server`, PyPI)", proc, f"http://127.0.0.1:{port}", "bench", "bench-secret")
    subprocess.run([aws, "s3", "mb", f"s3://{BUCKET}"], env=server.env, check=True, stdout=subprocess.DEVNULL)
    return server


def start_s3s(work):
    data = os.path.join(work, "s3s-data")
    rm(data)
    os.makedirs(data)
    proc = subprocess.Popen([S3_SERVER, data, "--bucket", BUCKET], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("endpoint="):
        proc.kill()
        raise SystemExit(f"examples/s3_server did not start: {line!r}")
    return Server(
        "s3s", "`examples/s3_server.rs` (s3s-fs)", proc, line.removeprefix("endpoint="), "warmcache", "warmcache-secret"
    )


# ---------------------------------------------------------------------------------------------
# remote: snapshot and restore


def bench_tree_remote(ctx, tag, label, src, runs, servers, aws):
    """All remote rows of one tree on every server; returns a list of result dicts."""
    base = ctx.dir(f"speed-{tag}")
    dst = os.path.join(base, "dst")
    root = os.path.join(base, "root")
    tar = os.path.join(base, "tree.tar")
    zst = os.path.join(base, "tree.tar.zst")
    files, size = bench.tree_stats(src)
    bench.warm(src)

    def clean(_):
        rm(dst)
        rm(root)
        bench.settle()

    # Floors on this machine and tree, each phase alone (no server involved).
    subprocess.run(f"tar -C '{src}' -cf '{tar}' . && zstd -3 -T0 -q -f '{tar}' -o '{zst}'", shell=True, check=True)
    bench.warm(tar)
    bench.warm(zst)
    floor_runs = min(runs, 3)
    floors = {
        "tar -c | zstd -3 -T0 > /dev/null": repeat(floor_runs, nothing, lambda i: f"tar -C '{src}' -cf - . | zstd -3 -T0 -q > /dev/null"),
        "zstd -d > /dev/null": repeat(floor_runs, nothing, lambda i: f"zstd -dc -q '{zst}' > /dev/null"),
        "tar -x + sync -f (uncompressed tar)": repeat(
            floor_runs, clean, lambda i: f"mkdir -p '{dst}' && tar -C '{dst}' -xf '{tar}' && sync -f '{dst}'"
        ),
    }
    rm(tar)
    clean(0)

    results = []
    for server in servers:
        env = server.env
        url = f"s3://{BUCKET}/{tag}"
        aws_q = f"'{aws}' s3 cp --only-show-errors"

        def wc(*args):
            # --strict: a run that degraded (a remote error turned into a warning) must not count.
            return [BIN, "--root", root, "--json", "-q", *args, "--strict"]

        def check_snapshot(i, data):
            if data.get("status") != "uploaded" or not data.get("uploaded_bytes"):
                raise SystemExit(f"snapshot run {i} on {server.name} did not upload: {data}")

        snap = paired(
            runs,
            clean,
            lambda i: wc("snapshot", src, "--remote", f"{url}/wc/{i}"),
            lambda i: f"tar -C '{src}' -cf - . | zstd -3 -T0 -q | {aws_q} - {url}/pipe/{i}.tar.zst",
            env=env,
            check=check_snapshot,
        )
        # Keep run 0's objects for the restores; the others only take space.
        for i in range(1, runs):
            subprocess.run([aws, "s3", "rm", "--quiet", "--recursive", f"{url}/wc/{i}"], env=env, check=True)
            subprocess.run([aws, "s3", "rm", "--quiet", f"{url}/pipe/{i}.tar.zst"], env=env, check=True)
        wc_object = snap.ours_json[0].get("uploaded_bytes", 0)
        pipe_object = int(
            subprocess.run(
                [aws, "s3api", "head-object", "--bucket", BUCKET, "--key", f"{tag}/pipe/0.tar.zst", "--query", "ContentLength"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )

        def check_restore(i, data):
            if data.get("status") != "restored" or not data.get("downloaded_bytes"):
                raise SystemExit(f"restore run {i} on {server.name} did not download: {data}")
            if data.get("files") != files:
                raise SystemExit(f"restore run {i} on {server.name} restored {data.get('files')} files, expected {files}")

        rest = paired(
            runs,
            clean,
            lambda i: wc("restore", dst, "--remote", f"{url}/wc/0"),
            lambda i: f"mkdir -p '{dst}' && {aws_q} {url}/pipe/0.tar.zst - | zstd -dc -q | tar -C '{dst}' -xf - "
            f"&& sync -f '{dst}'",
            env=env,
            check=check_restore,
        )
        got, _ = bench.tree_stats(dst)
        if got != files:
            raise SystemExit(f"the last restore on {server.name} left {got} files in {dst}, expected {files}")
        clean(0)
        download = repeat(floor_runs, nothing, lambda i: f"{aws_q} {url}/pipe/0.tar.zst - > /dev/null", env=env)
        upload = repeat(floor_runs, nothing, lambda i: f"{aws_q} '{zst}' {url}/floor/{i}.tar.zst", env=env)
        subprocess.run([aws, "s3", "rm", "--quiet", "--recursive", f"{url}/"], env=env, check=True)
        results.append(
            dict(
                tag=tag,
                label=label,
                files=files,
                size=size,
                server=server,
                snap=snap,
                rest=rest,
                floors=dict(floors, download=download, upload=upload),
                wc_object=wc_object,
                pipe_object=pipe_object,
            )
        )
    rm(zst)
    rm(root)
    return results


def print_remote(results, runs):
    print(f"\n### Snapshot and restore through loopback S3: {results[0]['label']}\n")
    print(
        "Ratios are warmcache ÷ the pipeline, the ratio of the medians over the runs, with the spread "
        "(min–max of the per-run ratios). Both commands run in every run, the order alternating. "
        "Restore goes into an empty directory; both sides are durable (`warmcache restore` syncs; "
        "the pipeline ends with `sync -f DEST`). The cache root is removed before every run.\n"
    )
    print(
        "| tree | server | operation | alternative | runs | warmcache (median) | alternative (median) "
        "| warmcache ÷ alternative | spread | peak RSS warmcache / alternative | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for op, alt, pair, goal in (
            ("snapshot", "`tar -c \\| zstd -3 -T0 \\| aws s3 cp -`", r["snap"], 0.67),
            ("restore (durable)", "`aws s3 cp - \\| zstd -dc \\| tar -x` + `sync -f`", r["rest"], 0.67),
        ):
            lo, hi = pair.spread()
            ratio = pair.ratio()
            print(
                f"| {r['label']} | {r['server'].label} | {op} | {alt} | {runs} | {s(statistics.median(pair.ours))} "
                f"| {s(statistics.median(pair.alt))} | **{ratio:.2f}** | {lo:.2f}–{hi:.2f} "
                f"| {mib(max(pair.ours_rss))} / {mib(max(pair.alt_rss))} "
                f"| ≤ 0.67: {'met' if ratio <= goal else 'NOT met'} |"
            )
    print("\nWhere the time goes, and the floors (each phase alone with standard tools, medians):\n")
    print(
        "| tree | server | operation | warmcache (median) | warmcache's phases (`--json` `phases`, medians) "
        "| floors, each alone | fully overlapped floor | floor ÷ pipeline | warmcache ÷ floor |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        f = r["floors"]
        mb = r["pipe_object"] / 1e6
        snap_floor = max(f["tar -c | zstd -3 -T0 > /dev/null"], f["upload"])
        rest_floor = max(f["download"], f["zstd -d > /dev/null"], f["tar -x + sync -f (uncompressed tar)"])
        rows = (
            (
                "snapshot",
                r["snap"],
                f"`tar -c \\| zstd -3 -T0 > /dev/null` {s(f['tar -c | zstd -3 -T0 > /dev/null'])}; "
                f"upload alone (`aws s3 cp FILE`, {mb:.0f} MB) {s(f['upload'])}",
                snap_floor,
            ),
            (
                "restore",
                r["rest"],
                f"download alone (`aws s3 cp - > /dev/null`, {mb:.0f} MB) {s(f['download'])}; "
                f"`zstd -d > /dev/null` {s(f['zstd -d > /dev/null'])}; "
                f"`tar -x` + `sync -f` of the uncompressed tar {s(f['tar -x + sync -f (uncompressed tar)'])}",
                rest_floor,
            ),
        )
        for op, pair, text, floor in rows:
            ours = statistics.median(pair.ours)
            print(
                f"| {r['label']} | {r['server'].label} | {op} | {s(ours)} | {phases_text(pair.ours_json)} | {text} "
                f"| {s(floor)} | {floor / statistics.median(pair.alt):.2f} | {ours / floor:.2f} |"
            )
    print(
        "\nArchives: "
        + "; ".join(
            f"{r['label']} on {r['server'].name}: warmcache {r['wc_object'] / 1e6:.1f} MB, pipeline {r['pipe_object'] / 1e6:.1f} MB"
            for r in results
        )
        + "."
    )


def bench_remote(ctx, aws, moto_server, node, only_trees, only_servers):
    quick = ctx.quick
    if quick:
        trees = [("lodash", "`node_modules/lodash`", os.path.join(node, "node_modules", "lodash"), ctx.runs)]
    else:
        trees = [
            ("node", "`node_modules`", os.path.join(node, "node_modules"), ctx.runs),
            ("pylib", "Python's `lib/`", bench.python_lib(), min(ctx.runs, 3)),
        ]
        trees = [t for t in trees if t[0] in only_trees]
    base = ctx.dir("speed-servers")
    servers = []
    try:
        if "moto" in only_servers:
            servers.append(start_moto(moto_server, aws, base))
        if "s3s" in only_servers:
            servers.append(start_s3s(base))
        for tag, label, src, runs in trees:
            started = time.perf_counter()
            results = bench_tree_remote(ctx, tag, label, src, runs, servers, aws)
            # Printed tree by tree, so that a run cut short still leaves its finished tables.
            print_remote(results, runs)
            f, size = bench.tree_stats(src)
            print(
                f"\n{label} is `{shown(src)}`: {f:,} files, {size / 2**20:.0f} MiB. "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    finally:
        for server in servers:
            server.stop()
        rm(os.path.join(base, "s3s-data"))


# ---------------------------------------------------------------------------------------------
# import: the node tree as a directory and as a zip


def bench_import(ctx, node):
    src = os.path.join(node, "node_modules", "lodash") if ctx.quick else os.path.join(node, "node_modules")
    runs = min(ctx.runs, 3)
    base = ctx.dir("speed-import")
    dst = os.path.join(base, "dst")
    root = os.path.join(base, "root")
    zip_path = os.path.join(base, "quick.zip" if ctx.quick else "node_modules.zip")
    stamp = zip_path + ".from"
    digest = open(os.path.join(node, ".installed")).read()
    if not (os.path.exists(zip_path) and os.path.exists(stamp) and open(stamp).read() == digest):
        rm(zip_path)
        subprocess.run(["zip", "-qry", zip_path, "."], cwd=src, check=True)
        with open(stamp, "w") as f:
            f.write(digest)
    files, size = bench.tree_stats(src)
    bench.warm(src)
    bench.warm(zip_path)

    def clean(_):
        rm(dst)
        rm(root)
        bench.settle()

    def check(i, data):
        if data.get("status") not in (None, "imported") and "path" not in data:
            raise SystemExit(f"import run {i} returned {data}")

    dir_pair = paired(
        runs,
        clean,
        lambda i: [BIN, "--root", root, "--json", "-q", "import", src, "--name", "bench/dir"],
        lambda i: f"cp -a '{src}' '{dst}' && sync -f '{dst}'",
        check=check,
    )
    zip_pair = paired(
        runs,
        clean,
        lambda i: [BIN, "--root", root, "--json", "-q", "import", zip_path, "--name", "bench/zip"],
        lambda i: f"mkdir -p '{dst}' && unzip -q '{zip_path}' -d '{dst}' && sync -f '{dst}'",
        check=check,
    )
    clean(0)
    label = "`node_modules/lodash`" if ctx.quick else "`node_modules`"
    print(f"\n### Import of {label} ({files:,} files, {size / 2**20:.0f} MiB; zip {os.path.getsize(zip_path) / 2**20:.0f} MiB)\n")
    print("| operation | alternative | runs | warmcache (median) | alternative (median) | warmcache ÷ alternative | spread | peak RSS warmcache / alternative | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for op, alt, pair, was in (
        ("import a directory (durable)", "`cp -a` + `sync -f`", dir_pair, 0.66),
        ("import its zip (durable)", "`unzip -q` + `sync -f`", zip_pair, 0.71),
    ):
        lo, hi = pair.spread()
        ratio = pair.ratio()
        print(
            f"| {op} | {alt} | {runs} | {s(statistics.median(pair.ours))} | {s(statistics.median(pair.alt))} "
            f"| **{ratio:.2f}** | {lo:.2f}–{hi:.2f} | {mib(max(pair.ours_rss))} / {mib(max(pair.alt_rss))} "
            f"| keep ({was} when filed): {'kept' if ratio <= was * 1.1 else 'NOT kept'} |"
        )


# ---------------------------------------------------------------------------------------------
# hit: ensure over node_modules/lodash


HIT_NAME = "bench/lodash"
HIT_BUILD = 'printf built > "$WARMCACHE_OUT"'


def bench_hit(ctx, node):
    reps = 40 if ctx.quick else 300
    lib_reps = 200 if ctx.quick else 2000
    base = ctx.dir("speed-hit")
    root = os.path.join(base, "root")
    rm(root)
    # A project whose inputs are the node tree's lodash: the config beside node_modules.
    project = node
    with open(os.path.join(project, "warmcache.toml"), "w") as f:
        f.write(f'[entry."{HIT_NAME}"]\ninputs = ["node_modules/lodash/**"]\nbuild = \'{HIT_BUILD}\'\n')
    inputs, size = bench.tree_stats(os.path.join(project, "node_modules", "lodash"))
    bench.warm(os.path.join(project, "node_modules", "lodash"))
    cmd = [BIN, "--root", root, "--json", "ensure", HIT_NAME]
    first = bench.run_json(cmd, cwd=project)
    again = bench.run_json(cmd, cwd=project)
    if first["status"] != "built" or again["status"] != "hit":
        raise SystemExit(f"expected built then hit, got {first['status']} then {again['status']}")
    # Call by call, alternating, so that the machine's other work weighs on both alike.
    hit_cmd = [BIN, "--root", root, "ensure", HIT_NAME]
    version_cmd = [BIN, "--version"]
    hits, versions = [], []
    for i in range(reps + 3):
        for cmd_, out in ((hit_cmd, hits), (version_cmd, versions)):
            start = time.perf_counter()
            proc = subprocess.run(cmd_, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{cmd_} failed: {proc.stderr.decode(errors='replace')}")
            if i >= 3:
                out.append(elapsed)
    last = bench.run_json([BIN, "--root", root, "--json", "ensure", HIT_NAME], cwd=project)
    lib = bench.run_json(
        [BENCH_ENSURE, "--root", root, "--base", project, "--name", HIT_NAME, "--input", "node_modules/lodash/**"]
        + ["--build", HIT_BUILD, "--reps", str(lib_reps), "--cold-reps", "3"]
    )
    ratio = statistics.median(hits) / statistics.median(versions)
    hit_ms = lib["hit"]["median_us"] / 1000
    print(f"\n### `ensure` hit over `node_modules/lodash` ({inputs:,} inputs, {size / 2**20:.1f} MiB)\n")
    print(f"{reps} CLI calls of each, alternating; {lib_reps} in-process hits. Median / p90.\n")
    print("| what | latency | ratio | goal |")
    print("| --- | --- | --- | --- |")
    print(f"| `warmcache --version` (process start-up) | {bench.med_p90(versions)} | 1 | |")
    print(
        f"| CLI hit `warmcache ensure {HIT_NAME}` | {bench.med_p90(hits)} | **{ratio:.2f}** × `--version` "
        f"| ≤ 2.0: {'met' if ratio <= 2.0 else 'NOT met'} |"
    )
    print(
        f"| in-process hit `Cache::ensure` (`examples/bench_ensure.rs`) | {lib['hit']['median_us'] / 1000:.3f} ms / "
        f"{lib['hit']['p90_us'] / 1000:.3f} ms | | under 1 ms: {'met' if hit_ms < 1 else 'NOT met'} |"
    )
    print(
        f"| of which `Cache::open` / fingerprint with a warm stat cache | {lib['open']['median_us'] / 1000:.3f} ms / "
        f"{lib['fingerprint_warm']['median_us'] / 1000:.3f} ms | | |"
    )
    if isinstance(last.get("phases"), dict):
        print(f"\nThe CLI hit's own phases (`--json` `phases`, one call): {phases_text([last])}.")
    print_hit_breakdown(project, lib, hits, versions, reps)
    rm(root)


def print_hit_breakdown(project, lib, hits, versions, reps):
    """Where the time of a CLI hit goes: each step of a fresh process's hit, timed in-process by
    `bench_ensure` (a new `Cache` each time, as a process starts with), against the whole CLI call,
    and the floor: `find` stating the same files in a fresh process."""
    fresh = lib.get("fresh_process")
    if not isinstance(fresh, dict):
        return
    ref = os.path.join(project, ".warmcache-bench-ref")
    open(ref, "w").close()
    lodash = os.path.join(project, "node_modules", "lodash")
    finds, bare = [], []
    for i in range(reps + 3):
        for cmd_, out in ((["find", lodash, "-newer", ref], finds), (["find", lodash, "-maxdepth", "0"], bare)):
            start = time.perf_counter()
            subprocess.run(cmd_, stdout=subprocess.DEVNULL, check=True)
            if i >= 3:
                out.append(time.perf_counter() - start)
    os.remove(ref)
    ms = lambda us: us / 1000  # noqa: E731
    steps = [
        ("logging filter (`EnvFilter`)", ms(fresh["logging_filter"]["median_us"])),
        ("`Cache::open` (catalog open, schema read)", ms(fresh["open"]["median_us"])),
        ("first fingerprint (stat cache read from the catalog, walk, one `statx` per input)",
         ms(fresh["first_fingerprint"]["median_us"])),
        ("the catalog look and the artifact check (in-process hit minus warm fingerprint)",
         max(0.0, ms(lib["hit"]["median_us"] - lib["fingerprint_warm"]["median_us"]))),
        ("closing the catalog", ms(fresh["close"]["median_us"])),
    ]
    version = statistics.median(versions) * 1000
    cli = statistics.median(hits) * 1000
    rest = cli - version - sum(t for _, t in steps)
    print("\nWhere a CLI hit's time goes (medians; each step timed in-process on a fresh `Cache`, as a")
    print("process starts, by `examples/bench_ensure.rs`; the remainder is what a fresh process pays")
    print("beyond that: first touches of code and heap pages, argument parsing, exit):\n")
    print("| part | ms |")
    print("| --- | --- |")
    print(f"| process start-up (`warmcache --version`) | {version:.2f} |")
    for name, t in steps:
        print(f"| {name} | {t:.2f} |")
    print(f"| remainder (CLI hit − `--version` − the steps above) | {rest:.2f} |")
    print(f"| **CLI hit** | **{cli:.2f}** |")
    floor = (statistics.median(finds) - statistics.median(bare)) * 1000
    print(f"\nFloor for the walk: `find node_modules/lodash -newer REF` (lists and stats every input) took "
          f"{statistics.median(finds) * 1000:.2f} ms, `find node_modules/lodash -maxdepth 0` "
          f"{statistics.median(bare) * 1000:.2f} ms: the walk and the stats alone cost {floor:.2f} ms in a "
          "fresh process.")


# ---------------------------------------------------------------------------------------------
# swr: stale-while-revalidate


def bench_swr(ctx):
    help_text = subprocess.run([BIN, "ensure", "--help"], capture_output=True, text=True).stdout
    print("\n### `ensure` after an input change, 2 s builder: waiting vs stale-while-revalidate\n")
    if "--stale-while-revalidate" not in help_text:
        print("Skipped: this build's `ensure` has no `--stale-while-revalidate` flag yet.")
        return
    runs = 2 if ctx.quick else ctx.runs
    base = ctx.dir("speed-swr")
    project = os.path.join(base, "project")
    root = os.path.join(base, "root")
    rm(project)
    rm(root)
    os.makedirs(os.path.join(project, "src"))
    build = f'sleep {SWR_BUILD_SECONDS}; cat src/input.txt > "$WARMCACHE_OUT"'
    with open(os.path.join(project, "warmcache.toml"), "w") as f:
        f.write(f'[entry."bench/swr"]\ninputs = ["src/**"]\nbuild = \'{build}\'\n')
    counter = [0]

    def change(_):
        counter[0] += 1
        with open(os.path.join(project, "src", "input.txt"), "w") as f:
            f.write(f"version {counter[0]}\n")

    def settled():
        # An untimed plain ensure: waits for any background build, leaves the entry fresh.
        data = bench.run_json([BIN, "--root", root, "--json", "ensure", "bench/swr"], cwd=project)
        if data["status"] not in ("hit", "built"):
            raise SystemExit(f"settling ensure returned {data['status']}")

    change(0)
    settled()
    waiting, swr, statuses = [], [], []
    for i in range(runs):
        for mode in (("waiting",), ("swr",)) if i % 2 == 0 else (("swr",), ("waiting",)):
            change(i)
            args = [BIN, "--root", root, "--json", "ensure", "bench/swr"]
            if mode[0] == "swr":
                args.append("--stale-while-revalidate")
            t, _, data = timed(args, env=None, cwd=project, want_json=True)
            (swr if mode[0] == "swr" else waiting).append(t)
            if mode[0] == "swr":
                statuses.append(data.get("status"))
            settled()
    ratio = statistics.median(swr) / statistics.median(waiting)
    print(f"{runs} runs of each; the input changed before every call; an untimed plain `ensure` after each.\n")
    print("| `ensure` after an input change | median | ratio | status returned |")
    print("| --- | --- | --- | --- |")
    print(f"| waiting (default) | {bench.ms(statistics.median(waiting))} | 1 | built |")
    print(
        f"| `--stale-while-revalidate` | {bench.ms(statistics.median(swr))} | **{ratio:.3f}** "
        f"| {', '.join(sorted(set(str(x) for x in statuses)))} |"
    )
    at_once = all(x == "stale" for x in statuses) and statistics.median(swr) < SWR_BUILD_SECONDS / 4
    print(
        f"\nGoal: with the flag, `ensure` returns the last good artifact at once (status `stale`) instead of "
        f"waiting for the {SWR_BUILD_SECONDS} s build: {'met' if at_once else 'NOT met'}."
    )
    rm(root)


# ---------------------------------------------------------------------------------------------


PARTS = ["remote", "import", "hit", "swr", "gc"]
# The rows; `import` (the "keep" rows) only when named.
DEFAULT_PARTS = ["remote", "hit", "swr", "gc"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="one or more of: " + ", ".join(PARTS))
    parser.add_argument("--runs", type=int, default=None, help="runs of each whole command (default 3; 2 with --quick)")
    parser.add_argument("--work", default=os.path.join(REPO, "target", "bench-work"))
    parser.add_argument("--quick", action="store_true", help="small data: checks the harness, not the speed")
    parser.add_argument(
        "--no-build", action="store_true", help="use the release binaries already built (cargo waits on other builds' locks)"
    )
    parser.add_argument("--trees", default="node", help="remote: which trees, of node and pylib (default node)")
    parser.add_argument("--servers", default="moto,s3s", help="remote: which S3 servers (moto, s3s; default both)")
    args = parser.parse_args()
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    if not os.path.exists(bench.GNU_TIME):
        raise SystemExit(f"GNU time is needed at {bench.GNU_TIME} for peak memory (Debian: apt-get install time)")
    # Ended with SIGTERM: unwind, so that the S3 servers started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = args.runs or (2 if args.quick else 3)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    if args.no_build:
        missing = [p for p in (BIN, BENCH_ENSURE, bench.BENCH_GC, S3_SERVER) if not os.path.exists(p)]
        if missing:
            raise SystemExit(f"--no-build: not built yet: {missing}; run once without --no-build")
    else:
        build()
    aws, moto_server = tools(work)
    node = node_tree(work)
    setup = time.perf_counter() - t0
    started = time.perf_counter()
    ctx = bench.Ctx(work, runs, args.quick)
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(
        f"Machine: {os.cpu_count()} cores, load average {load[0]:.1f} at start; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"commit {commit}; work dir on {bench.fs_type(work)}; {'--quick' if args.quick else 'full size'}; --runs {runs}",
        flush=True,
    )
    for part in args.parts or DEFAULT_PARTS:
        t0 = time.perf_counter()
        if part == "remote":
            bench_remote(ctx, aws, moto_server, node, args.trees.split(","), args.servers.split(","))
        elif part == "import":
            bench_import(ctx, node)
        elif part == "hit":
            bench_hit(ctx, node)
        elif part == "swr":
            bench_swr(ctx)
        elif part == "gc":
            bench.bench_gc(ctx)
        print(f"\n(part `{part}` took {time.perf_counter() - t0:.0f} s)", flush=True)
    load = os.getloadavg()
    print(
        f"\n(all parts took {(time.perf_counter() - started) / 60:.1f} min, after {setup:.0f} s of set-up: the build, "
        f"the tools, the npm tree; load average {load[0]:.1f} at the end)"
    )


if __name__ == "__main__":
    sys.exit(main())
