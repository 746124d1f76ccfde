//! Eight processes import different and identical trees into one root at the same time: every
//! artifact is intact, identical content is stored once, and the catalog is consistent.

use crate::support::*;

#[test]
fn eight_processes_import_into_one_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let trees: Vec<_> = (0..4)
        .map(|i| make_tree(&tmp.path().join(format!("tree{i}")), 300, 20_000, i))
        .collect();

    let children: Vec<_> = (0..8)
        .map(|i| {
            warmcache(&root)
                .args(["--json", "import"])
                .arg(&trees[i % 4])
                .args(["--name", &format!("t{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<serde_json::Value> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "import failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            crate::support::json_any(&out)
        })
        .collect();

    // Every artifact is intact and equal to its source.
    for (i, result) in results.iter().enumerate() {
        let path = std::path::Path::new(result["path"].as_str().unwrap());
        assert_eq!(
            describe_tree(path),
            describe_tree(&trees[i % 4]),
            "artifact of t{i} differs from its source"
        );
    }
    // Identical content is stored once: the two importers of each tree got one artifact.
    for i in 0..4 {
        assert_eq!(results[i]["artifact"], results[i + 4]["artifact"]);
    }
    assert_eq!(
        artifact_ids(&root).len(),
        4,
        "identical content must be stored once"
    );
    let created = results.iter().filter(|r| r["created"] == true).count();
    assert_eq!(created, 4, "exactly one importer per distinct tree stores it");

    // The catalog names all eight entries, each pointing at a present artifact.
    let status = json_ok(&run(warmcache(&root).args(["status", "--json"])));
    let entries = status["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    for entry in entries {
        assert_eq!(entry["present"], true, "{entry}");
    }
    let verify = json_ok(&run(warmcache(&root).args(["verify", "--json"])));
    assert_eq!(verify["checked"], 4);
    assert_eq!(verify["ok"], 4);
    assert_eq!(
        list(&root.join("v1/staging")),
        Vec::<String>::new(),
        "no staging leftovers"
    );
}
