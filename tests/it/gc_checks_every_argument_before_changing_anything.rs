//! `gc --evict a --evict typo` refuses the typo before evicting anything: `a` keeps its artifact.

use crate::support::*;

#[test]
fn an_unknown_evict_name_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "a"]));
    let out = run(warmcache(&root).args(["gc", "--max-size", "0", "--evict", "a", "--evict", "typo"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("`typo`"), "{}", stderr(&out));
    let path = ok(warmcache(&root).args(["path", "a"]));
    assert_eq!(std::fs::read(path).unwrap(), b"x");
}

#[test]
fn human_output_names_reasons_as_json_does() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    ok(warmcache(&root).arg("import").arg(&file).args(["--name", "a"]));
    let text = ok(warmcache(&root).args(["gc", "--max-size", "0", "--evict", "a", "--dry-run"]));
    assert!(text.contains("over-budget"), "{text}");
    assert!(!text.contains("OverBudget"), "{text}");
}
