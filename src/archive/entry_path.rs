//! Normalization of entry names and link targets as archives store them (raw bytes, `/`-separated).
//!
//! The rules are deliberately strict: anything a different extractor or operating system could
//! interpret as leaving the destination (`..`, a leading `/`, a drive letter, a backslash) is
//! refused rather than repaired, so what we extract is what every other tool would see.

use std::ffi::OsString;
use std::path::PathBuf;

use super::UnsafeEntry;
use crate::store::rule::Trust;

/// Longest symlink target accepted (Linux's `PATH_MAX` less the NUL).
const MAX_LINK_TARGET: usize = 4095;

/// An entry name made safe to join onto the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryPath {
    /// The path relative to the destination; empty for the root itself (`./`).
    pub(crate) rel: PathBuf,
    /// The name ended with `/`, which marks a directory in zip and old tar.
    pub(crate) trailing_slash: bool,
}

/// Normalizes an entry name: drops empty and `.` components, refuses everything else that is not
/// a plain name. Windows forms (a backslash, a drive prefix) are refused in untrusted archives
/// only: in our own archives, made on this platform from a real tree, a backslash is a character
/// of the name.
pub(crate) fn normalize(raw: &[u8], trust: Trust) -> Result<EntryPath, UnsafeEntry> {
    match trust {
        Trust::Untrusted => check_common(raw)?,
        Trust::Own if raw.contains(&0) => return Err(UnsafeEntry::NulByte),
        Trust::Own => {}
    }
    if raw.first() == Some(&b'/') {
        return Err(UnsafeEntry::AbsolutePath);
    }
    let mut rel = PathBuf::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(UnsafeEntry::ParentComponent),
            name => rel.push(os_string(name)),
        }
    }
    Ok(EntryPath {
        rel,
        trailing_slash: raw.last() == Some(&b'/'),
    })
}

/// One step of a symlink target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Up,
    Name(OsString),
}

/// Checks a symlink target's form (relative, no Windows tricks) and splits it into steps; whether
/// it stays inside the tree is decided later against the whole tree ([`super::tree`]).
pub(crate) fn link_steps(raw: &[u8]) -> Result<Vec<Step>, UnsafeEntry> {
    let shown = || display(raw);
    if raw.is_empty() || raw.len() > MAX_LINK_TARGET || raw.contains(&0) {
        return Err(UnsafeEntry::SymlinkInvalid { target: shown() });
    }
    if raw.first() == Some(&b'/') {
        return Err(UnsafeEntry::SymlinkAbsolute { target: shown() });
    }
    check_common(raw)?;
    Ok(raw
        .split(|&b| b == b'/')
        .filter_map(|component| match component {
            b"" | b"." => None,
            b".." => Some(Step::Up),
            name => Some(Step::Name(os_string(name))),
        })
        .collect())
}

/// The rules shared by names and link targets.
fn check_common(raw: &[u8]) -> Result<(), UnsafeEntry> {
    if raw.contains(&0) {
        return Err(UnsafeEntry::NulByte);
    }
    // A backslash is a separator on Windows (`..\x` escapes there), and a drive prefix makes a
    // path absolute: refuse both rather than guess what the producer meant.
    if raw.contains(&b'\\') {
        return Err(UnsafeEntry::WindowsPath);
    }
    if raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':' {
        return Err(UnsafeEntry::WindowsPath);
    }
    Ok(())
}

/// A name for messages (lossy for non-UTF-8 names).
pub(crate) fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(unix)]
pub(crate) fn os_string(name: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name).to_os_string()
}

#[cfg(not(unix))]
pub(crate) fn os_string(name: &[u8]) -> OsString {
    OsString::from(String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(raw: &str) -> Result<String, UnsafeEntry> {
        normalize(raw.as_bytes(), Trust::Untrusted).map(|p| p.rel.to_string_lossy().into_owned())
    }

    #[test]
    fn plain_names_are_kept_and_dots_and_empty_components_dropped() {
        assert_eq!(rel("a/b/c.txt").unwrap(), "a/b/c.txt");
        assert_eq!(rel("./a//b/./c").unwrap(), "a/b/c");
        assert_eq!(rel("./").unwrap(), "");
        assert_eq!(rel("...").unwrap(), "...", "three dots is a name");
        assert_eq!(rel("a/..b/c..").unwrap(), "a/..b/c..");
        assert!(normalize(b"dir/", Trust::Untrusted).unwrap().trailing_slash);
        assert!(!normalize(b"dir", Trust::Untrusted).unwrap().trailing_slash);
        assert_eq!(
            normalize(b"a\\b", Trust::Own).unwrap().rel,
            PathBuf::from("a\\b"),
            "a backslash is part of a name in our own archives"
        );
    }

    #[test]
    fn traversal_absolute_and_windows_forms_are_refused() {
        assert_eq!(rel("../x"), Err(UnsafeEntry::ParentComponent));
        assert_eq!(
            rel("a/../b"),
            Err(UnsafeEntry::ParentComponent),
            "even when it stays inside"
        );
        assert_eq!(rel("a/.."), Err(UnsafeEntry::ParentComponent));
        assert_eq!(rel("/etc/passwd"), Err(UnsafeEntry::AbsolutePath));
        assert_eq!(rel("//server/share"), Err(UnsafeEntry::AbsolutePath));
        assert_eq!(rel("C:/Windows"), Err(UnsafeEntry::WindowsPath));
        assert_eq!(rel("c:x"), Err(UnsafeEntry::WindowsPath));
        assert_eq!(rel("..\\x"), Err(UnsafeEntry::WindowsPath));
        assert_eq!(rel("a\\b"), Err(UnsafeEntry::WindowsPath));
        assert_eq!(rel("a\0b"), Err(UnsafeEntry::NulByte));
        assert_eq!(rel("a/c:d").unwrap(), "a/c:d", "a colon inside a name is fine");
    }

    #[test]
    fn link_targets_are_split_into_steps() {
        assert_eq!(
            link_steps(b"../A/./b//").unwrap(),
            vec![Step::Up, Step::Name("A".into()), Step::Name("b".into())]
        );
        assert!(matches!(
            link_steps(b"/etc"),
            Err(UnsafeEntry::SymlinkAbsolute { .. })
        ));
        assert!(matches!(link_steps(b""), Err(UnsafeEntry::SymlinkInvalid { .. })));
        assert!(matches!(
            link_steps(&[b'a'; 5000]),
            Err(UnsafeEntry::SymlinkInvalid { .. })
        ));
        assert_eq!(link_steps(b"..\\..\\x"), Err(UnsafeEntry::WindowsPath));
        assert_eq!(link_steps(b"D:/x"), Err(UnsafeEntry::WindowsPath));
    }
}
