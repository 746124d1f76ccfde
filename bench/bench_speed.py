#!/usr/bin/env python3
"""Issue 12, "never the reason a start is slow": every row of its table in one command; and
issue 13's, "only the change moves" (`delta`).

    python3 bench/bench_speed.py [PART ...] [--runs N] [--quick] [--work DIR] [--no-build]
                                 [--trees node,pylib] [--servers moto,s3s]
    python3 bench/bench_speed.py delta [--runs N] [--quick] [--servers s3s,moto]

Parts (default: remote, hit, swr, gc; `import` and `delta` only when named):

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
- `delta` (issue 13's rows): on a private copy of the same `node_modules`, through
  `examples/s3_server.rs` (and moto with `--servers moto,s3s`): a full snapshot, then one file
  changed (`lodash/lodash.js`, 4 KiB appended), then one package added (`npm install --no-save` of
  a pinned package), each snapshotted next to `tar -c | zstd -3 -T0 | aws s3 cp -`; each later
  version restored onto the previous one, cold, and by the pipeline. Bytes come from `--json`
  (`uploaded_bytes`, `downloaded_bytes`) and independently: the objects new under the key
  (`aws s3api list-objects-v2`) and what the server process sent (`/proc/PID/io`); they are set
  against `tar -c | zstd -3` of the files that changed. `--json` fields the harness does not know
  (a newer build's) are reported as they come.

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
# delta: what a snapshot and a restore move when little changed (issue 13)

# The one file changed (relative to node_modules): a real, mid-size JS file below the chunking
# threshold, so that a delta snapshot re-sends it whole and its compressed size is the floor.
DELTA_FILE = os.path.join("lodash", "lodash.js")
DELTA_APPEND = 4096
# The one package added, pinned; no dependencies, ten files.
ADD_PACKAGE = "clsx@2.1.1"
# `--json` fields this harness reads or knows; any other is shown as it comes (the delta writer
# and restore add fields such as `pack`, `new_chunks`, `seeded_bytes`).
KNOWN_JSON = {
    "status", "url", "digest", "files", "bytes", "uploaded_bytes", "downloaded_bytes", "archive",
    "remote", "elapsed_ms", "phases", "dir",
}


def tree_manifest(top, prev=None, hashed=True):
    """{relative path: entry} of the files and symlinks under top: a file is ("f", size, digest,
    stat key), a symlink ("l", target). A file whose size, mtime and inode are those of its entry
    in `prev` keeps that entry's digest (as git does); `hashed=False` records sizes only."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("l", os.readlink(path))
            elif name in filenames and os.path.isfile(path):
                key = (st.st_size, st.st_mtime_ns, st.st_ino)
                old = (prev or {}).get(rel)
                if old and old[0] == "f" and old[3] == key:
                    digest = old[2]
                elif hashed:
                    digest = file_digest(path)
                else:
                    digest = None
                out[rel] = ("f", st.st_size, digest, key)
    return out


def file_digest(path):
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_changes(before, after):
    """Files and symlinks new or different in `after`, and the paths gone from it."""
    changed = [p for p, e in after.items() if p not in before or before[p][:3] != e[:3]]
    removed = [p for p in before if p not in after]
    return sorted(changed), sorted(removed)


def packed_size(top, rels):
    """(raw bytes, bytes of `tar -c | zstd -3`) of these paths under top: what the changed files
    cost compressed, the floor of a delta."""
    raw = sum(os.lstat(os.path.join(top, p)).st_size for p in rels if not os.path.islink(os.path.join(top, p)))
    if not rels:
        return 0, 0
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"tar -C '{top}' --null --no-recursion -T - -cf - | zstd -3 -q -c"],
        input=b"\0".join(p.encode() for p in rels),
        stdout=subprocess.PIPE,
        check=True,
    )
    return raw, len(proc.stdout)


