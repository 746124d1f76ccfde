// The client's tests, run by `node --test` and by `deno test` against the installed package.
// They need WARMCACHE_BINARY (the CLI under test) and, for the remote, the AWS variables of an S3
// endpoint with a `warmcache` bucket; npm/test.sh sets them up.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import process from "node:process";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as wc from "warmcache";

const LONG = { timeout: 180_000 };

function workspace(t) {
  const dir = mkdtempSync(join(tmpdir(), "warmcache-client-test-"));
  t.after?.(() => rmSync(dir, { recursive: true, force: true }));
  return { dir, root: join(dir, "cache") };
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected the call to reject");
}

/** Whether a process is gone (no such pid, or a zombie nobody reaped yet). */
function gone(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

async function until(what, predicate, limitMs = 60_000) {
  const deadline = Date.now() + limitMs;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`gave up after ${limitMs} ms waiting until ${what}`);
    await sleep(50);
  }
}

test("ensure builds, then hits; results are the CLI's JSON", LONG, async (t) => {
  const { dir, root } = workspace(t);
  writeFileSync(join(dir, "in.txt"), "v1");
  const opts = { root, cwd: dir, inputs: ["in.txt"], build: 'cp in.txt "$WARMCACHE_OUT"' };
  const built = await wc.ensure("demo", opts);
  assert.equal(built.status, "built");
  assert.equal(built.name, "demo");
  assert.equal(readFileSync(built.path, "utf8"), "v1");
  assert.match(built.artifact, /^[0-9a-f]{64}$/);
  assert.equal(typeof built.fingerprint, "string");
  assert.equal(built.failure, null);
  assert.equal(typeof built.updated_at, "number");
  assert.equal(built.warning, undefined);
  assert.equal(built.schema, `warmcache.ensure/${wc.SCHEMA_VERSIONS.ensure}`);
  const hit = await wc.ensure("demo", { ...opts, lease: 60_000 });
  assert.equal(hit.status, "hit");
  assert.equal(hit.artifact, built.artifact);
  assert.ok(hit.lease_expires_at > Date.now());
  const counted = await wc.stats("demo", { root, since: "1h" });
  assert.equal(counted.schema, `warmcache.stats/${wc.SCHEMA_VERSIONS.stats}`);
  assert.equal(counted.total.hits, 1);
  assert.equal(counted.total.misses, 1);
  assert.equal(counted.entries[0].name, "demo");
  assert.equal(counted.entries[0].builds_ok, 1);
});

test("a stale result is a result with its warning, not an exception", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const opts = { root, cwd: dir, inputs: ["in.txt"], build: 'cp in.txt "$WARMCACHE_OUT"', validate: 'grep -q good "$WARMCACHE_OUT"' };
  writeFileSync(join(dir, "in.txt"), "good");
  const good = await wc.ensure("s", opts);
  writeFileSync(join(dir, "in.txt"), "bad");
  const stale = await wc.ensure("s", opts);
  assert.equal(stale.status, "stale");
  assert.equal(stale.artifact, good.artifact);
  assert.equal(stale.failure?.kind, "deterministic");
  assert.equal(stale.failure?.next_retry_at, null);
  assert.match(stale.warning ?? "", /serving a stale `s`/);
});

test("staleWhileRevalidate resolves at once with the last good artifact and builds in the background", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const gate = join(dir, "go");
  // The builder waits for the gate: the call resolving while it is closed proves it did not wait.
  const opts = {
    root,
    cwd: dir,
    inputs: ["in.txt"],
    build: `touch started; while [ ! -e '${gate}' ]; do [ -e in.txt ] || exit 1; sleep 0.02; done; cp in.txt "$WARMCACHE_OUT"`,
    staleWhileRevalidate: true,
  };
  writeFileSync(join(dir, "in.txt"), "v1");
  writeFileSync(gate, "");
  const first = await wc.ensure("swr", opts);
  assert.equal(first.status, "built");
  assert.equal(first.revalidation, undefined);
  rmSync(gate);
  rmSync(join(dir, "started"));
  writeFileSync(join(dir, "in.txt"), "version 2");
  const stale = await wc.ensure("swr", opts);
  assert.equal(stale.status, "stale");
  assert.equal(stale.artifact, first.artifact);
  assert.equal(readFileSync(stale.path, "utf8"), "v1");
  assert.equal(stale.revalidation, "started");
  assert.equal(typeof stale.revalidation_pid, "number");
  assert.match(stale.stale_reason ?? "", /inputs changed/);
  assert.match(stale.warning ?? "", /built in the background/);
  // While the background build runs, another call starts nothing.
  await until("the background build started", () => existsSync(join(dir, "started")));
  const again = await wc.ensure("swr", opts);
  assert.equal(again.revalidation, "under-way");
  writeFileSync(gate, "");
  await until("the background build ended", () => gone(stale.revalidation_pid));
  const fresh = await wc.ensure("swr", opts);
  assert.equal(fresh.status, "hit");
  assert.equal(readFileSync(fresh.path, "utf8"), "version 2");
});

