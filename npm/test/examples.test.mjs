// Runs each example program of examples/node-deno with the runtime running this test (`node`, or
// `deno run -A` under `deno test`): each exits non-zero when its fixed behaviour does not hold.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { test } from "node:test";

const dir = join(process.cwd(), "examples");
const programs = readdirSync(dir).filter((f) => /^\d-.*\.mjs$/.test(f)).sort();
const deno = globalThis.Deno;

test("there are five example programs", () => assert.equal(programs.length, 5, programs.join(", ")));

for (const program of programs) {
  test(`example ${program}`, { timeout: 300_000 }, async () => {
    const args = deno ? ["run", "-A", "--no-check", join(dir, program)] : [join(dir, program)];
    const child = spawn(process.execPath, args, { cwd: process.cwd(), stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (c) => (output += c));
    child.stderr.on("data", (c) => (output += c));
    const code = await new Promise((resolve) => child.on("close", resolve));
    assert.equal(code, 0, `${program} failed:\n${output}`);
  });
}
