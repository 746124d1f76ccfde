/**
 * A typed client for the `warmcache` command, the same on Node (>= 18) and Deno 2.
 *
 * Every call runs the CLI with `--json` and resolves to its JSON object, typed. A failure
 * (exit 1), a usage error (exit 2), a cancelled call and a CLI that cannot be started reject
 * with a {@link WarmcacheError}. A stale artifact is a result (`status: "stale"`) with its
 * `warning`, never an exception.
 *
 * The types mirror the CLI's JSON schema documents (`docs/json/<command>.schema.json` in the
 * repository): every object names its document (`schema: "warmcache.ensure/1"`), and a result
 * whose major version this client does not know ({@link SCHEMA_VERSIONS}) rejects with an
 * `output` error instead of resolving to an object of another shape.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve as resolvePath } from "node:path";
import process from "node:process";

// ---------------------------------------------------------------------------------------------
// Results: the CLI's `--json` objects.

/**
 * The major version of each `--json` schema this client was written for (`warmcache.<name>/<major>`;
 * `error` is the error object). A new field or status keeps the major version; a breaking change
 * bumps it, and this client then refuses the object rather than mistype it.
 */
export const SCHEMA_VERSIONS = {
  activate: 1,
  ensure: 1,
  error: 1,
  gc: 1,
  import: 1,
  path: 1,
  pull: 1,
  push: 1,
  restore: 1,
  snapshot: 1,
  stats: 1,
  status: 1,
  verify: 1,
} as const;

/** A schema identity: `warmcache.<name>/<major>`. */
export type SchemaId<N extends keyof typeof SCHEMA_VERSIONS> = `warmcache.${N}/${(typeof SCHEMA_VERSIONS)[N]}`;

/** `transient` failures are retried with backoff; `deterministic` ones wait for new inputs. */
export type FailureKind = "transient" | "deterministic";

/** A build failure as `ensure` reports it. */
export interface FailureReport {
  kind: FailureKind;
  /** What happened and the tail of the builder's output. */
  error: string;
  /** Consecutive failures with the current inputs. */
  attempts: number;
  /** When a retry is allowed (unix ms); null for deterministic failures. */
  next_retry_at: number | null;
}

/** A recorded failure as `status` reports it. */
export interface FailureRecord {
  fingerprint: string;
  kind: FailureKind;
  error_tail: string;
  exit: string;
  attempts: number;
  first_failed_at: number;
  last_failed_at: number;
  next_retry_at: number | null;
}

/** Fields the client adds to every result. */
export interface Warned {
  /**
   * The CLI's warnings: its stderr when it printed any (or the `warning` its JSON already has).
   * Always set for stale, degraded, refused and missed results.
   */
  warning?: string;
}

/** What a push did to the fingerprint index: `present` names the artifact already there. */
export type PushIndexOutcome = { state: "created" } | { state: "present"; artifact: string | null } | { state: "skipped"; reason: string };

/** `push` result. */
export interface PushResult extends Warned {
  schema: SchemaId<"push">;
  status: "pushed" | "present";
  url: string;
  name: string;
  artifact: string;
  fingerprint: string | null;
  artifact_created: boolean;
  uploaded_bytes: number;
  index: PushIndexOutcome;
}

/** A remote problem that did not fail the command (`push`, `pull`). */
export interface Degraded extends Warned {
  schema: SchemaId<"push"> | SchemaId<"pull">;
  status: "degraded";
  url: string;
  warning: string;
}

/** What the remote did during `ensure`. */
export interface RemoteActivity {
  url: string;
  pulled: boolean;
  pushed?: Omit<PushResult, "schema" | "status" | "warning">;
  warnings?: string[];
}

