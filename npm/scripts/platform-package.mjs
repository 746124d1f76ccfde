#!/usr/bin/env node
// Generates one platform package (@warmcache/<target>) from a release build of warmcache:
//
//   node npm/scripts/platform-package.mjs --target linux-x64-gnu --binary target/release/warmcache --out DIR
//
// The binary is copied to DIR/bin/warmcache and stripped (`strip`, or --strip CMD for a cross
// toolchain's strip, or --no-strip for a binary built with `strip = true`); DIR/package.json gets
// the `os`, `cpu` and `libc` fields that make npm install it only on that platform, and the
// version of the root package (npm/warmcache/package.json), which lists it as optional.
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const TARGETS = {
  "linux-x64-gnu": { os: "linux", cpu: "x64", libc: "glibc", rust: "x86_64-unknown-linux-gnu" },
  "linux-x64-musl": { os: "linux", cpu: "x64", libc: "musl", rust: "x86_64-unknown-linux-musl" },
  "linux-arm64-gnu": { os: "linux", cpu: "arm64", libc: "glibc", rust: "aarch64-unknown-linux-gnu" },
  "linux-arm64-musl": { os: "linux", cpu: "arm64", libc: "musl", rust: "aarch64-unknown-linux-musl" },
  "darwin-x64": { os: "darwin", cpu: "x64", rust: "x86_64-apple-darwin" },
  "darwin-arm64": { os: "darwin", cpu: "arm64", rust: "aarch64-apple-darwin" },
};

function die(message) {
  console.error(`platform-package: ${message}`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    target: { type: "string" },
    binary: { type: "string" },
    out: { type: "string" },
    strip: { type: "string", default: "strip" },
    "no-strip": { type: "boolean", default: false },
  },
});
const target = TARGETS[values.target];
if (!target) die(`--target must be one of ${Object.keys(TARGETS).join(", ")}, not \`${values.target ?? ""}\``);
if (!values.binary || !existsSync(values.binary)) {
  die(`--binary must name a built warmcache executable (\`${values.binary ?? ""}\` does not exist); build it with \`cargo build --release --bin warmcache --target ${target.rust}\``);
}
if (!values.out) die("--out DIR is required (the package directory to write)");

const root = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "warmcache", "package.json"), "utf8"));
const name = `@warmcache/${values.target}`;
if (!(name in root.optionalDependencies)) die(`${name} is not in the optionalDependencies of npm/warmcache/package.json; add it there first`);

rmSync(values.out, { recursive: true, force: true });
mkdirSync(join(values.out, "bin"), { recursive: true });
const exe = join(values.out, "bin", "warmcache");
copyFileSync(values.binary, exe);
chmodSync(exe, 0o755);
if (!values["no-strip"]) {
  try {
    execFileSync(values.strip, [exe], { stdio: "inherit" });
  } catch (err) {
    die(`\`${values.strip} ${exe}\` failed (${err.message}); install binutils, pass --strip CMD for this target, or --no-strip for a binary built stripped`);
  }
}
const pkg = {
  name,
  version: root.version,
  description: `The warmcache binary for ${values.target} (installed by the warmcache package)`,
  license: root.license,
  os: [target.os],
  cpu: [target.cpu],
  ...(target.libc ? { libc: [target.libc] } : {}),
  files: ["bin/"],
  preferUnplugged: true,
};
writeFileSync(join(values.out, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
writeFileSync(join(values.out, "README.md"), `# ${name}\n\nThe \`warmcache\` executable for ${values.target}. Install \`warmcache\` instead: it picks this package on this platform.\n`);
console.log(values.out);