test("a failure is a WarmcacheError with exit code, kind, message and failure record", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const err = await rejection(wc.ensure("f", { root, cwd: dir, build: "echo boom >&2; exit 3" }));
  assert.ok(err instanceof wc.WarmcacheError);
  assert.equal(err.exitCode, 1);
  assert.equal(err.kind, "failure");
  assert.equal(err.status, "failed");
  assert.equal(err.failure?.kind, "transient");
  assert.equal(err.failure?.attempts, 1);
  assert.ok(err.failure?.next_retry_at > Date.now() - 1000);
  assert.match(err.failure?.error ?? "", /boom/);
  assert.match(err.message, /f/);
  assert.match(err.stderr, /^error: /m);

  const missing = await rejection(wc.path("nothing-here", { root }));
  assert.equal(missing.kind, "failure");
  assert.equal(missing.exitCode, 1);
  assert.equal(missing.failure, undefined);
});

test("a usage error is kind usage, exit code 2", LONG, async (t) => {
  const { root } = workspace(t);
  const err = await rejection(wc.gc({ root, maxSize: "lots" }));
  assert.ok(err instanceof wc.WarmcacheError);
  assert.equal(err.exitCode, 2);
  assert.equal(err.kind, "usage");
  assert.match(err.message, /max-size/);
});

test("import, path, status, activate, verify and gc", LONG, async (t) => {
  const { dir, root } = workspace(t);
  mkdirSync(join(dir, "tree", "bin"), { recursive: true });
  writeFileSync(join(dir, "tree", "bin", "tool"), "#!/bin/sh\necho hi\n");
  writeFileSync(join(dir, "tree", "data.txt"), "data");
  const imported = await wc.importPath(join(dir, "tree"), { root, name: "t", modes: ["bin/*=755"] });
  assert.equal(imported.kind, "dir");
  assert.equal(imported.files, 2);
  assert.equal(imported.archive, null);
  assert.equal(imported.created, true);

  const p = await wc.path("t", { root, lease: "1m" });
  assert.equal(p.path, imported.path);
  assert.equal(p.artifact, imported.artifact);
  assert.ok(p.lease_expires_at > Date.now());

  const st = await wc.status("t", { root });
  assert.equal(realpathSync(st.root), realpathSync(root));
  assert.equal(st.entries.length, 1);
  assert.equal(st.entries[0].name, "t");
  assert.equal(st.entries[0].source, "import");
  assert.equal(st.entries[0].present, true);
  assert.equal(st.entries[0].artifact_info?.kind, "dir");
  assert.equal(st.entries[0].failure, null);

  const dest = join(dir, "installed");
  const act = await wc.activate("t", dest, { root, hooks: ['touch "$WARMCACHE_STAGING/signed"'] });
  assert.equal(act.artifact, imported.artifact);
  assert.equal(act.activation.replaced, false);
  assert.equal(act.activation.kind, "dir");
  assert.ok(existsSync(join(dest, "signed")));
  assert.equal(execFileSync(join(dest, "bin", "tool"), { encoding: "utf8" }), "hi\n");

  const v = await wc.verify({ root });
  assert.equal(v.checked, v.ok);
  assert.deepEqual(v.damaged, []);

  const g = await wc.gc({ root, dryRun: true, maxSize: 0 });
  assert.equal(g.dry_run, true);
  assert.ok(g.protected >= 1);
  assert.equal(typeof g.budget_met, "boolean");
});

