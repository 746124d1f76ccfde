//! Hooks run on the staging copy, never on DEST or the cache: a failing hook leaves DEST exactly as
//! it was with no staging leftovers; a succeeding hook's change goes live; links through which a
//! hook would modify the cache are refused; leftovers of crashed activations are swept.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::list;
use warmcache::activate::{ActivateError, ActivateOptions, LinkMode, activate};

/// Everything observable about a path: for each entry below it (itself included), its kind, mode
/// and contents (or symlink target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        if meta.is_dir() {
            out.insert(rel, ("dir".into(), mode, Vec::new()));
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            out.insert(
                rel,
                (
                    "symlink".into(),
                    mode,
                    target.into_os_string().into_encoded_bytes(),
                ),
            );
        } else {
            out.insert(rel, ("file".into(), mode, std::fs::read(&path).unwrap()));
        }
    }
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    app: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (cache, app, outside) = (
            tmp.path().join("cache"),
            tmp.path().join("app"),
            tmp.path().join("outside"),
        );
        for d in [&cache, &app, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        Self {
            _tmp: tmp,
            cache,
            app,
            outside,
        }
    }

    /// A published (read-only) file in the cache.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.cache.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
        path
    }

    /// A published (read-only) tree in the cache.
    fn tree(&self, name: &str, tag: &str) -> PathBuf {
        let root = self.cache.join(name);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/tool"), format!("tool {tag}")).unwrap();
        std::fs::write(root.join("README"), tag).unwrap();
        std::os::unix::fs::symlink("bin/tool", root.join("tool")).unwrap();
        for p in ["bin/tool", "README"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        for p in ["bin", ""] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        root
    }
}

fn with_hooks(link: LinkMode, hooks: &[&str]) -> ActivateOptions {
    ActivateOptions {
        link,
        hooks: hooks.iter().map(|h| h.to_string()).collect(),
    }
}

