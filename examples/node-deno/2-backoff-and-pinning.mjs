// @ts-check
// Problem 2: a transient build failure (the network) recovers after a short backoff, while a
// validation failure stays pinned (no rebuilds, whatever the time) until the source changes.
//
//   node 2-backoff-and-pinning.mjs        deno run -A 2-backoff-and-pinning.mjs
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { setTimeout as sleep } from "node:timers/promises";
import { ensure, WarmcacheError } from "warmcache";

const work = mkdtempSync(join(tmpdir(), "warmcache-backoff-"));
const root = join(work, "cache");
const log = join(work, "builds.log");
// `fetch-data` fails like a network outage while the file `offline` exists (transient, retried
// after 2 s, doubling); `schema` must validate, and a validation failure is deterministic.
writeFileSync(join(work, "warmcache.toml"), `
[entry.fetch-data]
inputs = ["data.url"]
build = "echo fetch >> '${log}'; if [ -e offline ]; then echo 'curl: (6) Could not resolve host' >&2; exit 6; fi; cp data.url \\"$WARMCACHE_OUT\\""
transient_patterns = ["Could not resolve host"]
backoff_initial = "2s"
backoff_cap = "4s"

[entry.schema]
inputs = ["schema.txt"]
build = "echo schema >> '${log}'; cp schema.txt \\"$WARMCACHE_OUT\\""
validate = "grep -qx valid \\"$WARMCACHE_OUT\\""
`);
const builds = (what) => (existsSync(log) ? readFileSync(log, "utf8").split("\n").filter((l) => l === what).length : 0);

/** `ensure`, returning the WarmcacheError instead of throwing it. */
async function attempt(name) {
  try {
    return await ensure(name, { root, cwd: work });
  } catch (err) {
    if (err instanceof WarmcacheError && err.kind === "failure") return err;
    throw err;
  }
}

let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failed = true;
};

try {
  // Transient: the network is down on the first build.
  writeFileSync(join(work, "data.url"), "https://example.invalid/data\n");
  writeFileSync(join(work, "offline"), "");
  const down = await attempt("fetch-data");
  const retryAt = down instanceof WarmcacheError ? down.failure?.next_retry_at ?? null : null;
  check(down instanceof WarmcacheError && down.failure?.kind === "transient" && retryAt !== null, "a network failure is transient, with a retry time");
  const again = await attempt("fetch-data");
  // Before the retry time nothing is built; a rebuild is only allowed once the time has come.
  const rebuilt = builds("fetch") > 1;
  check(!rebuilt || Date.now() >= (retryAt ?? Infinity), `no rebuild before the retry time (${rebuilt ? "rebuilt after it" : "blocked"})`);
  check(again instanceof WarmcacheError && again.failure?.attempts === (rebuilt ? 2 : 1), "  ... and the call reports the recorded failure");

  rmSync(join(work, "offline"));
  await sleep(Math.max(0, (retryAt ?? 0) - Date.now()) + 100);
  const up = await attempt("fetch-data");
  check(!(up instanceof WarmcacheError) && up.status === "built", "after the backoff, with the network back, it builds");

  // Deterministic: the schema does not validate.
  writeFileSync(join(work, "schema.txt"), "invalid\n");
  const bad = await attempt("schema");
  check(bad instanceof WarmcacheError && bad.failure?.kind === "deterministic" && bad.failure.next_retry_at === null, "a validation failure is deterministic, with no retry time");
  await sleep(4500); // longer than any transient backoff above
  for (let i = 0; i < 3; i++) await attempt("schema");
  check(builds("schema") === 1, `it stays pinned: built once, not again on later calls (${builds("schema")} builds)`);
  writeFileSync(join(work, "schema.txt"), "valid\n");
  const good = await attempt("schema");
  check(!(good instanceof WarmcacheError) && good.status === "built", "once the source changes it builds at once");
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.error("backoff and pinning: the fixed behaviour does NOT hold");
  process.exit(1);
}
console.log("backoff and pinning: transient failures recover, deterministic ones stay pinned until the inputs change");