/** `ensure` result. */
export interface Ensured extends Warned {
  schema: SchemaId<"ensure">;
  name: string;
  /** The artifact's content path (a file or a directory). */
  path: string;
  artifact: string;
  status: "hit" | "built" | "stale";
  fingerprint: string;
  failure: FailureReport | null;
  stale_reason?: string;
  /**
   * Stale-while-revalidate only: where the build of the current inputs stands while this stale
   * artifact is served. `started`: a detached background `warmcache` builds them now (a later
   * call gets the fresh artifact); `under-way`: another process already builds them.
   */
  revalidation?: "started" | "under-way" | "due";
  /** The background build's process id, when this call started it. */
  revalidation_pid?: number;
  /** Where the background build this call started reports (its stderr). */
  revalidation_log?: string;
  updated_at: number;
  unmatched_globs?: string[];
  /** Inputs that are FIFOs, sockets or devices: only their kind is fingerprinted. */
  special_inputs?: string[];
  remote?: RemoteActivity;
  lease_expires_at?: number;
  /** Problems found on the way that did not stop the call (e.g. a damaged artifact rebuilt). */
  warnings?: string[];
}

export type ArtifactKind = "file" | "dir";

/** `importPath` result. */
export interface Imported extends Warned {
  schema: SchemaId<"import">;
  name: string | null;
  artifact: string;
  path: string;
  kind: ArtifactKind;
  size: number;
  files: number;
  archive: "tar" | "tar-gz" | "tar-zst" | "zip" | null;
  /** False when identical content was already stored. */
  created: boolean;
}

export type LinkMode = "auto" | "reflink" | "hardlink" | "copy" | "symlink";

/** `activate` result. */
export interface Activated extends Warned {
  schema: SchemaId<"activate">;
  artifact: string;
  source: string;
  activation: {
    dest: string;
    link: Exclude<LinkMode, "auto">;
    kind: ArtifactKind;
    replaced: boolean;
    swap: "created" | "exchanged" | "renamed" | "two-renames";
  };
}

/** `path` result. */
export interface PathResult extends Warned {
  schema: SchemaId<"path">;
  name: string;
  path: string;
  artifact: string;
  lease_expires_at: number | null;
}

/** One entry of `status`. */
export interface EntryStatus {
  name: string;
  artifact: string | null;
  fingerprint: string | null;
  source: "import" | "build" | "pull";
  created_at: number;
  updated_at: number;
  accessed_at: number;
  artifact_info: {
    id: string;
    kind: ArtifactKind;
    size: number;
    files: number;
    disk_usage: number;
    created_at: number;
    accessed_at: number;
  } | null;
  present: boolean;
  path: string | null;
  failure: FailureRecord | null;
}

/** `status` result. */
export interface StatusResult extends Warned {
  schema: SchemaId<"status">;
  root: string;
  entries: EntryStatus[];
}

/** What `stats` counts, for the whole root or one entry (docs/json/stats.schema.json). */
export interface StatsCounters {
  hits: number;
  misses: number;
  stale_serves: number;
  builds_ok: number;
  builds_failed_transient: number;
  builds_failed_deterministic: number;
  builds_interrupted: number;
  build_ms: number;
  /** Building avoided: each hit counts its entry's last successful build time. */
  saved_ms: number;
  downloaded_bytes: number;
  uploaded_bytes: number;
  remote_errors: number;
}

/** `stats` result: the counters of the root and of each entry over the window. */
export interface StatsResult extends Warned {
  schema: SchemaId<"stats">;
  root: string;
  /** Start (unix ms) of the first hour counted with `since`; null: all time. */
  since: number | null;
  retention_hours: number;
  total: StatsCounters;
  entries: (StatsCounters & { name: string })[];
  unfolded_lines: number;
}

/** `verify` result. */
export interface VerifyResult extends Warned {
  schema: SchemaId<"verify">;
  checked: number;
  ok: number;
  /** `quarantined_to` is null on a read-only cache, where damage is only reported. */
  damaged: { artifact: string; problems: { path: string; problem: string }[]; quarantined_to: string | null }[];
  dangling: string[];
  unreferenced: number;
  staging_swept: number;
}

/** `gc` result. */
export interface GcResult extends Warned {
  schema: SchemaId<"gc">;
  dry_run: boolean;
  removed: { artifact: string; disk_usage: number; accessed_at: number; reason: "orphaned" | "too-old" | "over-budget" }[];
  freed: number;
  size_before: number;
  size_after: number;
  protected: number;
  budget_met: boolean;
  staging_swept: number;
  quarantine_cleared: number;
  decide_ms: number;
  delete_ms: number;
  max_exclusive_ms: number;
}