test("snapshot, restore, push and pull through S3", LONG, async (t) => {
  assert.ok(process.env.AWS_ENDPOINT_URL, "AWS_ENDPOINT_URL must name the S3 test server (npm/test.sh starts one)");
  const { dir, root } = workspace(t);
  const remote = `s3://warmcache/client-test-${Date.now()}-${process.pid}`;
  mkdirSync(join(dir, "tree"));
  writeFileSync(join(dir, "tree", "a.txt"), "a");
  const snap = await wc.snapshot(join(dir, "tree"), { remote: `${remote}/snap` });
  assert.equal(snap.status, "uploaded");
  assert.equal(snap.files, 1);
  const rest = await wc.restore(join(dir, "copy"), { remote: `${remote}/snap`, restoreTimeout: "2m" });
  assert.equal(rest.status, "restored");
  assert.equal(readFileSync(join(dir, "copy", "a.txt"), "utf8"), "a");
  assert.equal(rest.matched, `${remote}/snap`);
  assert.equal(rest.exact, true);
  const fell = await wc.restore(join(dir, "branch"), { remote: `${remote}/branch`, fallback: [`${remote}/snap`] });
  assert.equal(fell.status, "restored");
  assert.equal(fell.matched, `${remote}/snap`);
  assert.equal(fell.exact, false);
  writeFileSync(join(dir, "tree", "b.txt"), "b");
  const refused = await wc.snapshot(join(dir, "tree"), { remote: `${remote}/snap`, readOnly: true });
  assert.equal(refused.status, "read_only");

  writeFileSync(join(dir, "in.txt"), "shared");
  const recipe = { cwd: dir, inputs: ["in.txt"], build: 'cp in.txt "$WARMCACHE_OUT"' };
  const built = await wc.ensure("shared", { ...recipe, root });
  const pushed = await wc.push("shared", { root, remote });
  assert.equal(pushed.status, "pushed");
  assert.equal(pushed.artifact, built.artifact);
  assert.deepEqual(pushed.index, { state: "created" });
  const pulled = await wc.pull("shared", { ...recipe, root: join(dir, "other-cache"), remote });
  assert.equal(pulled.status, "pulled");
  assert.equal(pulled.artifact, built.artifact);
  assert.equal(readFileSync(pulled.path, "utf8"), "shared");
  const again = await wc.push("shared", { root, remote });
  assert.equal(again.status, "present");
  assert.deepEqual(again.index, { state: "present", artifact: built.artifact });
  const miss = await wc.pull("never-pushed", { cwd: dir, build: "true", root, remote });
  assert.equal(miss.status, "miss");
  assert.match(miss.warning ?? "", /no shared artifact/);

  const down = await wc.restore(join(dir, "copy"), { remote: `${remote}/snap`, env: { ...process.env, AWS_ENDPOINT_URL: "http://127.0.0.1:9" } });
  assert.equal(down.status, "degraded");
  assert.match(down.warning ?? "", /not restored/);
  assert.equal(readFileSync(join(dir, "copy", "a.txt"), "utf8"), "a");
});

// Cancelling a call must take its builder down with it. warmcache runs the builder in its own
// process group, so this holds only once the CLI kills that group when it gets SIGTERM (the Rust
// side's signal forwarding). If this test fails with "the builder survived", that fix is missing
// from the binary under test.
const builderPids = (file) => (existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map(Number) : []);

async function assertDies(pids) {
  try {
    await until("the builder died", () => pids.every(gone), 30_000);
  } catch {
    for (const pid of pids) {
      try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
    }
    assert.fail(`the builder survived its cancelled warmcache (pids ${pids.join(", ")}): the CLI does not kill the builder's process group on SIGTERM yet`);
  }
}

test("aborting a call with an AbortSignal kills its builder (needs the CLI to kill the builder group on SIGTERM)", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const pids = join(dir, "pids");
  const controller = new AbortController();
  const call = wc.ensure("slow", { root, cwd: dir, build: `echo $$ >> '${pids}'; sleep 600 & echo $! >> '${pids}'; wait`, signal: controller.signal });
  const settled = call.then(() => "resolved", () => "rejected");
  await until("the builder started", () => builderPids(pids).length === 2);
  controller.abort(new Error("the test cancels"));
  const err = await rejection(call);
  assert.ok(err instanceof wc.WarmcacheError);
  assert.equal(err.kind, "aborted");
  assert.equal(await settled, "rejected");
  await assertDies(builderPids(pids));
});

