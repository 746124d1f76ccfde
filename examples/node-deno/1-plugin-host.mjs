// @ts-check
// Problem 1: a plugin host loads extension bundles through `ensure`. A broken bundle source is
// built once, not on every cold start, and the host keeps serving the last good bundle (stale,
// with a warning) until the source is fixed.
//
//   node 1-plugin-host.mjs        deno run -A 1-plugin-host.mjs
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import process from "node:process";
import { ensure } from "warmcache";

const work = mkdtempSync(join(tmpdir(), "warmcache-plugin-host-"));
const root = join(work, "cache");
const builds = join(work, "builds.log");
mkdirSync(join(work, "ext"));
// The bundler: counts its runs, copies the source into the bundle directory. Validation refuses a
// bundle without a default export (a deterministic failure: retrying cannot help).
writeFileSync(join(work, "warmcache.toml"), `
[entry."ext/greeter"]
inputs = ["ext/**"]
build = "echo build >> '${builds}' && mkdir \\"$WARMCACHE_OUT\\" && cp ext/main.mjs \\"$WARMCACHE_OUT/main.mjs\\""
output = "dir"
validate = "grep -q '^export default' \\"$WARMCACHE_OUT/main.mjs\\""
`);
const buildCount = () => readFileSync(builds, "utf8").split("\n").filter(Boolean).length;

/** One cold start of the host: ensure the bundle, load it, call it. */
async function coldStart() {
  const bundle = await ensure("ext/greeter", { root, cwd: work });
  const plugin = await import(pathToFileURL(join(bundle.path, "main.mjs")).href + `?${bundle.artifact}`);
  return { bundle, greeting: plugin.default("world") };
}

let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failed = true;
};

try {
  writeFileSync(join(work, "ext", "main.mjs"), 'export default (who) => `hello, ${who}`;\n');
  const first = await coldStart();
  check(first.bundle.status === "built" && first.greeting === "hello, world", `first start builds and loads v1 (${first.bundle.status})`);

  // A bad edit: the bundle has no default export any more.
  writeFileSync(join(work, "ext", "main.mjs"), "export const greet = (who) => `hi, ${who}`;\n");
  for (let start = 1; start <= 3; start++) {
    const { bundle, greeting } = await coldStart();
    check(bundle.status === "stale" && greeting === "hello, world", `cold start ${start} with the broken source serves the last good bundle (${bundle.status})`);
    check(bundle.failure?.kind === "deterministic" && (bundle.warning ?? "").includes("stale"), "  ... with the failure (deterministic) and a warning");
  }
  check(buildCount() === 2, `the broken source was built once, not on every cold start (${buildCount()} builds in all)`);

  writeFileSync(join(work, "ext", "main.mjs"), 'export default (who) => `hello again, ${who}`;\n');
  const fixed = await coldStart();
  check(fixed.bundle.status === "built" && fixed.greeting === "hello again, world", "the fixed source is built and loaded at once");
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.error("plugin host: the fixed behaviour does NOT hold");
  process.exit(1);
}
console.log("plugin host: broken bundles are built once and the last good one is served");