/** The remote snapshot pointer. */
export interface SnapshotPointer {
  version: number;
  digest: string;
  files: number;
  bytes: number;
  created_at_ms: number;
  host: string;
  nonce: string;
}

/** `snapshot` result. */
export interface SnapshotResult extends Warned {
  schema: SchemaId<"snapshot">;
  /** `refused`: the warmth guard kept a remote snapshot holding more than DIR. */
  status: "uploaded" | "unchanged" | "refused" | "conflict";
  url: string;
  digest: string;
  files: number;
  bytes: number;
  uploaded_bytes: number;
  /** The pack uploaded, when one was. */
  pack: string | null;
  /** Whether the pack holds the whole tree (a first snapshot, or a compaction). */
  full: boolean;
  compacted: boolean;
  new_chunks: number;
  reused_chunks: number;
  new_segments: number;
  reused_segments: number;
  files_read: number;
  files_trusted: number;
  /** The fallback key this key's first snapshot was seeded from (after a restore from it). */
  seeded_from?: string | null;
  remote: SnapshotPointer | null;
  elapsed_ms: number;
  /** Where the time went, in milliseconds (see the README, "JSON output"). */
  phases: SnapshotPhases;
}

/** `snapshot` phases: walk, hash (only when the remote may already hold the tree), the archive
 * pass (`archive_ms`, wall) with the busy time of its overlapped stages, small requests, wall. */
export interface SnapshotPhases {
  walk_ms: number;
  hash_ms: number;
  archive_ms: number;
  read_ms: number;
  read_wait_ms: number;
  compress_ms: number;
  upload_ms: number;
  remote_ms: number;
  wall_ms: number;
}

/** `restore` result. */
export interface RestoreResult extends Warned {
  schema: SchemaId<"restore">;
  status: "restored" | "unchanged" | "no-snapshot";
  dir: string;
  /** The key asked for (the exact key). */
  url: string;
  /** The key restored from: the exact key or a fallback; `null` when none held a snapshot. */
  matched: string | null;
  /** Whether `matched` is the exact key. */
  exact: boolean;
  digest: string | null;
  files: number;
  bytes: number;
  downloaded_bytes: number;
  /** Content taken from this machine (DIR, the local store) instead of downloaded. */
  seeded_bytes: number;
  fetched_chunks: number;
  elapsed_ms: number;
  /** Where the time went, in milliseconds; download and extraction overlap. */
  phases: RestorePhases;
}

/** `restore`'s time per phase (ms). `extract_ms` = `download_wait_ms` + `decompress_ms` + `write_ms`. */
export interface RestorePhases {
  lookup_ms: number;
  seed_ms: number;
  download_ms: number;
  download_wait_ms: number;
  decompress_ms: number;
  write_ms: number;
  extract_ms: number;
  sync_ms: number;
  swap_ms: number;
  wall_ms: number;
}

/** `snapshot`/`restore` when the remote was unusable: DIR and the remote were left as they were. */
export interface SnapshotDegraded extends Warned {
  schema: SchemaId<"snapshot"> | SchemaId<"restore">;
  status: "degraded";
  dir: string;
  url: string;
  error: string;
  warning: string;
}

/** `snapshot`/`push` on a read-only machine (`readOnly`, `[remote] read_only`, or credentials
 * that may not write): nothing was published. */
export interface ReadOnly extends Warned {
  status: "read_only";
  url: string;
  warning: string;
  /** `snapshot` only. */
  dir?: string;
}

/** `pull` result. */
export interface Pulled extends Warned {
  schema: SchemaId<"pull">;
  status: "pulled";
  url: string;
  name: string;
  fingerprint: string;
  artifact: string;
  path: string;
  downloaded_bytes: number;
  pushed_by: string;
  pushed_at: number;
}

