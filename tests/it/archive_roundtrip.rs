//! Round trips through real archives made from real trees on this machine (an installed Python
//! package, npm's own `node_modules`, and a small tree with an empty directory, an executable and
//! an in-tree symlink): what `extract` produces must be identical, file for file, to what `unzip`
//! and GNU `tar` produce from the same archive; and `create_tar_zst` output must read back the
//! same through `zstd -dc | tar -x` and through `extract`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use warmcache::archive::{self, Format, Limits};

use crate::support;

/// What a tree holds at one path, as the comparison sees it.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { bytes: Vec<u8>, executable: bool },
    Symlink(PathBuf),
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    for (rel, kind) in support::walk_sorted(root) {
        let path = root.join(&rel);
        let node = if kind.is_symlink() {
            Node::Symlink(std::fs::read_link(&path).unwrap())
        } else if kind.is_dir() {
            Node::Dir
        } else {
            let meta = std::fs::metadata(&path).unwrap();
            Node::File {
                bytes: std::fs::read(&path).unwrap(),
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        };
        out.insert(rel, node);
    }
    out
}

fn assert_same_tree(ours: &Path, reference: &Path, what: &str) {
    let (a, b) = (snapshot(ours), snapshot(reference));
    let only_ours: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_ref: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_ref.is_empty(),
        "{what}: only ours {only_ours:?}, only reference {only_ref:?}"
    );
    for (path, node) in &a {
        assert!(
            node == &b[path],
            "{what}: `{}` differs: ours {:?} vs reference {:?}",
            path.display(),
            short(node),
            short(&b[path])
        );
    }
}

fn short(node: &Node) -> String {
    match node {
        Node::File { bytes, executable } => format!("file of {} bytes, executable {executable}", bytes.len()),
        other => format!("{other:?}"),
    }
}

