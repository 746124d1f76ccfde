//! A model of the tree an extraction is building, so that every entry is checked against what
//! came before it without asking the file system: duplicates, entries under an earlier symlink or
//! file, hard links to anything but an earlier regular file, and symlinks that resolve outside.
//!
//! Memory grows with the number of entries (their paths), which `Limits::max_entries` bounds.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::UnsafeEntry;
use super::entry_path::{Step, link_steps, os_string};
use crate::store::rule::{self, EntryType, Trust};

/// The kernel follows at most 40 symlinks while resolving one path (Linux's `MAXSYMLINKS`).
const MAX_HOPS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A directory; `explicit` once an entry named it (rather than only a path through it).
    Dir {
        explicit: bool,
    },
    File,
    Symlink,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::File => "file",
            Node::Symlink => "symlink",
        }
    }
}

/// What an entry is, for [`Tree::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    /// A regular file, or a hard link to one.
    File,
    Symlink,
}

/// A symlink to create once the whole archive has been read.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) path: PathBuf,
    pub(crate) target: OsString,
    /// The entry's name as the archive gave it, for messages.
    pub(crate) entry: String,
    steps: Vec<Step>,
}

/// What [`Tree::add`] decided.
#[derive(Debug, Default)]
pub(crate) struct Added {
    /// Ancestor directories no earlier entry created, shallowest first: create them first.
    pub(crate) new_dirs: Vec<PathBuf>,
    /// The entry is a directory that already exists (implied by an earlier entry's path).
    pub(crate) exists: bool,
}

#[derive(Debug)]
pub(crate) struct Tree {
    trust: Trust,
    nodes: HashMap<PathBuf, Node>,
    links: Vec<Link>,
    link_index: HashMap<PathBuf, usize>,
}

