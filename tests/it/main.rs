//! The integration tests, as one test binary: the crate and its dependencies are linked once,
//! not once per file. Each module proves one behaviour of the real `warmcache` binary or of the
//! library's public API; `support` holds what they share.

mod support;

mod activate_hook_failure;
mod activate_never_shares_the_store;
mod activate_refuses_a_destination_inside_the_cache;
mod activate_torn_reads;
mod archive_hostile;
mod archive_roundtrip;
mod builder_outliving_killed_warmcache_and_supervisor_is_ended;
mod crash_kill_during_import;
mod damaged_artifacts_are_never_served;
mod ensure_artifact_vanished;
mod ensure_deterministic_pinning;
mod ensure_exactly_once;
mod ensure_rebuild_storm;
mod ensure_serves_stale_when_the_wait_runs_out;
mod ensure_transient_recovery;
mod ensure_unstorable_output;
mod entry_names_follow_one_rule;
mod extraction_reserve_is_proportional;
mod full_or_read_only_volume_still_reads;
mod gc_budget_and_protection;
mod gc_checks_every_argument_before_changing_anything;
mod gc_killed_leaves_consistent_cache;
mod gc_never_pulls_from_readers;
mod gc_standing_budget;
mod hooks_get_absolute_paths;
mod import_archive_concurrent_install;
mod import_archive_hostile_cli;
mod import_bad_input;
mod import_concurrent_processes;
mod import_during_gc_never_leaves_a_row_without_its_artifact;
mod import_hooks_and_modes_on_staging;
mod import_named_archive_must_be_one;
mod json_is_kept_on_usage_errors;
mod messages_say_what_is_wrong;
mod path_lease_never_hands_out_a_collected_path;
mod reader_survives_reimport_and_quarantine;
mod remote_ensure_advisory;
mod remote_ensure_pulls_instead_of_building;
mod remote_push_pull;
mod remote_transport;
mod restore_advisory;
mod signals_end_builders_and_hooks;
mod snapshot_advisory;
mod snapshot_concurrent;
mod snapshot_round_trip;
mod snapshot_unchanged_and_warmth_guard;
mod staging_of_killed_process_swept_at_once;
mod transient_failure_recovers_when_the_clock_says_so;
mod tree_rule_round_trips;
mod verify_reports_damage_with_exit_1;
