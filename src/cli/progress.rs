//! Progress bars on stderr for long work, when the output is a terminal.

use indicatif::{ProgressBar, ProgressStyle};

use super::Output;
use warmcache::progress::Progress;

/// A spinner counting bytes and entries, or nothing when progress is disabled. The bar is
/// cleared when the returned guard is dropped.
pub fn spinner(out: &Output, label: &str) -> (Progress, Option<ProgressBar>) {
    if !out.progress_enabled() {
        return (Progress::none(), None);
    }
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let observer = bar.clone();
    let progress = Progress::new(move |bytes, entries| {
        observer.set_message(format!("{} in {entries} entries", indicatif::HumanBytes(bytes)));
    });
    (progress, Some(bar))
}