test("a call's timeout cancels it and kills its builder (needs the CLI to kill the builder group on SIGTERM)", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const pids = join(dir, "pids");
  const err = await rejection(wc.ensure("slow", { root, cwd: dir, build: `echo $$ >> '${pids}'; sleep 600 & echo $! >> '${pids}'; wait`, timeout: 5000 }));
  assert.ok(err instanceof wc.WarmcacheError);
  assert.equal(err.kind, "timeout");
  // Whatever of the builder had started by then must be gone.
  await assertDies(builderPids(pids));
});

test("the installed platform package provides the binary; `npx warmcache` runs it", LONG, () => {
  const saved = process.env.WARMCACHE_BINARY;
  delete process.env.WARMCACHE_BINARY;
  try {
    const bin = wc.binaryPath();
    assert.match(bin, /node_modules\/@warmcache\/linux-x64-gnu\/bin\/warmcache$/);
    const version = execFileSync(bin, ["--version"], { encoding: "utf8" });
    assert.match(version, /^warmcache \d+\.\d+\.\d+/);
  } finally {
    process.env.WARMCACHE_BINARY = saved;
  }
  const launcher = join(process.cwd(), "node_modules", ".bin", "warmcache");
  const env = { ...process.env };
  delete env.WARMCACHE_BINARY;
  assert.match(execFileSync(launcher, ["--version"], { encoding: "utf8", env }), /^warmcache \d+\.\d+\.\d+/);
  let code = 0;
  try {
    execFileSync(launcher, ["frobnicate"], { env, stdio: "ignore" });
  } catch (err) {
    code = err.status;
  }
  assert.equal(code, 2, "the launcher passes the CLI's exit code through");
});

test("a relative WARMCACHE_BINARY is relative to this process's directory, not the call's cwd", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const saved = process.env.WARMCACHE_BINARY;
  process.env.WARMCACHE_BINARY = relative(process.cwd(), saved ?? "");
  try {
    const st = await wc.status(undefined, { root, cwd: dir });
    assert.deepEqual(st.entries, []);
  } finally {
    process.env.WARMCACHE_BINARY = saved;
  }
});

test("WARMCACHE_BINARY pointing nowhere is a spawn error naming the fix", async () => {
  const saved = process.env.WARMCACHE_BINARY;
  process.env.WARMCACHE_BINARY = "/nonexistent/warmcache";
  try {
    const err = await rejection(wc.status());
    assert.equal(err.kind, "spawn");
    assert.match(err.message, /WARMCACHE_BINARY/);
  } finally {
    process.env.WARMCACHE_BINARY = saved;
  }
});

test("every result and error names the schema version this client reads", LONG, async (t) => {
  const { dir, root } = workspace(t);
  const st = await wc.status(undefined, { root, cwd: dir });
  assert.equal(st.schema, `warmcache.status/${wc.SCHEMA_VERSIONS.status}`);
  const err = await rejection(wc.path("nothing-here", { root }));
  assert.equal(err.kind, "failure");
});

test("an object of a major version this client does not know is an output error, not a result", async (t) => {
  const { dir, root } = workspace(t);
  // A stand-in for a newer warmcache whose `status` object changed incompatibly.
  const fake = join(dir, "warmcache-v2");
  writeFileSync(fake, `#!/bin/sh\necho '{"schema":"warmcache.status/2","root":"x","entries":{}}'\n`, { mode: 0o755 });
  const err = await rejection(wc.status(undefined, { root, binary: fake }));
  assert.equal(err.kind, "output");
  assert.match(err.message, /warmcache\.status\/2.*warmcache\.status\/1/);
  // One from before schema identities: refused too, naming why.
  const old = join(dir, "warmcache-old");
  writeFileSync(old, `#!/bin/sh\necho '{"root":"x","entries":[]}'\n`, { mode: 0o755 });
  const stale = await rejection(wc.status(undefined, { root, binary: old }));
  assert.equal(stale.kind, "output");
  assert.match(stale.message, /without a schema identity/);
});

if (globalThis.Deno) {
  test("Deno: `npm:warmcache` is the same module as the bare specifier", async () => {
    const viaNpm = await import("npm:warmcache");
    assert.equal(viaNpm.ensure, wc.ensure);
    assert.equal(viaNpm.WarmcacheError, wc.WarmcacheError);
  });
}