/** `pull` when the remote has nothing for the current inputs. */
export interface PullMiss extends Warned {
  schema: SchemaId<"pull">;
  status: "miss";
  name: string;
  fingerprint: string;
  url: string;
  warning: string;
}

// ---------------------------------------------------------------------------------------------
// Errors.

/**
 * Why a call failed: `failure` (exit 1), `usage` (exit 2), `aborted` (the signal fired),
 * `timeout` (the call's `timeout` elapsed), `spawn` (the CLI could not be started), `output` (the
 * CLI printed no JSON object or exited in an unexpected way).
 */
export type ErrorKind = "failure" | "usage" | "aborted" | "timeout" | "spawn" | "output";

/** A failed call: the exit code, the kind, the CLI's message and, for builds, the failure record. */
export class WarmcacheError extends Error {
  /** The CLI's exit code (null if it was killed or never started). */
  readonly exitCode: number | null;
  readonly kind: ErrorKind;
  /** `failed` when a build failed and no artifact could be served. */
  readonly status?: "failed";
  /** The build failure, when a build failed. */
  readonly failure?: FailureReport;
  /** Everything the CLI printed on stderr. */
  readonly stderr: string;
  /** The arguments the CLI was called with. */
  readonly args: readonly string[];

  constructor(
    message: string,
    fields: { exitCode: number | null; kind: ErrorKind; stderr: string; args: string[]; status?: "failed"; failure?: FailureReport; cause?: unknown },
  ) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = "WarmcacheError";
    this.exitCode = fields.exitCode;
    this.kind = fields.kind;
    this.stderr = fields.stderr;
    this.args = fields.args;
    if (fields.status) this.status = fields.status;
    if (fields.failure) this.failure = fields.failure;
  }
}

// ---------------------------------------------------------------------------------------------
// Options.

/** A duration: a number of milliseconds, or the CLI's text (`500ms`, `30s`, `15m`, `2h`, `1d`). */
export type Duration = number | string;

/** Options every call takes. */
export interface CallOptions {
  /** The cache root (`--root`; default `$WARMCACHE_ROOT`, else the platform cache directory). */
  root?: string;
  /** Working directory of the CLI: where `warmcache.toml` is searched from. */
  cwd?: string;
  /** The CLI's environment (default: this process's). */
  env?: Record<string, string | undefined>;
  /** Cancels the call: warmcache gets SIGTERM, then SIGKILL after `killGraceMs`. */
  signal?: AbortSignal;
  /** Cancels the call after this many milliseconds, as `signal` does. */
  timeout?: number;
  /** Time between SIGTERM and SIGKILL when cancelling (default 5000 ms). */
  killGraceMs?: number;
  /** How long to wait for a lock held by another process (`--lock-timeout`). */
  lockTimeout?: Duration;
  /** The warmcache executable (default: `$WARMCACHE_BINARY`, else the platform package's). */
  binary?: string;
}

/** The recipe fields (override `[entry.NAME]` of the nearest `warmcache.toml`). */
export interface RecipeOptions {
  /** Input globs, relative to the recipe's directory (`--input`). */
  inputs?: string[];
  /** The build command, run by `sh -c`; it writes `$WARMCACHE_OUT` (`--build`). */
  build?: string;
  output?: "file" | "dir";
  /** Validation of `$WARMCACHE_OUT`; failing it is deterministic (`--validate`). */
  validate?: string;
  /** Extra fingerprint strings (`--key`). */
  keys?: string[];
  /** Environment variables whose values join the fingerprint (`--env`). */
  fingerprintEnv?: string[];
  /** Time limit for the build and the validation (`--timeout`). */
  buildTimeout?: Duration;
  /**
   * Serve the last good artifact when building fails (`if-error`, the default), never, or also at
   * once while changed inputs build in the background (`while-revalidate`).
   */
  stale?: "if-error" | "never" | "while-revalidate";
}

/** Remote flags. */
export interface RemoteOptions {
  /** e.g. `s3://bucket/prefix` (`--remote`; default `$WARMCACHE_REMOTE`, else `[remote] url`). */
  remote?: string;
  /** Make remote problems failures instead of warnings (`--strict`). */
  strict?: boolean;
  /** Never write to the remote (`--read-only`; also `WARMCACHE_REMOTE_READ_ONLY=1`). */
  readOnly?: boolean;
}

