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
        let message = chain_message(err);
        eprintln!("error: {message}");
        if self.json {
            let mut value = serde_json::json!({ "error": message });
            if let (Some(obj), Some(serde_json::Value::Object(extra))) = (value.as_object_mut(), extra) {
                obj.extend(extra);
            }
            println!("{value}");
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
