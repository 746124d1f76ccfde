//! The integration tests, as one test binary: the crate and its dependencies are linked once,
//! not once per file. Each module proves one behaviour of the real `warmcache` binary or of the
//! library's public API; `support` holds what they share.

mod support;

mod activate_hook_failure;
mod activate_never_shares_the_store;
mod activate_torn_reads;
mod archive_hostile;
mod archive_roundtrip;
mod crash_kill_during_import;
mod damaged_artifacts_are_never_served;
mod ensure_artifact_vanished;
mod ensure_deterministic_pinning;
mod ensure_exactly_once;
mod ensure_rebuild_storm;
mod ensure_transient_recovery;
mod gc_budget_and_protection;
mod gc_killed_leaves_consistent_cache;
mod gc_never_pulls_from_readers;
mod gc_standing_budget;
mod hooks_get_absolute_paths;
mod import_archive_concurrent_install;
mod import_archive_hostile_cli;
mod import_bad_input;
mod import_concurrent_processes;
mod import_hooks_and_modes_on_staging;
mod reader_survives_reimport_and_quarantine;
mod remote_ensure_advisory;
mod remote_ensure_pulls_instead_of_building;
mod remote_push_pull;
mod remote_transport;
mod restore_advisory;
mod snapshot_advisory;
mod snapshot_concurrent;
mod snapshot_round_trip;
mod snapshot_unchanged_and_warmth_guard;
