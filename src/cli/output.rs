//! Where command output goes: human text or one JSON object on stdout; warnings, errors and logs
//! on stderr.

use std::io::{IsTerminal, Write};

/// How a command reports.
#[derive(Debug, Clone)]
pub struct Output {
    json: bool,
    quiet: bool,
    verbose: u8,
}

impl Output {
    /// Output for the global flags.
    pub fn new(json: bool, quiet: bool, verbose: u8) -> Self {
        Self { json, quiet, verbose }
    }

    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.json
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
        let text = if self.json { value.to_string() } else { human() };
        if !text.is_empty() {
            let _ = writeln!(stdout, "{text}");
        }
    }

    /// A warning for the user on stderr (always shown: warnings must never be silent).
    pub fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    /// Reports a failed command: the whole error chain on stderr, and `{"error": ...}` on stdout
    /// with `--json`.
    pub fn error(&self, err: &anyhow::Error, extra: Option<serde_json::Value>) {
        eprintln!("error: {err:#}");
        if self.json {
            let mut value = serde_json::json!({ "error": format!("{err:#}") });
            if let (Some(obj), Some(serde_json::Value::Object(extra))) = (value.as_object_mut(), extra) {
                obj.extend(extra);
            }
            println!("{value}");
        }
    }
}
