// @ts-check
// Problem 4: a sandbox runner restores its Deno module cache from S3 before it starts and
// snapshots it after. S3 is advisory: when it is down the runner starts cold and says so, and a
// cold (smaller) cache never replaces a warm snapshot.
//
// Needs an S3-compatible endpoint in the AWS variables, e.g. the project's test server:
//   target/release/examples/s3_server DIR --port 0     (prints endpoint=http://127.0.0.1:PORT)
//   AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=warmcache \
//   AWS_SECRET_ACCESS_KEY=warmcache-secret AWS_REGION=us-east-1 node 4-sandbox-module-cache.mjs
// (or `deno run -A 4-sandbox-module-cache.mjs`); WARMCACHE_EXAMPLE_BUCKET names the bucket
// (default `warmcache`).
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { restore, snapshot } from "warmcache";

if (!process.env.AWS_ENDPOINT_URL) {
  console.error("set AWS_ENDPOINT_URL (and the AWS credentials) to an S3-compatible endpoint; see the comment at the top of this file");
  process.exit(2);
}
const work = mkdtempSync(join(tmpdir(), "warmcache-sandbox-"));
const remote = `s3://${process.env.WARMCACHE_EXAMPLE_BUCKET ?? "warmcache"}/sandbox-${Date.now()}-${process.pid}/deno-cache`;
const cacheDir = join(work, "deno-cache");
const count = () => (existsSync(join(cacheDir, "deps")) ? readdirSync(join(cacheDir, "deps")).length : 0);

/** The sandbox itself: "fetches" the modules its program imports into the module cache. */
function runSandbox(modules) {
  mkdirSync(join(cacheDir, "deps"), { recursive: true });
  let fetched = 0;
  for (let i = 0; i < modules; i++) {
    const file = join(cacheDir, "deps", `mod${i}.js`);
    if (!existsSync(file)) {
      writeFileSync(file, `export const m${i} = ${i};\n`.repeat(50));
      fetched++;
    }
  }
  return fetched;
}

let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failed = true;
};

try {
  // First run anywhere: nothing to restore, the sandbox fetches everything, the cache is uploaded.
  const none = await restore(cacheDir, { remote });
  check(none.status === "no-snapshot", `first start: no snapshot yet (${none.status})`);
  check(runSandbox(40) === 40, "  ... the sandbox fetched its 40 modules");
  const up = await snapshot(cacheDir, { remote });
  check(up.status === "uploaded", `  ... and the warm cache was uploaded (${up.status})`);

  // A fresh machine: restore before starting, so nothing is fetched.
  rmSync(cacheDir, { recursive: true });
  const warm = await restore(cacheDir, { remote });
  check(warm.status === "restored" && count() === 40, `fresh machine: restored ${count()} modules (${warm.status})`);
  check(runSandbox(40) === 0, "  ... the sandbox fetched nothing");
  const same = await snapshot(cacheDir, { remote });
  check(same.status === "unchanged", `  ... and the snapshot was left as it was (${same.status})`);

  // S3 is down: the runner starts cold, loudly, and does not fail.
  const down = { ...process.env, AWS_ENDPOINT_URL: "http://127.0.0.1:9" };
  rmSync(cacheDir, { recursive: true });
  const cold = await restore(cacheDir, { remote, env: down, restoreTimeout: "30s" });
  check(cold.status === "degraded" && (cold.warning ?? "").includes("not restored"), `S3 down: restore is advisory (${cold.status}), with a warning`);
  check(runSandbox(3) === 3, "  ... the sandbox runs cold (it fetched the 3 modules of a small program)");
  const notUp = await snapshot(cacheDir, { remote, env: down });
  check(notUp.status === "degraded", `  ... and the snapshot is skipped (${notUp.status})`);

  // S3 is back, but this machine's cache is cold: it must not replace the warm snapshot.
  const guarded = await snapshot(cacheDir, { remote });
  check(guarded.status === "refused" && (guarded.warning ?? "").includes("--force"), `a cold cache never replaces the warm snapshot (${guarded.status})`);
  rmSync(cacheDir, { recursive: true });
  const again = await restore(cacheDir, { remote });
  check(again.status === "restored" && count() === 40, `  ... the remote still holds the warm cache (${count()} modules)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.error("sandbox module cache: the fixed behaviour does NOT hold");
  process.exit(1);
}
console.log("sandbox module cache: restored warm, advisory when S3 is down, warm snapshot never replaced by a cold one");