#[test]
fn a_failing_hook_leaves_a_file_dest_byte_identical() {
    let fx = Fixture::new();
    let (old, new) = (fx.file("old", b"old binary"), fx.file("new", b"new binary"));
    let dest = fx.app.join("tool");
    activate(&old, &dest, &ActivateOptions::default()).unwrap();
    let before = (snapshot(&fx.app), snapshot(&fx.cache));

    let hook = r#"echo tampered >> "$WARMCACHE_STAGING" && echo signing failed >&2 && exit 1"#;
    let err = activate(&new, &dest, &with_hooks(LinkMode::Copy, &[hook])).unwrap_err();

    assert!(matches!(err, ActivateError::HookFailed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(hook) && msg.contains("exited with code 1") && msg.contains("signing failed"),
        "{msg}"
    );
    assert!(
        msg.contains(&dest.display().to_string()) && msg.contains("left unchanged"),
        "{msg}"
    );
    assert_eq!(
        (snapshot(&fx.app), snapshot(&fx.cache)),
        before,
        "DEST and the cache are unchanged"
    );
    assert_eq!(list(&fx.app), vec!["tool"], "no staging leftovers");
}

#[test]
fn a_failing_hook_leaves_a_directory_dest_identical() {
    let fx = Fixture::new();
    let (old, new) = (fx.tree("old", "old"), fx.tree("new", "new"));
    let dest = fx.app.join("bundle");
    activate(&old, &dest, &with_hooks(LinkMode::Copy, &[])).unwrap();
    let before = (snapshot(&fx.app), snapshot(&fx.cache));

    // The first hook succeeds and modifies the staging tree; the second fails.
    let hooks = [
        r#"echo tampered > "$WARMCACHE_STAGING/bin/tool" && rm "$WARMCACHE_STAGING/README""#,
        "exit 3",
    ];
    let err = activate(&new, &dest, &with_hooks(LinkMode::Auto, &hooks)).unwrap_err();

    assert!(err.to_string().contains("exited with code 3"), "{err}");
    assert_eq!(
        (snapshot(&fx.app), snapshot(&fx.cache)),
        before,
        "DEST and the cache are unchanged"
    );
    assert_eq!(list(&fx.app), vec!["bundle"], "no staging leftovers");
}

#[test]
fn a_succeeding_hook_modifies_dest_but_never_the_cache() {
    let fx = Fixture::new();
    let file = fx.file("tool", b"unsigned");
    let tree = fx.tree("bundle", "v1");
    let cache_before = snapshot(&fx.cache);
    let log = fx.outside.join("hook.log");
    let hook = format!(
        r#"printf '%s|%s|%s\n' "$WARMCACHE_DEST" "$PWD" "$WARMCACHE_STAGING" >> '{}' && if [ -d "$WARMCACHE_STAGING" ]; then echo signed >> "$WARMCACHE_STAGING/bin/tool"; else echo signed >> "$WARMCACHE_STAGING"; fi"#,
        log.display()
    );

    let dest_file = fx.app.join("tool");
    let act = activate(&file, &dest_file, &with_hooks(LinkMode::Auto, &[&hook])).unwrap();
    assert_ne!(act.link, LinkMode::Hardlink);
    assert_eq!(std::fs::read(&dest_file).unwrap(), b"unsignedsigned\n");

    let dest_dir = fx.app.join("bundle");
    activate(&tree, &dest_dir, &with_hooks(LinkMode::Copy, &[&hook])).unwrap();
    assert_eq!(
        std::fs::read(dest_dir.join("bin/tool")).unwrap(),
        b"tool v1signed\n"
    );

    assert_eq!(snapshot(&fx.cache), cache_before, "the cache is untouched");
    assert_eq!(list(&fx.app), vec!["bundle", "tool"]);
    // The hook ran with DEST, in DEST's directory, on a staging path beside DEST.
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(lines.len(), 2);
    for (line, dest) in lines.iter().zip([&dest_file, &dest_dir]) {
        assert_eq!(line[0], dest.to_str().unwrap());
        assert_eq!(
            Path::new(line[1]).canonicalize().unwrap(),
            fx.app.canonicalize().unwrap()
        );
        let staging = Path::new(line[2]);
        assert_eq!(staging.parent().unwrap(), fx.app);
        assert!(
            staging.file_name().unwrap().to_str().unwrap().starts_with('.'),
            "hidden staging name"
        );
    }
}

#[test]
fn hardlink_or_symlink_with_a_hook_is_refused() {
    let fx = Fixture::new();
    let (old, new) = (fx.file("old", b"old"), fx.file("new", b"new"));
    let dest = fx.app.join("tool");
    activate(&old, &dest, &ActivateOptions::default()).unwrap();
    let before = (snapshot(&fx.app), snapshot(&fx.cache));
    for mode in [LinkMode::Hardlink, LinkMode::Symlink] {
        let err = activate(
            &new,
            &dest,
            &with_hooks(mode, &["echo x >> \"$WARMCACHE_STAGING\""]),
        )
        .unwrap_err();
        assert!(
            matches!(err, ActivateError::HooksNeedPrivateCopy { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(mode.as_str()) && msg.contains("modify the cached artifact"),
            "{msg}"
        );
    }
    assert_eq!((snapshot(&fx.app), snapshot(&fx.cache)), before);
}

#[test]
fn leftovers_of_a_crashed_activation_are_swept_by_the_next_one() {
    let fx = Fixture::new();
    let src = fx.file("tool", b"binary");
    // A PID that surely belongs to no live process: a child we started and reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // A live process that is not us: its staging copy must survive the sweep.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let live = sleeper.id();

    let dead_file = fx.app.join(format!(".tool.warmcache-stage-{dead}-1a2b-0"));
    std::fs::write(&dead_file, b"half a binary").unwrap();
    let dead_dir = fx.app.join(format!(".other.warmcache-stage-{dead}-1a2b-1"));
    std::fs::create_dir_all(dead_dir.join("sub")).unwrap();
    std::fs::write(dead_dir.join("sub/f"), b"x").unwrap();
    std::fs::set_permissions(&dead_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let live_file = fx.app.join(format!(".tool.warmcache-stage-{live}-1a2b-2"));
    std::fs::write(&live_file, b"in progress").unwrap();
    let unrelated = fx.app.join(".tool.backup");
    std::fs::write(&unrelated, b"mine").unwrap();

    activate(&src, &fx.app.join("tool"), &ActivateOptions::default()).unwrap();

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(
        !dead_file.exists() && !dead_dir.exists(),
        "dead leftovers swept: {:?}",
        list(&fx.app)
    );
    assert!(
        live_file.exists(),
        "a live activation's staging copy is left alone"
    );
    assert!(
        unrelated.exists(),
        "names that are not staging names are left alone"
    );
    assert_eq!(std::fs::read(fx.app.join("tool")).unwrap(), b"binary");
}