def bucket_listing(aws, env, prefix):
    """{key: (size, ETag)} of every object under prefix, from `aws s3api list-objects-v2`."""
    proc = subprocess.run(
        [aws, "s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", prefix, "--output", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return {o["Key"]: (o["Size"], o.get("ETag")) for o in data.get("Contents") or []}


def bucket_growth(before, after):
    """Bytes of the objects new or replaced between two listings: what reached the server."""
    return sum(size for key, (size, etag) in after.items() if before.get(key) != (size, etag))


def object_size(aws, env, key):
    proc = subprocess.run(
        [aws, "s3api", "head-object", "--bucket", BUCKET, "--key", key, "--query", "ContentLength"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout.strip())


def server_sent(server):
    """Bytes the server process has written so far (`wchar` of /proc/PID/io), or None. For
    `examples/s3_server.rs` during a restore these are the responses it sent (tokio writes to its
    sockets with write(2), and a GET writes no file); moto sends with send(2), which `wchar` does
    not count, so it has no such count."""
    if server.name != "s3s":
        return None
    try:
        with open(f"/proc/{server.proc.pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def json_extras(data):
    """The `--json` fields this harness does not know, as they come."""
    return {k: v for k, v in (data or {}).items() if k not in KNOWN_JSON}


def delta_project(node, project, quick):
    """A private copy of the npm project (the tree is changed in place): the whole node_modules
    with its lock files, or with --quick one whose node_modules holds only lodash."""
    rm(project)
    os.makedirs(project)
    src = os.path.join(node, "node_modules")
    if quick:
        os.makedirs(os.path.join(project, "node_modules"))
        subprocess.run(["cp", "-a", os.path.join(src, "lodash"), os.path.join(project, "node_modules")], check=True)
        version = json.load(open(os.path.join(src, "lodash", "package.json")))["version"]
        with open(os.path.join(project, "package.json"), "w") as f:
            json.dump({"name": "warmcache-bench-quick", "version": "1.0.0", "private": True,
                       "dependencies": {"lodash": version}}, f)
    else:
        subprocess.run(["cp", "-a", src, project], check=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(os.path.join(node, name), os.path.join(project, name))
    return os.path.join(project, "node_modules")


def change_one_file(tree, run):
    """Appends DELTA_APPEND bytes of new code to DELTA_FILE (different in every run)."""
    lines, k = [], 0
    while sum(len(x) for x in lines) < DELTA_APPEND:
        lines.append(f"function warmcacheBench{run}x{k}(a, b) {{ return a * {k + 7} + b - {run}; }}\n")
        k += 1
    text = "".join(lines)[:DELTA_APPEND - 1] + "\n"
    with open(os.path.join(tree, DELTA_FILE), "a") as f:
        f.write("\n" + text)


def add_package(project):
    """`npm install --no-save` of ADD_PACKAGE into the project (npm also rewrites
    node_modules/.package-lock.json: part of the change, as on any machine)."""
    proc = subprocess.run(
        ["npm", "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline",
         "--loglevel=error", ADD_PACKAGE],
        cwd=project,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"npm install {ADD_PACKAGE} failed in {project}:\n{proc.stderr[-2000:]}")


def check_restored(dst, want, changed, what):
    """The restored tree has the paths and sizes of `want`, and the changed files' contents."""
    got = tree_manifest(dst, hashed=False)
    if {p: e[:2] for p, e in got.items()} != {p: e[:2] for p, e in want.items()}:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        raise SystemExit(f"{what}: `{dst}` does not hold the snapshot's tree (missing {missing}, extra {extra}, ...)")
    bad = [p for p in changed if want[p][0] == "f" and file_digest(os.path.join(dst, p)) != want[p][2]]
    if bad:
        raise SystemExit(f"{what}: changed files restored with other contents: {bad[:5]}")


def delta_run(ctx, server, aws, node, base, run):
    """One run of the sequence on one server: full snapshot, cold restore (the previous version),
    one file changed, one package added; each snapshot next to the pipeline, each restore onto
    the previous version next to a cold restore and the pipeline. Returns {step: figures}."""
    env = server.env
    project = os.path.join(base, "project")
    prev, cold, pipe_dst, root = (os.path.join(base, d) for d in ("prev", "cold", "pipe", "root"))
    for d in (prev, cold, pipe_dst, root):
        rm(d)
    prefix = f"delta/{server.name}/{run}"
    url = f"s3://{BUCKET}/{prefix}"
    aws_q = f"'{aws}' s3 cp --only-show-errors"
    tree = delta_project(node, project, ctx.quick)
    bench.warm(tree)

    def wc(*args):
        # One machine: the same cache root for every command of the run, as a user's would be.
        return [BIN, "--root", root, "--json", "-q", *args, "--strict"]

    def snapshot_pair(step):
        """warmcache's snapshot and the pipeline's, in alternating order."""
        out = {}
        order = ("ours", "alt") if run % 2 else ("alt", "ours")
        for who in order:
            bench.settle()
            if who == "ours":
                listed = bucket_listing(aws, env, f"{prefix}/wc/")
                t, rss, data = timed(wc("snapshot", tree, "--remote", f"{url}/wc"), env=env, want_json=True)
                if data.get("status") != "uploaded":
                    raise SystemExit(f"delta {step} snapshot (run {run}, {server.name}) did not upload: {data}")
                grown = bucket_growth(listed, bucket_listing(aws, env, f"{prefix}/wc/"))
                out.update(wall=t, rss=rss, uploaded=data.get("uploaded_bytes") or 0, bucket=grown,
                           extras=json_extras(data), phases=data.get("phases"))
            else:
                key = f"{prefix}/pipe/{step}.tar.zst"
                t, rss, _ = timed(f"tar -C '{tree}' -cf - . | zstd -3 -T0 -q | {aws_q} - s3://{BUCKET}/{key}", env=env)
                out.update(pipe_wall=t, pipe_rss=rss, pipe_bytes=object_size(aws, env, key))
        return out

    def restore(dst, what):
        bench.settle()
        sent = server_sent(server)
        t, rss, data = timed(wc("restore", dst, "--remote", f"{url}/wc"), env=env, want_json=True)
        after = server_sent(server)
        if data.get("status") != "restored":
            raise SystemExit(f"delta {what} (run {run}, {server.name}) did not restore: {data}")
        return dict(wall=t, rss=rss, downloaded=data.get("downloaded_bytes") or 0,
                    sent=None if sent is None or after is None else after - sent, extras=json_extras(data),
                    phases=data.get("phases"))

    def restores(step, want, changed):
        """Onto the previous version (`prev`), cold into an empty directory, and the pipeline
        into an empty directory, the order rotating run by run."""
        out = {}
        for d in (cold, pipe_dst):
            rm(d)
        jobs = ["onto", "cold", "pipe"]
        jobs = jobs[run % 3:] + jobs[:run % 3]
        for job in jobs:
            if job == "onto":
                out["onto"] = restore(prev, f"{step} restore onto the previous version")
            elif job == "cold":
                out["cold"] = restore(cold, f"{step} cold restore")
            else:
                bench.settle()
                t, rss, _ = timed(
                    f"mkdir -p '{pipe_dst}' && {aws_q} s3://{BUCKET}/{prefix}/pipe/{step}.tar.zst - | zstd -dc -q "
                    f"| tar -C '{pipe_dst}' -xf - && sync -f '{pipe_dst}'",
                    env=env,
                )
                out["pipe"] = dict(wall=t, rss=rss)
        check_restored(prev, want, changed, f"delta {step} restore onto the previous version")
        check_restored(cold, want, changed, f"delta {step} cold restore")
        for d in (cold, pipe_dst):
            rm(d)
        return out

    m0 = tree_manifest(tree)
    full = snapshot_pair("full")
    full["changed_files"] = sum(1 for e in m0.values() if e[0] == "f")
    full["changed_raw"] = sum(e[1] for e in m0.values() if e[0] == "f")
    full["changed_zstd"] = full["pipe_bytes"]
    # The previous version on this machine, restored cold: the baseline of the restore rows.
    full["restore"] = {"cold": restore(prev, "cold restore of the full snapshot")}
    check_restored(prev, m0, [], "cold restore of the full snapshot")

    change_one_file(tree, run)
    m1 = tree_manifest(tree, prev=m0)
    changed, removed = tree_changes(m0, m1)
    if changed != [DELTA_FILE] or removed:
        raise SystemExit(f"changing {DELTA_FILE} changed {changed[:5]}, removed {removed[:5]}")
    one = snapshot_pair("change")
    one["changed_files"] = len(changed)
    one["changed_raw"], one["changed_zstd"] = packed_size(tree, changed)
    one["restore"] = restores("change", m1, changed)

    add_package(project)
    m2 = tree_manifest(tree, prev=m1)
    changed, removed = tree_changes(m1, m2)
    name = ADD_PACKAGE.rsplit("@", 1)[0]
    own = [p for p in changed if p.startswith(name + os.sep)]
    if not own or removed:
        raise SystemExit(f"npm install {ADD_PACKAGE} changed {changed[:5]}, removed {removed[:5]}")
    pkg = snapshot_pair("add")
    pkg["changed_files"] = len(changed)
    pkg["changed_raw"], pkg["changed_zstd"] = packed_size(tree, changed)
    pkg["package_files"] = len(own)
    pkg["package_raw"], pkg["package_zstd"] = packed_size(tree, own)
    pkg["other_changed"] = [p for p in changed if p not in own]
    pkg["restore"] = restores("add", m2, changed)

    subprocess.run([aws, "s3", "rm", "--quiet", "--recursive", f"{url}/"], env=env, check=True)
    for d in (project, prev, cold, pipe_dst, root):
        rm(d)
    return {"full": full, "change": one, "add": pkg}


def size_text(n):
    if n is None:
        return "n/a"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def phase_medians(calls):
    """The median of each numeric `--json` `phases` field over the runs (whatever the build reports)."""
    keys = []
    for call in calls:
        for k, v in (call.get("phases") or {}).items():
            if isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return {k: med([(c.get("phases") or {}).get(k) for c in calls]) for k in keys}


def compact(d):
    """Rounded numbers, no empty fields: the JSON summary stays one short line per server."""
    out = {}
    for k, v in d.items():
        if v in (None, {}, []):
            continue
        if isinstance(v, float):
            v = round(v) if abs(v) >= 100 or v.is_integer() else round(v, 3)
        out[k] = compact(v) if isinstance(v, dict) else v
    return out


def spread_text(values):
    values = [v for v in values if v is not None]
    return f"{min(values):.3f}–{max(values):.3f}" if len(values) > 1 else ""


def print_delta(label, files, size, runs, per_server):
    """The tables and the JSON summary; `per_server` is [(server, [run results])]."""
    print(f"\n### Delta snapshots and restores: {label} ({files:,} files, {size / 2**20:.0f} MiB)\n")
    print(
        f"One run: a full snapshot; a cold restore of it (the machine's previous version); "
        f"`{DELTA_FILE}` with {DELTA_APPEND // 1024} KiB of code appended, then a snapshot; "
        f"`npm install --no-save {ADD_PACKAGE}`, then a snapshot. warmcache keeps one cache root through "
        "the run; each snapshot runs next to `tar -c | zstd -3 -T0 | aws s3 cp -` of the same tree, the "
        "order alternating. Each later version is restored onto the previous one, cold into an empty "
        "directory, and by `aws s3 cp - | zstd -dc | tar -x` + `sync -f` into an empty directory. "
        f"{runs} runs, each on its own key; medians, ratios of the medians, spread = min–max of the "
        "per-run ratios.\n"
    )
    print(
        "*changed, `zstd -3`*: `tar -c | zstd -3` of the files new or different in the tree (found by "
        "content hash), the floor of a delta; for the full snapshot, the whole tree (the pipeline's "
        "object). *uploaded*: `snapshot --json` `uploaded_bytes`; *in bucket*: the bytes of objects new "
        "or replaced under the snapshot's key (`aws s3api list-objects-v2` before and after). "
        "*downloaded*: `restore --json` `downloaded_bytes`; *server sent*: what the server process "
        "wrote meanwhile (`wchar` of `/proc/PID/io`; `examples/s3_server.rs` only).\n"
    )
    summary = {"tree": label, "files": files, "bytes": size, "runs": runs, "servers": {}}
    print(
        "| server | snapshot | changed files | changed, `zstd -3` | uploaded / in bucket | uploaded ÷ changed "
        "(json / bucket) | warmcache | ÷ full snapshot (spread) | pipeline (bytes) | warmcache ÷ pipeline | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = {"full": "full", "change": "one file changed", "add": f"one package added (`{ADD_PACKAGE}`)"}
    for server, rows in per_server:
        ssum = summary["servers"].setdefault(server.name, {})
        full_walls = [r["full"]["wall"] for r in rows]
        for step in ("full", "change", "add"):
            rs = [r[step] for r in rows]
            wall, pipe_wall = med([x["wall"] for x in rs]), med([x["pipe_wall"] for x in rs])
            up, bucket = med([x["uploaded"] for x in rs]), med([x["bucket"] for x in rs])
            zst = med([x["changed_zstd"] for x in rs])
            r_json, r_bucket = up / zst, bucket / zst
            r_time = wall / med(full_walls)
            time_spread = spread_text([x["wall"] / f for x, f in zip(rs, full_walls)])
            if step == "full":
                goal = ""
            elif step == "change":
                goal = (f"uploaded ≤ 2× changed: {'met' if r_bucket <= 2 else 'NOT met'}; "
                        f"time < 0.10 × full: {'met' if r_time < 0.10 else 'NOT met'}")
            else:
                goal = f"uploaded ≤ 2× changed: {'met' if r_bucket <= 2 else 'NOT met'}"
            print(
                f"| {server.label} | {names[step]} | {med([x['changed_files'] for x in rs]):,.0f} "
                f"({size_text(med([x['changed_raw'] for x in rs]))}) | {size_text(zst)} | {size_text(up)} / "
                f"{size_text(bucket)} | **{r_json:.2f}** / **{r_bucket:.2f}** | {s(wall)} | "
                f"{'1' if step == 'full' else f'**{r_time:.3f}** ({time_spread})'} | {s(pipe_wall)} "
                f"({size_text(med([x['pipe_bytes'] for x in rs]))}) | {wall / pipe_wall:.2f} | {goal} |"
            )
            ssum[step] = {
                "snapshot_s": round(wall, 3), "pipeline_s": round(pipe_wall, 3),
                "uploaded_bytes": up, "bucket_bytes": bucket, "changed_files": med([x["changed_files"] for x in rs]),
                "changed_bytes": med([x["changed_raw"] for x in rs]), "changed_zstd_bytes": zst,
                "uploaded_over_changed": round(r_json, 3), "bucket_over_changed": round(r_bucket, 3),
                "time_over_full": round(r_time, 4), "pipeline_bytes": med([x["pipe_bytes"] for x in rs]),
                "json_extras": rs[0]["extras"], "phases": phase_medians(rs),
            }
        add = rows[0]["add"]
        ssum["add"]["package_files"] = add["package_files"]
        ssum["add"]["package_zstd_bytes"] = med([r["add"]["package_zstd"] for r in rows])
        ssum["add"]["other_changed"] = add["other_changed"]
    print(
        "\n| server | restore | downloaded / server sent | delta (changed, `zstd -3`) | downloaded ÷ delta "
        "(json / server) | warmcache | ÷ cold restore (spread) | pipeline | warmcache ÷ pipeline | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for server, rows in per_server:
        ssum = summary["servers"][server.name]
        base = [r["full"]["restore"]["cold"] for r in rows]
        print(
            f"| {server.label} | full snapshot, cold (the previous version) "
            f"| {size_text(med([b['downloaded'] for b in base]))} / {size_text(med([b['sent'] for b in base]))} "
            f"| | | {s(med([b['wall'] for b in base]))} | | | | |"
        )
        ssum["full"]["restore_cold_s"] = round(med([b["wall"] for b in base]), 3)
        ssum["full"]["restore_cold_downloaded_bytes"] = med([b["downloaded"] for b in base])
        ssum["full"]["restore_cold_server_sent_bytes"] = med([b["sent"] for b in base])
        ssum["full"]["restore_cold_phases"] = phase_medians(base)
        for step in ("change", "add"):
            rs = [r[step] for r in rows]
            zst = med([x["changed_zstd"] for x in rs])
            for kind in ("onto", "cold"):
                xs = [x["restore"][kind] for x in rs]
                wall = med([x["wall"] for x in xs])
                down, sent = med([x["downloaded"] for x in xs]), med([x["sent"] for x in xs])
                cold_wall = med([x["restore"]["cold"]["wall"] for x in rs])
                pipe_wall = med([x["restore"]["pipe"]["wall"] for x in rs])
                judged = sent if sent is not None else down
                goal = (f"downloaded ≤ 2× delta: {'met' if judged / zst <= 2 else 'NOT met'}"
                        if kind == "onto" else "")
                what = f"{names[step]}: onto the previous version" if kind == "onto" else f"{names[step]}: cold"
                ratio_cold = (f"**{wall / cold_wall:.3f}** ("
                              + spread_text([x["restore"]["onto"]["wall"] / x["restore"]["cold"]["wall"] for x in rs])
                              + ")") if kind == "onto" else "1"
                print(
                    f"| {server.label} | {what} | {size_text(down)} / {size_text(sent)} | {size_text(zst)} "
                    f"| **{down / zst:.2f}** / {'n/a' if sent is None else f'**{sent / zst:.2f}**'} | {s(wall)} "
                    f"| {ratio_cold} | {s(pipe_wall)} | {wall / pipe_wall:.2f} | {goal} |"
                )
                ssum[step][f"restore_{kind}_s"] = round(wall, 3)
                ssum[step][f"restore_{kind}_downloaded_bytes"] = down
                ssum[step][f"restore_{kind}_server_sent_bytes"] = sent
                ssum[step][f"restore_{kind}_json_extras"] = xs[0]["extras"]
                ssum[step][f"restore_{kind}_phases"] = phase_medians(xs)
            ssum[step]["restore_pipeline_s"] = round(med([x["restore"]["pipe"]["wall"] for x in rs]), 3)
            ssum[step]["restore_onto_over_cold"] = round(ssum[step]["restore_onto_s"] / ssum[step]["restore_cold_s"], 4)
    for server, rows in per_server:
        other = rows[0]["add"]["other_changed"]
        add = summary["servers"][server.name]["add"]
        print(
            f"\nThe package itself ({server.name}): {add['package_files']} files, "
            f"{size_text(add['package_zstd_bytes'])} as `tar | zstd -3`; npm also changed "
            f"{', '.join(f'`{p}`' for p in other) or 'nothing else'}."
        )
        break
    extras = {
        name: {step: v.get("json_extras") for step, v in steps.items() if v.get("json_extras")}
        for name, steps in summary["servers"].items()
    }
    extras = {k: v for k, v in extras.items() if v}
    print(
        "\nOther `--json` fields of the snapshots (run 0): "
        + (json.dumps(extras, sort_keys=True) if extras else "none (this build reports only `uploaded_bytes`)")
        + "."
    )
    print("\nSummary (JSON):\n")
    print("```json")
    print(json.dumps(compact(summary), sort_keys=True))
    print("```")


def bench_delta(ctx, aws, moto_server, node, only_servers):
    runs = min(ctx.runs, 3)
    base = ctx.dir("speed-delta")
    if ctx.quick:
        label = "`node_modules` holding only `lodash` (--quick)"
    else:
        label = "`node_modules`"
    # Shown figures are of the tree as the runs start (a copy of the installed one).
    src = os.path.join(node, "node_modules", "lodash") if ctx.quick else os.path.join(node, "node_modules")
    files, size = bench.tree_stats(src)
    servers, per_server = [], []
    started = time.perf_counter()
    try:
        if "moto" in only_servers:
            servers.append(start_moto(moto_server, aws, base))
        if "s3s" in only_servers:
            servers.append(start_s3s(base))
        for server in servers:
            rows = []
            for run in range(runs):
                rows.append(delta_run(ctx, server, aws, node, os.path.join(base, "run"), run))
            per_server.append((server, rows))
        print_delta(label, files, size, runs, per_server)
        print(f"\n{label} is a copy of `{shown(src)}`. ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        for server in servers:
            server.stop()
        rm(os.path.join(base, "s3s-data"))
        rm(os.path.join(base, "run"))


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


PARTS = ["remote", "import", "hit", "swr", "gc", "delta"]
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
    parser.add_argument(
        "--servers",
        default=None,
        help="remote, delta: which S3 servers, of moto and s3s (default: both for remote, s3s for delta)",
    )
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
            bench_remote(ctx, aws, moto_server, node, args.trees.split(","), (args.servers or "moto,s3s").split(","))
        elif part == "delta":
            bench_delta(ctx, aws, moto_server, node, (args.servers or "s3s").split(","))
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