export interface EnsureOptions extends CallOptions, RecipeOptions, RemoteOptions {
  /** Build now, whatever the failure memory says. */
  refresh?: boolean;
  /** Take the last good artifact (stale) instead of waiting for another process's build. */
  noWait?: boolean;
  /** Hold the artifact against garbage collection this long. */
  lease?: Duration;
  /** Push what is built locally to the remote. */
  push?: boolean;
  /**
   * When the inputs changed and a last good artifact exists, resolve at once with it
   * (`status: "stale"`, `revalidation: "started"` or `"under-way"`) and build the current inputs in
   * a detached background process, so a cold start never waits for a build
   * (`--stale-while-revalidate`, the same as `stale: "while-revalidate"`). Without a last good
   * artifact the build runs in the foreground as usual.
   */
  staleWhileRevalidate?: boolean;
}

export interface ImportOptions extends CallOptions {
  /** The entry name to record it under. */
  name?: string;
  /** Permission rules `GLOB=MODE`, e.g. `bin/*=755` (`--mode`). */
  modes?: string[];
  /** Commands run on the staging tree before publication (`--hook`). */
  hooks?: string[];
  /** Import an archive as a plain file. */
  raw?: boolean;
  maxExpanded?: string | number;
  maxEntries?: number;
  maxRatio?: number;
}

export interface ActivateOptions extends CallOptions {
  /** Commands run on the staging copy before it replaces DEST, e.g. code signing (`--hook`). */
  hooks?: string[];
  link?: LinkMode;
}

export interface PathOptions extends CallOptions {
  lease?: Duration;
}

export interface GcOptions extends CallOptions {
  /** e.g. `10GiB` or a number of bytes. */
  maxSize?: string | number;
  maxAge?: Duration;
  dryRun?: boolean;
  /** Entries to forget first, so their artifacts can be collected. */
  evict?: string[];
}

export interface SnapshotOptions extends CallOptions, RemoteOptions {
  /** Replace the remote snapshot even if it holds more than DIR. */
  force?: boolean;
}

export interface RestoreOptions extends CallOptions, RemoteOptions {
  /** Give up after this long, leaving DIR untouched (`--timeout`). */
  restoreTimeout?: Duration;
  /** Keys to restore from, in order, when the ones before hold no snapshot (`--fallback`). */
  fallback?: string[];
}

export interface PullOptions extends CallOptions, RecipeOptions, RemoteOptions {}

// ---------------------------------------------------------------------------------------------
// Commands.

/** Returns the path of an artifact built from the current inputs, building it on a miss. */
export function ensure(name: string, options: EnsureOptions = {}): Promise<Ensured> {
  const args = ["ensure", name, ...recipeArgs(options), ...remoteArgs(options)];
  flag(args, "--refresh", options.refresh);
  flag(args, "--no-wait", options.noWait);
  value(args, "--lease", duration(options.lease));
  flag(args, "--push", options.push);
  flag(args, "--stale-while-revalidate", options.staleWhileRevalidate);
  return run<Ensured>(args, options);
}

/** Publishes a file, directory or archive (zip, tar, tar.gz, tar.zst) as an immutable artifact. */
export function importPath(source: string, options: ImportOptions = {}): Promise<Imported> {
  const args = ["import", source];
  value(args, "--name", options.name);
  for (const mode of options.modes ?? []) args.push("--mode", mode);
  for (const hook of options.hooks ?? []) args.push("--hook", hook);
  flag(args, "--raw", options.raw);
  value(args, "--max-expanded", options.maxExpanded?.toString());
  value(args, "--max-entries", options.maxEntries?.toString());
  value(args, "--max-ratio", options.maxRatio?.toString());
  return run<Imported>(args, options);
}

