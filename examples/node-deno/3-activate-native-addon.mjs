// @ts-check
// Problem 3: a CLI activates a new version of its native addon into its install directory, with a
// signing hook, while other processes keep loading the addon. No reader ever sees a torn or
// unsigned file: each read is one whole, signed version.
//
//   node 3-activate-native-addon.mjs        deno run -A 3-activate-native-addon.mjs
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { activate, importPath } from "warmcache";

const SIZE = 2 * 1024 * 1024;

/** Whether `bytes` is one complete, signed addon: header with its length, body, signature. */
function whole(bytes) {
  const text = bytes.toString("latin1");
  const match = /^ADDON v(\d+) len=(\d+)\n/.exec(text);
  return match !== null && text.length === Number(match[2]) && text.endsWith("\nSIGNED\n") ? Number(match[1]) : null;
}

if (process.argv[2] === "--reader") {
  // A process that keeps loading the addon until told to stop, then reports what it saw.
  const [dest, stop] = process.argv.slice(3);
  let reads = 0;
  let torn = 0;
  const seen = new Set();
  do {
    const version = whole(readFileSync(dest));
    reads++;
    if (version === null) torn++;
    else seen.add(version);
  } while (!existsSync(stop));
  console.log(JSON.stringify({ reads, torn, versions: [...seen] }));
  process.exit(0);
}

const work = mkdtempSync(join(tmpdir(), "warmcache-addon-"));
const root = join(work, "cache");
const install = join(work, "install");
const dest = join(install, "addon.node");
const stop = join(work, "stop");
mkdirSync(install);
// The signing hook runs on the staging copy next to DEST, before it replaces DEST.
const sign = `printf 'SIGNED\\n' >> "$WARMCACHE_STAGING"`;

/** Builds version `v` of the "addon" (the signature is appended by the hook). */
function build(v) {
  const body = `ADDON v${v} len=`;
  const total = SIZE;
  const header = `${body}${total}\n`;
  const file = join(work, `addon-v${v}.node`);
  writeFileSync(file, header + String(v % 10).repeat(total - header.length - "\nSIGNED\n".length) + "\n");
  return file;
}

let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failed = true;
};

try {
  await importPath(build(1), { root, name: "addon" });
  await activate("addon", dest, { root, hooks: [sign] });
  check(whole(readFileSync(dest)) === 1, "v1 is activated and signed");

  const deno = /** @type {any} */ (globalThis).Deno;
  const self = fileURLToPath(import.meta.url);
  const runtime = deno ? ["run", "-A", self] : [self];
  const readers = [1, 2, 3].map(() => {
    const child = spawn(process.execPath, [...runtime, "--reader", dest, stop], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    return new Promise((resolve) => child.on("close", (code) => resolve({ code, out })));
  });
  for (let v = 2; v <= 8; v++) {
    await importPath(build(v), { root, name: "addon" });
    const result = await activate("addon", dest, { root, hooks: [sign] });
    check(result.activation.replaced && whole(readFileSync(dest)) === v, `v${v} replaced v${v - 1} atomically (${result.activation.swap})`);
  }
  writeFileSync(stop, "");
  for (const [i, reader] of (await Promise.all(readers)).entries()) {
    const report = reader.code === 0 ? JSON.parse(reader.out) : null;
    check(report !== null && report.reads > 0 && report.torn === 0, `reader ${i + 1}: ${report ? `${report.reads} loads, ${report.torn} torn, versions ${report.versions.join(",")}` : `exited ${reader.code}`}`);
  }
} finally {
  writeFileSync(stop, "");
  rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.error("native addon: the fixed behaviour does NOT hold");
  process.exit(1);
}
console.log("native addon: every load saw one whole, signed version");