/// Our modes: 0755 or 0644 files, 0755 directories, never a special bit.
fn assert_clean_modes(root: &Path) {
    for (rel, kind) in support::walk_sorted(root) {
        if kind.is_symlink() {
            continue;
        }
        let mode = std::fs::metadata(root.join(&rel)).unwrap().permissions().mode() & 0o7777;
        if kind.is_dir() {
            assert_eq!(mode, 0o755, "`{}`", rel.display());
        } else {
            assert!(
                mode == 0o755 || mode == 0o644,
                "`{}` has mode {mode:o}",
                rel.display()
            );
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(script: &str) {
    run(Command::new("sh").arg("-c").arg(script));
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn python_package() -> PathBuf {
    let dir = stdout_of(
        Command::new("python3").args(["-c", "import email,os;print(os.path.dirname(email.__file__))"]),
    );
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("__init__.py").is_file(),
        "python3's `email` package was not found at {}: install python3",
        dir.display()
    );
    dir
}

fn npm_node_modules() -> PathBuf {
    let root = stdout_of(Command::new("npm").args(["root", "-g"]));
    let dir = Path::new(&root).join("npm/node_modules");
    assert!(
        dir.is_dir(),
        "npm's node_modules was not found at {}: install node and npm",
        dir.display()
    );
    dir
}

/// A tree with what real archives must carry: an empty directory, an executable (setuid, which
/// must not survive), an in-tree symlink to a file and one to a directory.
fn small_tree(root: &Path) -> PathBuf {
    let tree = root.join("small");
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::create_dir_all(tree.join("lib/A")).unwrap();
    std::fs::write(tree.join("lib/A/data.txt"), b"data\n").unwrap();
    std::fs::write(tree.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("A", tree.join("lib/Current")).unwrap();
    std::os::unix::fs::symlink("lib/Current/data.txt", tree.join("link.txt")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::os::unix::fs::symlink("../lib/Current/data.txt", tree.join("bin/data")).unwrap();
    tree
}

fn q(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// Makes zip, tar, tar.gz and tar.zst archives of `tree` with the system tools, extracts each with
/// `extract` and with `unzip`/`tar`, and compares.
fn check_against_system_tools(tree: &Path, name: &str) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let archives = [
        (
            w.join("a.zip"),
            Format::Zip,
            format!("cd {} && zip -qry {} .", q(tree), q(&w.join("a.zip"))),
        ),
        (
            w.join("a.tar"),
            Format::Tar,
            format!("tar -C {} -cf {} .", q(tree), q(&w.join("a.tar"))),
        ),
        (
            w.join("a.tgz"),
            Format::TarGz,
            format!("tar -C {} -czf {} .", q(tree), q(&w.join("a.tgz"))),
        ),
        (
            w.join("a.tzst"),
            Format::TarZst,
            format!(
                "tar -C {} --format=pax -cf - . | zstd -q -o {}",
                q(tree),
                q(&w.join("a.tzst"))
            ),
        ),
    ];
    for (path, format, make) in archives {
        sh(&make);
        assert_eq!(
            archive::detect(&path).unwrap(),
            Some(format),
            "{name}: detect {}",
            path.display()
        );
        let ours = w.join(format!("ours-{format}"));
        let reference = w.join(format!("ref-{format}"));
        std::fs::create_dir(&ours).unwrap();
        std::fs::create_dir(&reference).unwrap();
        let report = archive::extract(&path, format, &ours, &Limits::default(), &|_| {})
            .unwrap_or_else(|e| panic!("{name} {format}: {e}"));
        assert!(report.files > 0, "{name} {format}: nothing extracted");
        match format {
            Format::Zip => run(Command::new("unzip")
                .arg("-q")
                .arg(&path)
                .arg("-d")
                .arg(&reference)),
            _ => run(Command::new("tar")
                .arg("-xf")
                .arg(&path)
                .arg("-C")
                .arg(&reference)),
        }
        assert_same_tree(&ours, &reference, &format!("{name} {format}"));
        assert_clean_modes(&ours);
    }
}

/// `create_tar_zst` of `tree`, read back by `zstd -dc | tar -x` and by `extract`, equals `tree`.
fn check_create(tree: &Path, name: &str) {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("snapshot.bin");
    let report = archive::create_tar_zst(tree, std::fs::File::create(&out).unwrap(), 3).unwrap();
    assert_eq!(
        report.bytes_out,
        std::fs::metadata(&out).unwrap().len(),
        "{name}: bytes_out"
    );
    assert_eq!(archive::detect(&out).unwrap(), Some(Format::TarZst));

    let by_tar = work.path().join("by-tar");
    std::fs::create_dir(&by_tar).unwrap();
    sh(&format!("zstd -dc {} | tar -x -C {}", q(&out), q(&by_tar)));
    assert_same_tree(
        &by_tar,
        tree,
        &format!("{name}: create_tar_zst | zstd -dc | tar -x"),
    );

    let ours = work.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    let extracted = archive::extract(&out, Format::TarZst, &ours, &Limits::default(), &|_| {}).unwrap();
    assert_same_tree(&ours, tree, &format!("{name}: create_tar_zst | extract"));
    assert_eq!(
        (
            extracted.files,
            extracted.dirs,
            extracted.symlinks,
            extracted.bytes
        ),
        (report.files, report.dirs, report.symlinks, report.bytes_in),
        "{name}: the reports agree"
    );

    // Manifest order (whole paths sorted by their bytes, so parents come first and `a.b` sorts
    // between `a` and `a/x`), no owners.
    let listing = stdout_of(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -t", q(&out))),
    );
    let names: Vec<PathBuf> = listing
        .lines()
        .map(|line| PathBuf::from(line.trim_end_matches('/')))
        .collect();
    let mut expected: Vec<PathBuf> = support::walk_sorted(tree)
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    expected.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    assert_eq!(names, expected, "{name}: entries in sorted order");
    let verbose = stdout_of(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -tv --numeric-owner", q(&out))),
    );
    assert!(
        verbose
            .lines()
            .all(|l| l.split_whitespace().nth(1) == Some("0/0")),
        "{name}: owners recorded"
    );
}

#[test]
fn a_python_package_matches_unzip_and_gnu_tar() {
    check_against_system_tools(&python_package(), "python email package");
}

#[test]
fn npm_node_modules_matches_unzip_and_gnu_tar() {
    let tree = npm_node_modules();
    let has_links = support::walk_sorted(&tree).iter().any(|(_, k)| k.is_symlink());
    assert!(has_links, "npm's node_modules should hold .bin symlinks");
    check_against_system_tools(&tree, "npm node_modules");
}

#[test]
fn a_tree_with_an_empty_dir_an_executable_and_symlinks_matches() {
    let root = tempfile::tempdir().unwrap();
    let tree = small_tree(root.path());
    check_against_system_tools(&tree, "small tree");
    // The executable kept its executable bit but not its setuid bit.
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("t.tar");
    sh(&format!("tar -C {} -cf {} .", q(&tree), q(&tar)));
    let dest = work.path().join("d");
    std::fs::create_dir(&dest).unwrap();
    archive::extract(&tar, Format::Tar, &dest, &Limits::default(), &|_| {}).unwrap();
    assert_eq!(
        std::fs::metadata(dest.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert!(dest.join("empty").is_dir());
    assert_eq!(std::fs::read(dest.join("link.txt")).unwrap(), b"data\n");
}

#[test]
fn create_tar_zst_round_trips_through_zstd_tar_and_extract() {
    let root = tempfile::tempdir().unwrap();
    let small = small_tree(root.path());
    // Our own archives carry 0755/0644, so compare against a tree without the setuid bit.
    std::fs::set_permissions(small.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    check_create(&small, "small tree");
    check_create(&python_package(), "python email package");
    check_create(&npm_node_modules(), "npm node_modules");
}