/** Atomically places an artifact (entry name or artifact id) at `dest`. */
export function activate(source: string, dest: string, options: ActivateOptions = {}): Promise<Activated> {
  const args = ["activate", source, dest];
  for (const hook of options.hooks ?? []) args.push("--hook", hook);
  value(args, "--link", options.link);
  return run<Activated>(args, options);
}

/** The last good artifact's path, without building. */
export function path(name: string, options: PathOptions = {}): Promise<PathResult> {
  const args = ["path", name];
  value(args, "--lease", duration(options.lease));
  return run<PathResult>(args, options);
}

/** Entries with their state, artifact and failures (one entry when `name` is given). */
export function status(name?: string, options: CallOptions = {}): Promise<StatusResult> {
  return run<StatusResult>(name === undefined ? ["status"] : ["status", name], options);
}

/** Hit, miss, build and transfer counts of the root and its entries (one entry when `name` is
 * given), over the last `since` (`"24h"`, `"7d"`) or all time. */
export function stats(name?: string, options: CallOptions & { since?: string } = {}): Promise<StatsResult> {
  const args = name === undefined ? ["stats"] : ["stats", name];
  if (options.since !== undefined) args.push("--since", options.since);
  return run<StatsResult>(args, options);
}

/** Re-hashes every artifact; damaged ones are quarantined. */
export function verify(options: CallOptions = {}): Promise<VerifyResult> {
  return run<VerifyResult>(["verify"], options);
}

/** Frees space, least recently used first. */
export function gc(options: GcOptions = {}): Promise<GcResult> {
  const args = ["gc"];
  value(args, "--max-size", options.maxSize?.toString());
  value(args, "--max-age", duration(options.maxAge));
  flag(args, "--dry-run", options.dryRun);
  for (const name of options.evict ?? []) args.push("--evict", name);
  return run<GcResult>(args, options);
}

/** Uploads `dir` as the current snapshot (advisory: `status: "degraded"` when the remote is down). */
export function snapshot(
  dir: string,
  options: SnapshotOptions = {},
): Promise<SnapshotResult | SnapshotDegraded | ReadOnly> {
  const args = ["snapshot", dir, ...remoteArgs(options)];
  flag(args, "--force", options.force);
  return run<SnapshotResult | SnapshotDegraded | ReadOnly>(args, options);
}

/** Replaces `dir` atomically with the remote snapshot (advisory: `dir` untouched when it cannot). */
export function restore(dir: string, options: RestoreOptions = {}): Promise<RestoreResult | SnapshotDegraded> {
  const args = ["restore", dir, ...remoteArgs(options)];
  value(args, "--timeout", duration(options.restoreTimeout));
  for (const url of options.fallback ?? []) args.push("--fallback", url);
  return run<RestoreResult | SnapshotDegraded>(args, options);
}

/** Uploads an entry's last good artifact to the remote. */
export function push(name: string, options: RemoteOptions & CallOptions = {}): Promise<PushResult | Degraded | ReadOnly> {
  return run<PushResult | Degraded | ReadOnly>(["push", name, ...remoteArgs(options)], options);
}

/** Downloads the artifact built elsewhere from the recipe's current inputs; never builds. */
export function pull(name: string, options: PullOptions = {}): Promise<Pulled | PullMiss | Degraded> {
  return run<Pulled | PullMiss | Degraded>(["pull", name, ...recipeArgs(options), ...remoteArgs(options)], options);
}

// ---------------------------------------------------------------------------------------------
// The binary.

const PLATFORM_PACKAGES: Record<string, string[]> = {
  "linux-x64": ["@warmcache/linux-x64-gnu", "@warmcache/linux-x64-musl"],
  "linux-arm64": ["@warmcache/linux-arm64-gnu", "@warmcache/linux-arm64-musl"],
  "darwin-x64": ["@warmcache/darwin-x64"],
  "darwin-arm64": ["@warmcache/darwin-arm64"],
};

/**
 * The warmcache executable: `$WARMCACHE_BINARY` if set, else the one in the platform package
 * npm installed next to this one. Throws a `spawn` {@link WarmcacheError} naming the fix.
 */
