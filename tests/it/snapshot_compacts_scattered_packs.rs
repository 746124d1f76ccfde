//! Compaction (docs/DESIGN.md, "Snapshots"): each snapshot that changes one more file of a
//! tree adds one small pack, and the snapshot whose base already references the most packs
//! allowed (8) writes the whole tree into one fresh `full` pack instead, so a restore never
//! gathers chunks from many packs.

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, snapshot};

const KEY: &str = "ci/compaction";

#[test]
fn many_deltas_are_compacted_into_one_full_pack() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 300, 8 * 1024, 21);
    let first = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(first["full"], true, "{first}");

    let mut compacted_at = None;
    for round in 1..=10 {
        // A different file each time, so every delta pack keeps something live.
        let i = round * 17;
        let path = src.join(format!("d{}/s{}/f{i}.bin", i % 17, i % 5));
        std::fs::write(&path, format!("round {round}").repeat(round)).unwrap();
        let report = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
        assert_eq!(report["status"], "uploaded", "{report}");
        let packs = current_manifest(&server, KEY)["packs"].as_array().unwrap().len();
        assert!(packs <= 8, "round {round}: the snapshot references {packs} packs");
        if report["compacted"] == true {
            assert_eq!(report["full"], true, "{report}");
            assert_eq!(packs, 1, "a compacted snapshot is one full pack");
            compacted_at.get_or_insert(round);
        } else {
            assert_eq!(report["full"], false, "{report}");
            // The full pack (first, or compacted) and one delta per snapshot since.
            let since = compacted_at.unwrap_or(0);
            assert_eq!(packs, round - since + 1, "round {round}");
        }
    }
    assert_eq!(compacted_at, Some(8), "the snapshot over 8 packs compacts");
}
