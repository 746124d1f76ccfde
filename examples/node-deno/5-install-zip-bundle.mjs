// @ts-check
// Problem 5: an app platform installs a zip bundle while other processes walk it and need its
// executables. Several processes install the same bundle at once, each walking the tree as soon as
// its install returns: every walk sees every file with its final mode (the `bin/*=755` rule is
// applied in staging, not by a chmod racing the readers), and the zip is extracted once.
//
//   node 5-install-zip-bundle.mjs        deno run -A 5-install-zip-bundle.mjs
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { importPath } from "warmcache";

/** Every file under `dir`, relative paths. */
function walk(dir, prefix = "") {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]);
}

if (process.argv[2] === "--installer") {
  // One process of the platform: install the bundle, then at once walk it and check every file.
  const [zip, root, counter, expected] = process.argv.slice(3);
  const app = await importPath(zip, { root, name: "apps/shop", modes: ["bin/*=755"], hooks: [`echo extracted >> '${counter}'`] });
  const files = walk(app.path);
  const notExecutable = files.filter((f) => f.startsWith("bin/") && (statSync(join(app.path, f)).mode & 0o111) === 0);
  const unreadable = files.filter((f) => readFileSync(join(app.path, f)).length === 0);
  console.log(JSON.stringify({ artifact: app.artifact, files: files.length, expected: Number(expected), notExecutable, unreadable }));
  process.exit(0);
}

/** A zip archive (stored entries) of `files`: name → content. */
function zipOf(files) {
  const table = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = table[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const [name, content] of Object.entries(files)) {
    const data = Buffer.from(content);
    const fname = Buffer.from(name);
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(20, 4); local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18); local.writeUInt32LE(data.length, 22); local.writeUInt16LE(fname.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0); central.writeUInt16LE(20, 4); central.writeUInt16LE(20, 6);
    central.writeUInt32LE(crc, 16); central.writeUInt32LE(data.length, 20); central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(fname.length, 28); central.writeUInt32LE(offset, 42);
    locals.push(local, fname, data);
    centrals.push(central, fname);
    offset += 30 + fname.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(centrals.length / 2, 8); end.writeUInt16LE(centrals.length / 2, 10);
  end.writeUInt32LE(cd.length, 12); end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

const work = mkdtempSync(join(tmpdir(), "warmcache-zip-"));
const zip = join(work, "shop.zip");
const counter = join(work, "extractions");
const files = {};
for (let i = 0; i < 300; i++) files[`lib/part${i % 10}/mod${i}.js`] = `export const x${i} = ${i};\n`.repeat(20);
for (let i = 0; i < 20; i++) files[`bin/tool${i}`] = `#!/bin/sh\necho tool ${i}\n`;
writeFileSync(zip, zipOf(files));

let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failed = true;
};

try {
  const deno = /** @type {any} */ (globalThis).Deno;
  const self = fileURLToPath(import.meta.url);
  const runtime = deno ? ["run", "-A", self] : [self];
  const root = join(work, "cache");
  const installers = await Promise.all([1, 2, 3, 4].map(() => new Promise((resolve) => {
    const child = spawn(process.execPath, [...runtime, "--installer", zip, root, counter, String(Object.keys(files).length)], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.on("close", (code) => resolve(code === 0 ? JSON.parse(out) : { error: `exited ${code}` }));
  })));
  for (const [i, r] of installers.entries()) {
    check(r.files === r.expected && r.notExecutable?.length === 0 && r.unreadable?.length === 0,
      `installer ${i + 1}: its walk saw ${r.files ?? r.error} of ${r.expected ?? "?"} files, ${r.notExecutable?.length ?? "?"} bin/ files without the exec bit`);
  }
  check(new Set(installers.map((r) => r.artifact)).size === 1, "all installers got the same artifact");
  const extractions = existsSync(counter) ? readFileSync(counter, "utf8").split("\n").filter(Boolean).length : 0;
  check(extractions === 1, `the zip was extracted once (${extractions})`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failed) {
  console.error("zip bundle: the fixed behaviour does NOT hold");
  process.exit(1);
}
console.log("zip bundle: every process saw the whole installed tree with its final modes; extracted once");