impl Tree {
    pub(crate) fn new(trust: Trust) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(PathBuf::new(), Node::Dir { explicit: false });
        Self {
            trust,
            nodes,
            links: Vec::new(),
            link_index: HashMap::new(),
        }
    }

    /// Records an entry at `path` (normalized, relative), refusing it if the tree rule does
    /// ([`crate::store::rule`]), or if it clashes with an earlier one or lies under an earlier
    /// symlink or file (so nothing is ever written through a symlink).
    pub(crate) fn add(&mut self, path: &Path, kind: Kind) -> Result<Added, UnsafeEntry> {
        if path.as_os_str().is_empty() && kind != Kind::Dir {
            return Err(UnsafeEntry::EmptyName);
        }
        let entry = match kind {
            Kind::Dir => EntryType::Dir,
            Kind::File => EntryType::File,
            // The target is checked by `add_link`.
            Kind::Symlink => EntryType::Symlink(std::ffi::OsStr::new(".")),
        };
        rule::check(path, entry).map_err(|refused| UnsafeEntry::NotInTree(refused.problem))?;
        let mut added = Added::default();
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.pop(); // the root, which always exists
        for ancestor in ancestors.into_iter().rev() {
            match self.nodes.get(ancestor) {
                None => {
                    self.nodes
                        .insert(ancestor.to_path_buf(), Node::Dir { explicit: false });
                    added.new_dirs.push(ancestor.to_path_buf());
                }
                Some(Node::Dir { .. }) => {}
                Some(Node::Symlink) => {
                    return Err(UnsafeEntry::ThroughSymlink {
                        link: ancestor.display().to_string(),
                    });
                }
                Some(Node::File) => {
                    return Err(UnsafeEntry::Duplicate {
                        path: ancestor.display().to_string(),
                        earlier: "file",
                    });
                }
            }
        }
        match (self.nodes.get_mut(path), kind) {
            (None, _) => {
                let node = match kind {
                    Kind::Dir => Node::Dir { explicit: true },
                    Kind::File => Node::File,
                    Kind::Symlink => Node::Symlink,
                };
                self.nodes.insert(path.to_path_buf(), node);
            }
            (Some(node @ Node::Dir { explicit: false }), Kind::Dir) => {
                *node = Node::Dir { explicit: true };
                added.exists = true;
            }
            (Some(node), _) => {
                return Err(UnsafeEntry::Duplicate {
                    path: path.display().to_string(),
                    earlier: node.name(),
                });
            }
        }
        Ok(added)
    }

    /// Whether `path` is a regular file an earlier entry created (a valid hard-link target).
    pub(crate) fn is_file(&self, path: &Path) -> bool {
        self.nodes.get(path) == Some(&Node::File)
    }

    /// Checks a symlink's target, as the archive stores it: the tree rule's checks always, and
    /// for an untrusted archive also a relative form without Windows tricks (whether it stays
    /// inside is decided by [`Tree::check_links`]). Returns what [`Tree::add_link`] records.
    pub(crate) fn link_target(&self, raw: &[u8]) -> Result<(OsString, Vec<Step>), UnsafeEntry> {
        let target = os_string(raw);
        rule::check_target(&target).map_err(UnsafeEntry::NotInTree)?;
        let steps = match self.trust {
            Trust::Untrusted => link_steps(raw)?,
            // Kept as written: never resolved, so never followed.
            Trust::Own => Vec::new(),
        };
        Ok((target, steps))
    }

    /// Records a symlink (after [`Tree::add`] accepted its path and [`Tree::link_target`] its
    /// target) for [`Tree::check_links`].
    pub(crate) fn add_link(&mut self, path: PathBuf, (target, steps): (OsString, Vec<Step>), entry: String) {
        self.link_index.insert(path.clone(), self.links.len());
        self.links.push(Link {
            path,
            target,
            entry,
            steps,
        });
    }

    /// Resolves every symlink against the complete tree, as the kernel would (following the other
    /// symlinks of the archive), and refuses any that leaves it. A purely lexical check is not
    /// enough: with `d/up -> ..`, the target `d/up/..` is lexically the root but really its parent.
    ///
    /// An archive of our own ([`Trust::Own`]) keeps its symlinks as written, wherever they point:
    /// they are created after every other entry and no entry may lie under one, so nothing is
    /// ever written through them.
    pub(crate) fn check_links(&self) -> Result<&[Link], (String, UnsafeEntry)> {
        if self.trust == Trust::Own {
            return Ok(&self.links);
        }
        for link in &self.links {
            let target = link.target.to_string_lossy().into_owned();
            let mut cur = link.path.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut pending: VecDeque<&Step> = link.steps.iter().collect();
            let mut hops = 0;
            while let Some(step) = pending.pop_front() {
                match step {
                    Step::Up => {
                        if !cur.pop() {
                            return Err((link.entry.clone(), UnsafeEntry::SymlinkEscapes { target }));
                        }
                    }
                    Step::Name(name) => {
                        cur.push(name);
                        if let Some(&i) = self.link_index.get(&cur) {
                            hops += 1;
                            if hops > MAX_HOPS {
                                return Err((link.entry.clone(), UnsafeEntry::SymlinkLoop { target }));
                            }
                            cur.pop();
                            for next in self.links[i].steps.iter().rev() {
                                pending.push_front(next);
                            }
                        }
                    }
                }
            }
        }
        Ok(&self.links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with_links(links: &[(&str, &str)]) -> Tree {
        let mut tree = Tree::new(Trust::Untrusted);
        for (path, target) in links {
            tree.add(Path::new(path), Kind::Symlink).unwrap();
            let checked = tree.link_target(target.as_bytes()).unwrap();
            tree.add_link(PathBuf::from(path), checked, path.to_string());
        }
        tree
    }

    #[test]
    fn own_archives_keep_absolute_and_outside_links_but_never_write_under_them() {
        let mut tree = Tree::new(Trust::Own);
        tree.add(Path::new("envlink"), Kind::Symlink).unwrap();
        let checked = tree.link_target(b"/usr/bin/env").unwrap();
        tree.add_link(PathBuf::from("envlink"), checked, "envlink".into());
        tree.add(Path::new("up"), Kind::Symlink).unwrap();
        let checked = tree.link_target(b"../../x").unwrap();
        tree.add_link(PathBuf::from("up"), checked, "up".into());
        assert_eq!(tree.check_links().unwrap().len(), 2);
        assert!(matches!(
            tree.add(Path::new("up/f"), Kind::File),
            Err(UnsafeEntry::ThroughSymlink { .. })
        ));
        assert!(matches!(
            Tree::new(Trust::Untrusted).link_target(b"/usr/bin/env"),
            Err(UnsafeEntry::SymlinkAbsolute { .. })
        ));
    }

    #[test]
    fn duplicates_and_kind_clashes_are_refused() {
        let mut tree = Tree::new(Trust::Untrusted);
        tree.add(Path::new("a/b"), Kind::File).unwrap();
        assert!(matches!(
            tree.add(Path::new("a/b"), Kind::File),
            Err(UnsafeEntry::Duplicate { .. })
        ));
        assert!(matches!(
            tree.add(Path::new("a/b"), Kind::Dir),
            Err(UnsafeEntry::Duplicate { .. })
        ));
        assert!(matches!(
            tree.add(Path::new("a/b/c"), Kind::File),
            Err(UnsafeEntry::Duplicate { .. })
        ));
        assert!(matches!(
            tree.add(Path::new("a"), Kind::File),
            Err(UnsafeEntry::Duplicate { .. })
        ));
        // A directory implied by a path may still be named explicitly, once.
        assert!(tree.add(Path::new("a"), Kind::Dir).unwrap().exists);
        assert!(matches!(
            tree.add(Path::new("a"), Kind::Dir),
            Err(UnsafeEntry::Duplicate { .. })
        ));
        assert!(matches!(
            tree.add(Path::new(""), Kind::File),
            Err(UnsafeEntry::EmptyName)
        ));
    }

    #[test]
    fn implied_directories_are_reported_once_shallowest_first() {
        let mut tree = Tree::new(Trust::Untrusted);
        let added = tree.add(Path::new("x/y/z"), Kind::File).unwrap();
        assert_eq!(added.new_dirs, vec![PathBuf::from("x"), PathBuf::from("x/y")]);
        assert!(
            tree.add(Path::new("x/y/w"), Kind::File)
                .unwrap()
                .new_dirs
                .is_empty()
        );
    }

    #[test]
    fn entries_under_a_symlink_are_refused() {
        let mut tree = Tree::new(Trust::Untrusted);
        tree.add(Path::new("l"), Kind::Symlink).unwrap();
        assert!(matches!(
            tree.add(Path::new("l/x"), Kind::File),
            Err(UnsafeEntry::ThroughSymlink { .. })
        ));
    }

    #[test]
    fn in_tree_links_pass_and_escapes_are_caught_through_other_links() {
        assert!(
            tree_with_links(&[("Versions/Current", "A"), ("bin/x", "../lib/x")])
                .check_links()
                .is_ok()
        );
        assert!(tree_with_links(&[("a/b", "../../x")]).check_links().is_err());
        // Lexically inside, really outside: `d/up` is the root, so `d/up/..` is its parent.
        let err = tree_with_links(&[("d/up", ".."), ("l", "d/up/..")])
            .check_links()
            .unwrap_err();
        assert!(matches!(err.1, UnsafeEntry::SymlinkEscapes { .. }), "{err:?}");
        let err = tree_with_links(&[("a", "b"), ("b", "a")])
            .check_links()
            .unwrap_err();
        assert!(matches!(err.1, UnsafeEntry::SymlinkLoop { .. }));
    }
}
