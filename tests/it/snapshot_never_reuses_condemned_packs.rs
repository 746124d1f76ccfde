//! A snapshot never builds on a pack the remote gc condemned (`KEY/gc.json`, docs/DESIGN.md,
//! "Snapshots"): such a pack may be deleted once its grace period is over, so the content it
//! holds is uploaded again and the new manifest does not name it.

use crate::support;
use crate::support::json_ok;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, snapshot};

const KEY: &str = "ci/condemned";

#[test]
fn content_in_a_condemned_pack_is_uploaded_again() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = support::make_tree(&tmp.path().join("src"), 200, 8 * 1024, 31);
    json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    let first = current_manifest(&server, KEY)["packs"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The remote gc condemned the first pack (as if no kept snapshot reached it).

    let state = serde_json::json!({
        "version": 1,
        "condemned": { format!("packs/{first}.tar.zst"): 1 },
    });
    server.put_object(&format!("{KEY}/gc.json"), &serde_json::to_vec(&state).unwrap());

    std::fs::write(src.join("d1/s1/f1.bin"), b"changed").unwrap();
    let report = json_ok(&snapshot(&server, &cache, &src, KEY, &[]));
    assert_eq!(report["status"], "uploaded", "{report}");
    assert_eq!(report["full"], true, "{report}");
    assert_eq!(report["reused_chunks"], 0, "{report}");
    let manifest = current_manifest(&server, KEY);
    let packs: Vec<&str> = manifest["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["token"].as_str().unwrap())
        .collect();
    assert!(!packs.contains(&first.as_str()), "{manifest}");
    assert!(
        !manifest.to_string().contains(&first),
        "a segment or chunk still names it"
    );
}
