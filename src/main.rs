//! The `warmcache` command: parses arguments and hands them to the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
