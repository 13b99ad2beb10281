//! The inode table: FUSE inode numbers for the files of the data directory.
//!
//! A node is one backing file, identified by its backing `(st_dev, st_ino)`,
//! so two names of one file (hard links) share a FUSE inode, and with it one
//! lock table and one passthrough backing file, as the kernel requires. A node
//! knows its names as `(parent inode, name)` links, so a path is rebuilt by
//! walking up, and renaming a directory moves its whole subtree at once.
//!
//! FUSE inode numbers are never reused (a counter), so generations stay 0.
//! A node lives while the kernel holds lookups on it (`forget` drops them);
//! a node whose last name was unlinked stays, nameless, while the kernel still
//! references it (an open file), and keeps the path it last had for hooks.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use fuser::Errno;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Identity of a backing file: `(st_dev, st_ino)`.
pub type BackingKey = (u64, u64);

type Link = (u64, OsString);

#[derive(Debug)]
struct Node {
    key: BackingKey,
    /// Its names; empty once unlinked (and always for the root).
    links: Vec<Link>,
    /// The relative path it had when it lost its last name.
    last_path: PathBuf,
    lookups: u64,
}

/// FUSE inode numbers ↔ backing files and their relative paths.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<BackingKey, u64>,
    by_link: HashMap<Link, u64>,
    next: u64,
}

