#!/usr/bin/env node
// The `warmcache` command for npm users: runs the platform package's binary with this process's
// arguments and standard streams, forwards termination signals, and exits as it did.
import { spawn } from "node:child_process";
import process from "node:process";
import { binaryPath } from "../dist/index.js";

let binary;
try {
  binary = binaryPath();
} catch (err) {
  console.error(`warmcache: ${/** @type {Error} */ (err).message}`);
  process.exit(1);
}
const child = spawn(binary, process.argv.slice(2), { stdio: "inherit" });
for (const sig of /** @type {NodeJS.Signals[]} */ (["SIGINT", "SIGTERM", "SIGHUP"])) {
  process.on(sig, () => child.kill(sig));
}
child.on("error", (err) => {
  console.error(`warmcache: cannot run \`${binary}\`: ${err.message}`);
  process.exit(1);
});
child.on("exit", (code, signal) => {
  if (signal) {
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  } else {
    process.exit(code ?? 1);
  }
});
