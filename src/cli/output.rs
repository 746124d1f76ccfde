//! Where command output goes: human text or one JSON object on stdout; warnings, errors and logs
//! on stderr.
//!
//! Every JSON object carries its schema identity, `"schema": "warmcache.<name>/<major>"`, stamped
//! here and nowhere else: `<name>` is the command's (or `error` for a failure or a usage error),
//! and `docs/json/<name>.schema.json` describes the object (docs/DESIGN.md, "JSON output").

use std::io::{IsTerminal, Write};

/// The `--json` schema of each command, and of the error object: its name (the command's, and
/// the file `docs/json/<name>.schema.json`) and its major version. A new command needs a line
/// here and its schema document (a unit test below and the integration tests check both); a
/// change that breaks readers of a schema bumps its version here and in the document
/// (docs/DESIGN.md, "JSON output").
pub(super) const SCHEMAS: &[(&str, u32)] = &[
    ("activate", 1),
    ("ensure", 1),
    ("error", 1),
    ("gc", 1),
    ("import", 1),
    ("path", 1),
    ("pull", 1),
    ("push", 1),
    ("restore", 1),
    ("snapshot", 1),
    ("stats", 1),
    ("status", 1),
    ("verify", 1),
];

/// The schema of the error object printed on failures and usage errors, whatever the command.
const ERROR_SCHEMA: &str = "error";

/// The identity a JSON object of schema `name` carries: `warmcache.<name>/<major>`. A name
/// missing from [`SCHEMAS`] (which the unit test below rules out) gets major version 0, which no
/// document has, so the integration tests name the omission rather than pass.
pub(super) fn schema_id(name: &str) -> String {
    let major = SCHEMAS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, major)| *major);
    format!("warmcache.{name}/{major}")
}

/// `value` with its schema identity added (a JSON object always; anything else is left as it is).
fn stamped(mut value: serde_json::Value, name: &str) -> serde_json::Value {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("schema".into(), serde_json::Value::String(schema_id(name)));
    }
    value
}

/// The JSON object of a usage error (`kind: "usage"`, exit 2), printed before any command runs.
pub(super) fn usage_error_json(message: &str) -> serde_json::Value {
    stamped(
        serde_json::json!({ "error": message, "kind": "usage" }),
        ERROR_SCHEMA,
    )
}

/// How a command reports.
#[derive(Debug, Clone)]
pub struct Output {
    json: bool,
    quiet: bool,
    verbose: u8,
    /// The command's schema name (its name on the command line), for the `schema` identity.
    command: String,
}

impl Output {
    /// Output for the global flags of `command` (its name on the command line).
    pub fn new(json: bool, quiet: bool, verbose: u8, command: &str) -> Self {
        Self {
            json,
            quiet,
            verbose,
            command: command.to_owned(),
        }
    }

    /// Sends `tracing` logs to stderr at the level the flags ask for (`RUST_LOG` overrides).
    pub fn init_logging(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            _ => "trace",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warmcache={level}")));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours only for a terminal: a background build's stderr is a log file.
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .without_time()
            .try_init();
    }

    /// Whether to draw progress bars: a terminal on stderr, and neither `-q` nor `--json`.
    pub fn progress_enabled(&self) -> bool {
        !self.quiet && !self.json && std::io::stderr().is_terminal()
    }

    /// Prints the command's result: `value` as JSON, or `human` as text.
    pub fn result(&self, value: &serde_json::Value, human: impl FnOnce() -> String) {
        let mut stdout = std::io::stdout().lock();
        let text = if self.json {
            stamped(value.clone(), &self.command).to_string()
        } else {
            human()
        };
        if !text.is_empty() {
            let _ = writeln!(stdout, "{text}");
        }
    }

    /// A warning for the user on stderr (always shown: warnings must never be silent).
    pub fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    /// Reports a failed command: the whole error chain on stderr, and `{"error": ...,
    /// "kind": "failure"}` on stdout with `--json`.
    pub fn error(&self, err: &anyhow::Error, extra: Option<serde_json::Value>) {
        let message = chain_message(err);
        eprintln!("error: {message}");
        if self.json {
            let mut value = serde_json::json!({ "error": message, "kind": "failure" });
            if let (Some(obj), Some(serde_json::Value::Object(extra))) = (value.as_object_mut(), extra) {
                obj.extend(extra);
            }
            println!("{}", stamped(value, ERROR_SCHEMA));
        }
    }
}

/// The error and its causes joined with ": ", skipping a cause whose text the message before it
/// already contains (the library's messages embed their underlying error).
fn chain_message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if previous.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        previous = message;
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_has_a_schema_and_its_document_says_the_same_version() {
        let mut names: Vec<String> = crate::cli::Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .map(|c| c.get_name().to_owned())
            .collect();
        names.push(super::ERROR_SCHEMA.to_owned());
        for name in &names {
            assert!(
                super::SCHEMAS.iter().any(|(n, _)| n == name),
                "`{name}` has no line in SCHEMAS (src/cli/output.rs)"
            );
        }
        for (name, _) in super::SCHEMAS {
            assert!(
                names.iter().any(|n| n == name),
                "SCHEMAS names `{name}`, which is no command"
            );
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs/json")
                .join(format!("{name}.schema.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("`{name}` has no schema document {}: {e}", path.display()));
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            let id = super::schema_id(name);
            assert_eq!(doc["title"], id, "{}", path.display());
            assert_eq!(doc["properties"]["schema"]["const"], id, "{}", path.display());
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(io)
            .context("failed to write `x`: disk on fire")
            .context("could not import");
        assert_eq!(
            super::chain_message(&err),
            "could not import: failed to write `x`: disk on fire"
        );
    }
}