impl InodeTable {
    /// A table holding the root directory, whose backing identity is `root`.
    pub fn new(root: BackingKey) -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                key: root,
                links: Vec::new(),
                last_path: PathBuf::new(),
                lookups: 1,
            },
        );
        InodeTable {
            nodes,
            by_key: HashMap::from([(root, ROOT_INO)]),
            by_link: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }

    /// The current path of `ino`, relative to the data directory (empty for
    /// the root); `ENOENT` if it has no name any more, `ESTALE` if unknown.
    pub fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        // Bounded: a path cannot be deeper than the table is large.
        for _ in 0..=self.nodes.len() {
            if cur == ROOT_INO {
                return Ok(parts.iter().rev().collect());
            }
            let node = self.nodes.get(&cur).ok_or(Errno::ESTALE)?;
            let (parent, name) = node.links.first().ok_or(Errno::ENOENT)?;
            parts.push(name);
            cur = *parent;
        }
        Err(Errno::ELOOP)
    }

    /// The path of `ino` if it has one, else the path it had last: what hooks
    /// are told about a file unlinked while open. `None` if unknown.
    pub fn path_or_last(&self, ino: u64) -> Option<(PathBuf, bool)> {
        match self.path(ino) {
            Ok(p) => Some((p, true)),
            Err(_) => self.nodes.get(&ino).map(|n| (n.last_path.clone(), false)),
        }
    }

    /// The path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(Errno::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// Whether `ino` is known.
    pub fn contains(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino)
    }

    /// The inode of `name` in `parent`, if the kernel looked it up.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.by_link.get(&(parent, name.to_os_string())).copied()
    }

    /// The inode at relative path `rel`, if every component was looked up.
    pub fn ino_of(&self, rel: &Path) -> Option<u64> {
        rel.components().try_fold(ROOT_INO, |dir, c| match c {
            std::path::Component::Normal(name) => self.child(dir, name),
            std::path::Component::CurDir => Some(dir),
            _ => None,
        })
    }

    /// Records a successful lookup (or create) of `name` in `parent`, whose
    /// backing identity is `key`; returns its inode, with one more lookup.
    pub fn lookup(&mut self, parent: u64, name: &OsStr, key: BackingKey) -> u64 {
        let link = (parent, name.to_os_string());
        if let Some(&ino) = self.by_link.get(&link) {
            if self.nodes.get(&ino).is_some_and(|n| n.key == key) {
                self.bump(ino);
                return ino;
            }
            // The name now holds another file (changed outside the mount).
            self.drop_link(&link);
        }
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.nodes.insert(
                    ino,
                    Node {
                        key,
                        links: Vec::new(),
                        last_path: PathBuf::new(),
                        lookups: 0,
                    },
                );
                self.by_key.insert(key, ino);
                ino
            }
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.links.push(link.clone());
        }
        self.by_link.insert(link, ino);
        self.bump(ino);
        ino
    }

    /// The kernel dropped `n` lookups of `ino`; at zero the node goes. Returns
    /// whether it went.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return false;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            for link in &node.links {
                self.by_link.remove(link);
            }
            if self.by_key.get(&node.key) == Some(&ino) {
                self.by_key.remove(&node.key);
            }
        }
        true
    }

    /// `name` in `parent` was unlinked (or replaced by a rename).
    pub fn unlink(&mut self, parent: u64, name: &OsStr) {
        self.drop_link(&(parent, name.to_os_string()));
    }

    /// `name` in `parent` was renamed to `newname` in `newparent`, replacing
    /// whatever was there.
    pub fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) {
        let from = (parent, name.to_os_string());
        let to = (newparent, newname.to_os_string());
        if from == to {
            return;
        }
        self.drop_link(&to);
        if let Some(ino) = self.by_link.remove(&from) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                for l in node.links.iter_mut().filter(|l| **l == from) {
                    *l = to.clone();
                }
            }
            self.by_link.insert(to, ino);
        }
    }

    /// The two names were exchanged (`RENAME_EXCHANGE`).
    pub fn exchange(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) {
        let a = (parent, name.to_os_string());
        let b = (newparent, newname.to_os_string());
        let ia = self.by_link.remove(&a);
        let ib = self.by_link.remove(&b);
        for (ino, from, to) in [(ia, &a, &b), (ib, &b, &a)] {
            let Some(ino) = ino else { continue };
            if let Some(node) = self.nodes.get_mut(&ino) {
                if let Some(l) = node.links.iter_mut().find(|l| *l == from) {
                    *l = to.clone();
                }
            }
            self.by_link.insert(to.clone(), ino);
        }
    }

    fn bump(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    fn drop_link(&mut self, link: &Link) {
        let Some(ino) = self.by_link.remove(link) else {
            return;
        };
        let last_path = self.path(ino).ok();
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.links.retain(|l| l != link);
        if node.links.is_empty() {
            if let Some(p) = last_path {
                node.last_path = p;
            }
            // A new file may get this backing identity once this one is gone.
            if self.by_key.get(&node.key) == Some(&ino) {
                self.by_key.remove(&node.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn paths_follow_renames_of_directories() {
        let mut t = InodeTable::new((1, 1));
        let dir = t.lookup(ROOT_INO, os("d"), (1, 2));
        let file = t.lookup(dir, os("f"), (1, 3));
        assert_eq!(t.path(file), Ok(PathBuf::from("d/f")));
        t.rename(ROOT_INO, os("d"), ROOT_INO, os("e"));
        assert_eq!(t.path(file), Ok(PathBuf::from("e/f")));
        assert_eq!(t.ino_of(Path::new("e/f")), Some(file));
        assert_eq!(t.ino_of(Path::new("d/f")), None);
        assert_eq!(t.path(ROOT_INO), Ok(PathBuf::new()));
    }

    #[test]
    fn hard_links_share_a_node_and_unlink_keeps_the_last_path() {
        let mut t = InodeTable::new((1, 1));
        let a = t.lookup(ROOT_INO, os("a"), (1, 5));
        let b = t.lookup(ROOT_INO, os("b"), (1, 5));
        assert_eq!(a, b);
        t.unlink(ROOT_INO, os("a"));
        assert_eq!(t.path(a), Ok(PathBuf::from("b")));
        t.unlink(ROOT_INO, os("b"));
        assert_eq!(t.path(a), Err(Errno::ENOENT));
        assert_eq!(t.path_or_last(a), Some((PathBuf::from("b"), false)));
        // A new file with the same backing identity is a new inode.
        let c = t.lookup(ROOT_INO, os("c"), (1, 5));
        assert_ne!(c, a);
    }

    #[test]
    fn rename_over_a_name_unlinks_the_old_file() {
        let mut t = InodeTable::new((1, 1));
        let a = t.lookup(ROOT_INO, os("a"), (1, 5));
        let b = t.lookup(ROOT_INO, os("b"), (1, 6));
        t.rename(ROOT_INO, os("a"), ROOT_INO, os("b"));
        assert_eq!(t.path(a), Ok(PathBuf::from("b")));
        assert_eq!(t.path(b), Err(Errno::ENOENT));
        t.exchange(ROOT_INO, os("b"), ROOT_INO, os("c"));
        assert_eq!(t.path(a), Ok(PathBuf::from("c")));
    }

    #[test]
    fn forget_drops_a_node_at_zero_lookups() {
        let mut t = InodeTable::new((1, 1));
        let a = t.lookup(ROOT_INO, os("a"), (1, 5));
        assert_eq!(t.lookup(ROOT_INO, os("a"), (1, 5)), a);
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        assert!(!t.contains(a));
        assert_eq!(t.child(ROOT_INO, os("a")), None);
        assert!(!t.forget(ROOT_INO, 100));
        // A name now holding another file gets a new inode.
        let b = t.lookup(ROOT_INO, os("b"), (1, 7));
        let b2 = t.lookup(ROOT_INO, os("b"), (1, 8));
        assert_ne!(b, b2);
        assert_eq!(t.path(b), Err(Errno::ENOENT));
        assert_eq!(t.child_path(ROOT_INO, os("..")), Err(Errno::EINVAL));
    }
}
