// @ts-check
// Per-call overhead of the npm client over the bare CLI, for an `ensure` hit.
//
//   WARMCACHE_BINARY=target/release/warmcache node bench/bench_client.mjs
//   WARMCACHE_BINARY=target/release/warmcache npm/node_modules/.bin/deno run -A bench/bench_client.mjs
//
// (after `npm --prefix npm ci` and `npm/node_modules/.bin/tsc -p npm/warmcache`, which compiles the
// client to npm/warmcache/dist). Each round times CALLS hits through the bare CLI (a synchronous
// spawn of the binary with the same arguments, the least a program can do to run it) and CALLS
// through the client's `ensure`, interleaved; it prints the median per call of each and their
// ratio, then the medians over ROUNDS rounds and the median of the rounds' ratios. ROUNDS and
// CALLS come from the environment (defaults 5 and 40).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { ensure, binaryPath } from "../npm/warmcache/dist/index.js";

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const CALLS = Number(process.env.CALLS ?? 40);
const binary = binaryPath();
const work = mkdtempSync(join(tmpdir(), "warmcache-bench-client-"));
const root = join(work, "cache");
for (let i = 0; i < 100; i++) writeFileSync(join(work, `in${i}.txt`), `input ${i}\n`);
const recipe = { inputs: ["in*.txt"], build: 'cat in*.txt > "$WARMCACHE_OUT"' };
const args = ["--json", "--root", root, "ensure", "bench", "--input", recipe.inputs[0], "--build", recipe.build];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function bare() {
  const t = performance.now();
  const r = spawnSync(binary, args, { cwd: work, encoding: "utf8" });
  const ms = performance.now() - t;
  if (r.status !== 0 || JSON.parse(r.stdout).status !== "hit") throw new Error(`bare CLI call failed: ${r.stderr}`);
  return ms;
}

async function client() {
  const t = performance.now();
  const r = await ensure("bench", { root, cwd: work, ...recipe });
  const ms = performance.now() - t;
  if (r.status !== "hit") throw new Error(`client call was not a hit: ${r.status}`);
  return ms;
}

try {
  const first = await ensure("bench", { root, cwd: work, ...recipe });
  if (first.status !== "built") throw new Error(`setup: expected a build, got ${first.status}`);
  for (let i = 0; i < 5; i++) { bare(); await client(); } // warm up the page cache and the runtime
  const runtime = /** @type {any} */ (globalThis).Deno ? `deno ${/** @type {any} */ (globalThis).Deno.version.deno}` : `node ${process.version}`;
  console.log(`${runtime}: ${ROUNDS} rounds of ${CALLS} ensure hits each (100 inputs)`);
  const bares = [];
  const clients = [];
  const ratios = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const b = [];
    const c = [];
    for (let i = 0; i < CALLS; i++) {
      b.push(bare());
      c.push(await client());
    }
    bares.push(median(b));
    clients.push(median(c));
    ratios.push(median(c) / median(b));
    console.log(`round ${round}: bare CLI ${median(b).toFixed(2)} ms, client ${median(c).toFixed(2)} ms, ratio ${(median(c) / median(b)).toFixed(3)}`);
  }
  const mb = median(bares);
  const mc = median(clients);
  console.log(`median over rounds: bare CLI ${mb.toFixed(2)} ms, client ${mc.toFixed(2)} ms per call; median ratio ${median(ratios).toFixed(3)}x (goal < 1.2x)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
