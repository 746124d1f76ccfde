//! `warmcache restore --json` says where its time went: `"phases"`, in milliseconds, for the
//! lookup, the download, the decompression, the writing of files, the sync and the swap
//! (docs/DESIGN.md, "Restore"). The parts of the extraction add up to it; a restore that finds
//! DIR already holding the snapshot spends nothing on the others.

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};

const KEY: &str = "phases/tree";
const PHASES: [&str; 10] = [
    "lookup_ms",
    "seed_ms",
    "download_ms",
    "download_wait_ms",
    "decompress_ms",
    "write_ms",
    "extract_ms",
    "sync_ms",
    "swap_ms",
    "wall_ms",
];

fn phase(report: &serde_json::Value, name: &str) -> u64 {
    report["phases"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no phase {name} in {report}"))
}

#[test]
fn restore_reports_its_phases_and_an_unchanged_dir_spends_nothing_on_them() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 200, 8 * 1024, 21);
    json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let dir = tmp.path().join("dir");

    let report = json_ok(&restore(&server, &cache, &dir, KEY, &["--strict"]));
    assert_eq!(report["status"], "restored", "{report}");
    assert_eq!(
        report["phases"].as_object().map(|p| p.len()),
        Some(PHASES.len()),
        "{report}"
    );
    for name in PHASES {
        assert!(
            phase(&report, name) <= phase(&report, "wall_ms"),
            "{name} in {report}"
        );
    }
    // The extraction's wall time is its three parts (each rounded down to a millisecond).
    let parts =
        phase(&report, "download_wait_ms") + phase(&report, "decompress_ms") + phase(&report, "write_ms");
    let extract = phase(&report, "extract_ms");
    assert!(parts <= extract && extract <= parts + 2, "{report}");

    let unchanged = json_ok(&restore(&server, &cache, &dir, KEY, &["--strict"]));
    assert_eq!(unchanged["status"], "unchanged", "{unchanged}");
    for name in [
        "download_ms",
        "decompress_ms",
        "write_ms",
        "extract_ms",
        "sync_ms",
        "swap_ms",
    ] {
        assert_eq!(phase(&unchanged, name), 0, "{name} in {unchanged}");
    }
}
