//! The `warmcache` command: parses arguments and hands them to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    warmcache::cli::run(warmcache::cli::Cli::parse())
}
