//! `stats --prometheus FILE` writes node_exporter's textfile-collector format: every family has
//! `# HELP` and `# TYPE ... counter`, counter names are `warmcache_..._total`, every sample has
//! `root` and `entry` labels and a number; and FILE is replaced atomically (a new file renamed
//! over it, as node_exporter requires), never rewritten in place, leaving no temporary behind.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use crate::support::*;

/// Checks the text-format grammar of one exposition file; returns the samples as
/// `(family, labels, value)`.
fn parse(text: &str) -> Vec<(String, String, f64)> {
    assert!(text.ends_with('\n'), "a complete file ends with a newline");
    let mut typed = BTreeSet::new();
    let mut helped = BTreeSet::new();
    let mut samples = Vec::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_name(name) && !help.is_empty(), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "counter", "{line}");
            assert!(
                name.starts_with("warmcache_") && name.ends_with("_total"),
                "{line}"
            );
            assert!(helped.contains(name), "HELP before TYPE: {line}");
            assert!(typed.insert(name.to_string()), "one TYPE per family: {line}");
        } else {
            let (name, rest) = line.split_once('{').expect("labels");
            let (labels, value) = rest.rsplit_once("} ").expect("a value after the labels");
            assert!(typed.contains(name), "a sample of a declared family: {line}");
            assert!(
                labels.starts_with("root=\"") && labels.contains(",entry=\""),
                "{line}"
            );
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
            assert!(value >= 0.0);
            samples.push((name.to_string(), labels.to_string(), value));
        }
    }
    samples
}

#[test]
fn the_metrics_parse_and_the_file_is_renamed_into_place() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("in.txt"), "x").unwrap();
    // A name that needs escaping in a label value.
    let name = "web/\"quoted\"";
    let ensure = || {
        ok(warmcache(&root).current_dir(&project).args([
            "ensure",
            name,
            "--input",
            "in.txt",
            "--build",
            "cat in.txt > \"$WARMCACHE_OUT\"",
        ]))
    };
    ensure();
    ensure();
    ensure();
    let dir = tmp.path().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("warmcache.prom");
    let write = || {
        let out = json_ok(&run(warmcache(&root)
            .args(["stats", "--json", "--prometheus"])
            .arg(&file)));
        assert_eq!(out["prometheus"], file.to_str().unwrap());
    };
    write();
    let samples = parse(&std::fs::read_to_string(&file).unwrap());
    let get = |family: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == family && l.contains("entry=\"web/\\\"quoted\\\"\""))
            .unwrap_or_else(|| panic!("no {family} for the entry in {samples:?}"))
            .2
    };
    assert_eq!(get("warmcache_hits_total"), 2.0);
    assert_eq!(get("warmcache_misses_total"), 1.0);
    assert!(
        samples
            .iter()
            .any(|(n, l, v)| n == "warmcache_builds_total" && l.ends_with("result=\"ok\"") && *v == 1.0)
    );
    // Each write is a new file renamed over the old one (a reader holding the old one keeps a
    // whole file); nothing else is left in the directory.
    let mut held = Vec::new();
    for _ in 0..5 {
        let old = std::fs::File::open(&file).unwrap();
        write();
        let (before, after) = (old.metadata().unwrap(), std::fs::metadata(&file).unwrap());
        assert_ne!(before.ino(), after.ino(), "the file was rewritten in place");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &old, &mut text).unwrap();
        parse(&text);
        parse(&std::fs::read_to_string(&file).unwrap());
        // Held open, so its inode number cannot be reused by the next file.
        held.push(old);
    }
    assert_eq!(list(&dir), vec!["warmcache.prom".to_string()]);
    // Readable by node_exporter's own user: the mode any new file gets here (not a temporary
    // file's private 0600).
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, "").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&file), mode(&probe), "the metrics file's mode");
    // The root's label is the root however it is named (here relative, from another directory).
    let relative = std::path::Path::new("..").join(root.file_name().unwrap());
    let report = json_ok(&run(warmcache(&relative)
        .current_dir(&dir)
        .args(["stats", "--json"])));
    assert_eq!(
        report["root"],
        std::fs::canonicalize(&root).unwrap().to_str().unwrap(),
        "{report}"
    );
    // Without FILE, the same text on stdout.
    let text = ok(warmcache(&root).args(["stats", "--prometheus"]));
    parse(&(text + "\n"));
}