export function binaryPath(): string {
  const override = process.env.WARMCACHE_BINARY;
  if (override) {
    if (!existsSync(override)) {
      throw new WarmcacheError(`WARMCACHE_BINARY is \`${override}\`, which does not exist; point it at a warmcache executable or unset it`, {
        exitCode: null, kind: "spawn", stderr: "", args: [],
      });
    }
    return resolvePath(override); // a relative path means relative to this process's directory, not the call's cwd
  }
  const key = `${process.platform}-${process.arch}`;
  const candidates = PLATFORM_PACKAGES[key] ?? [];
  const require = createRequire(import.meta.url);
  for (const pkg of candidates) {
    try {
      return require.resolve(`${pkg}/bin/warmcache`);
    } catch {
      // not installed: try the next one
    }
  }
  const hint = candidates.length === 0
    ? `warmcache has no prebuilt binary for ${key}; build it with \`cargo install warmcache\` and set WARMCACHE_BINARY`
    : `none of ${candidates.join(", ")} is installed (npm skips optional dependencies with --no-optional or --omit=optional); reinstall warmcache with optional dependencies, or set WARMCACHE_BINARY`;
  throw new WarmcacheError(`cannot find the warmcache executable for ${key}: ${hint}`, {
    exitCode: null, kind: "spawn", stderr: "", args: [],
  });
}

// ---------------------------------------------------------------------------------------------
// Running the CLI.

/**
 * Runs `warmcache --json ARGS` and resolves to its JSON object (with `warning` set to its stderr
 * when it printed one). Rejects with a {@link WarmcacheError}. Exported for commands and flags
 * this client does not wrap.
 */
export function run<T extends object>(args: string[], options: CallOptions = {}): Promise<T> {
  const full = ["--json"];
  value(full, "--root", options.root);
  value(full, "--lock-timeout", duration(options.lockTimeout));
  full.push(...args);
  return new Promise<T>((resolve, reject) => {
    const fail = (message: string, kind: ErrorKind, exitCode: number | null, stderr: string, extra: Partial<{ status: "failed"; failure: FailureReport; cause: unknown }> = {}) =>
      reject(new WarmcacheError(message, { exitCode, kind, stderr, args: full, ...extra }));
    if (options.signal?.aborted) {
      fail(`warmcache ${args[0]} was aborted before it started`, "aborted", null, "", { cause: options.signal.reason });
      return;
    }
    let binary: string;
    try {
      binary = options.binary ?? binaryPath();
    } catch (err) {
      reject(err);
      return;
    }
    const child = spawn(binary, full, {
      cwd: options.cwd,
      env: options.env as NodeJS.ProcessEnv | undefined,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));

    let cancelled: { kind: "aborted" | "timeout"; reason: unknown } | undefined;
    let killTimer: ReturnType<typeof setTimeout> | undefined;
    const cancel = (kind: "aborted" | "timeout", reason: unknown) => {
      if (cancelled || child.exitCode !== null || child.signalCode !== null) return;
      cancelled = { kind, reason };
      child.kill("SIGTERM");
      killTimer = setTimeout(() => child.kill("SIGKILL"), options.killGraceMs ?? 5000);
    };
    const onAbort = () => cancel("aborted", options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const timeoutTimer = options.timeout === undefined
      ? undefined
      : setTimeout(() => cancel("timeout", new Error(`timed out after ${options.timeout} ms`)), options.timeout);

    let spawnError: Error | undefined;
    child.on("error", (err) => {
      spawnError = err;
    });
    child.on("close", (code, signal) => {
      clearTimeout(timeoutTimer);
      clearTimeout(killTimer);
      options.signal?.removeEventListener("abort", onAbort);
      const err = Buffer.concat(stderr).toString("utf8");
      const out = Buffer.concat(stdout).toString("utf8").trim();
      if (spawnError && code === null && signal === null) {
        fail(`cannot run warmcache (\`${binary}\`): ${spawnError.message}`, "spawn", null, err, { cause: spawnError });
        return;
      }
      if (cancelled) {
        const why = cancelled.kind === "timeout" ? `timed out after ${options.timeout} ms` : "was aborted";
        fail(`warmcache ${args[0]} ${why}`, cancelled.kind, code, err, { cause: cancelled.reason });
        return;
      }
      let parsed: Record<string, unknown> | undefined;
      try {
        const value: unknown = out === "" ? undefined : JSON.parse(out);
        if (value !== null && typeof value === "object" && !Array.isArray(value)) parsed = value as Record<string, unknown>;
      } catch {
        parsed = undefined;
      }
      const unknown = parsed && unknownSchema(parsed, code === 0 ? args[0] : "error");
      if (parsed && unknown) {
        fail(`warmcache ${args[0]} printed ${unknown}; update the warmcache package, or point WARMCACHE_BINARY at the binary it ships`, "output", code, err);
      } else if (code === 0 && parsed) {
        // A `warning` the CLI put in its JSON wins; else its stderr, when it printed any.
        const warning = typeof parsed.warning === "string" ? parsed.warning : err.trim();
        resolve((warning === "" ? parsed : { ...parsed, warning }) as T);
      } else if (code === 1 && parsed && typeof parsed.error === "string") {
        const extra: { status?: "failed"; failure?: FailureReport } = {};
        if (parsed.status === "failed") extra.status = "failed";
        if (parsed.failure) extra.failure = parsed.failure as FailureReport;
        fail(parsed.error, "failure", 1, err, extra);
      } else if (code === 2) {
        fail(err.trim() || `warmcache rejected the arguments ${JSON.stringify(args)}`, "usage", 2, err);
      } else {
        const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
        fail(`warmcache ${args[0]} ${how} without a JSON result: ${err.trim() || out || "(no output)"}`, "output", code, err);
      }
    });
  });
}

/**
 * Why this client cannot read `value` (printed by `command`, or `error` for an error object), or
 * undefined when it can: its schema identity must be `warmcache.<name>/<major>` with the major
 * version in {@link SCHEMA_VERSIONS}. A command this client does not know (called through
 * {@link run}) is taken as it is.
 */
function unknownSchema(value: Record<string, unknown>, command: string | undefined): string | undefined {
  const id = value.schema;
  const known = SCHEMA_VERSIONS as Record<string, number>;
  if (typeof id !== "string") {
    return command !== undefined && command in known
      ? "an object without a schema identity (a warmcache binary older than this client)"
      : undefined;
  }
  const match = /^warmcache\.([a-z-]+)\/(\d+)$/.exec(id);
  if (!match) return `an object of an unknown schema \`${id}\``;
  const [, name, major] = match;
  if (!(name in known)) return undefined;
  if (Number(major) !== known[name]) {
    return `schema \`${id}\`, but this client reads \`warmcache.${name}/${known[name]}\``;
  }
  return undefined;
}

function flag(args: string[], name: string, on: boolean | undefined): void {
  if (on) args.push(name);
}

function value(args: string[], name: string, v: string | undefined): void {
  if (v !== undefined) args.push(name, v);
}

function duration(d: Duration | undefined): string | undefined {
  if (d === undefined) return undefined;
  if (typeof d === "number") {
    if (!Number.isFinite(d) || d < 0) throw new RangeError(`a duration in milliseconds must be a finite number >= 0, not ${d}`);
    return `${Math.round(d)}ms`;
  }
  return d;
}

function recipeArgs(o: RecipeOptions): string[] {
  const args: string[] = [];
  for (const glob of o.inputs ?? []) args.push("--input", glob);
  value(args, "--build", o.build);
  value(args, "--output", o.output);
  value(args, "--validate", o.validate);
  for (const key of o.keys ?? []) args.push("--key", key);
  for (const name of o.fingerprintEnv ?? []) args.push("--env", name);
  value(args, "--timeout", duration(o.buildTimeout));
  value(args, "--stale", o.stale);
  return args;
}

function remoteArgs(o: RemoteOptions): string[] {
  const args: string[] = [];
  value(args, "--remote", o.remote);
  flag(args, "--strict", o.strict);
  flag(args, "--read-only", o.readOnly);
  return args;
}
