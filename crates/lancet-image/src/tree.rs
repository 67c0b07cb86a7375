//! The image's merged file tree as the scan keeps it: metadata and content
//! hash per absolute path, never file contents. Symlinks are resolved here,
//! against this tree only (never the host's filesystem), with the semantics
//! a container sees: `..` at the root stays at the root, absolute targets
//! start at the image root.

use crate::hash::Content;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Symlink hops before a resolution is called a loop (Linux's limit).
pub const MAX_SYMLINK_HOPS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File {
        content: Content,
        /// For a hard link: the path it links to (same content).
        hardlink_of: Option<String>,
    },
    Dir,
    Symlink(String),
    /// Devices, FIFOs, sockets.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// `mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Node {
    pub fn content(&self) -> Option<&Content> {
        match &self.kind {
            NodeKind::File { content, .. } => Some(content),
            _ => None,
        }
    }

    /// An executable regular file: an execute bit, or ELF content.
    pub fn is_executable(&self) -> bool {
        self.content().is_some_and(|c| self.mode & 0o111 != 0 || c.elf)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// More than [`MAX_SYMLINK_HOPS`] links.
    Loop,
    /// A component does not exist (or is not a directory).
    Missing(String),
}

/// Paths are absolute and normalised (`/a/b`, the root is `/`).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds or replaces `path`. A non-directory replacing a directory hides
    /// what was below it, and an existing non-directory on the way to `path`
    /// gives way to (implicit) directories, as an overlay would show it.
    pub fn insert(&mut self, path: String, node: Node) {
        if node.kind != NodeKind::Dir && self.nodes.get(&path).is_some_and(|n| n.kind == NodeKind::Dir) {
            self.remove_children(&path);
        }
        let mut i = path.len();
        while let Some(j) = path[..i].rfind('/') {
            if j == 0 {
                break;
            }
            let anc = &path[..j];
            if self.nodes.get(anc).is_some_and(|n| n.kind != NodeKind::Dir) {
                self.nodes.remove(anc);
            }
            i = j;
        }
        self.nodes.insert(path, node);
    }

    /// Removes `path` and everything below it.
    pub fn remove_subtree(&mut self, path: &str) {
        self.nodes.remove(path);
        self.remove_children(path);
    }

    /// Removes everything below `dir`, keeping `dir` itself.
    pub fn remove_children(&mut self, dir: &str) {
        let keys: Vec<String> = self.children_range(dir).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.nodes.remove(&k);
        }
    }

    /// Every entry below `dir`, at any depth, in path order.
    fn children_range<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        self.nodes
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| k.as_str() != "/")
    }

    /// The entries directly inside `dir`.
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let skip = if dir == "/" { 1 } else { dir.len() + 1 };
        self.children_range(dir).filter(move |(k, _)| !k[skip..].contains('/'))
    }

    fn is_dir(&self, path: &str) -> bool {
        match self.nodes.get(path) {
            Some(n) => n.kind == NodeKind::Dir,
            // A directory a layer implies without listing it.
            None => path == "/" || self.children_range(path).next().is_some(),
        }
    }

    /// Follows every symlink in `path` inside the image and returns the
    /// real path it names (which may be a directory, a file or nothing when
    /// only the last component is missing is reported as `Missing`).
    pub fn resolve(&self, path: &str) -> Result<String, ResolveError> {
        let mut pending: Vec<String> = path.split('/').rev().filter(|c| !c.is_empty()).map(str::to_string).collect();
        let mut cur = String::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    let cut = cur.rfind('/').unwrap_or(0);
                    cur.truncate(cut);
                    continue;
                }
                _ => {}
            }
            let next = format!("{cur}/{c}");
            match self.nodes.get(&next).map(|n| &n.kind) {
                Some(NodeKind::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ResolveError::Loop);
                    }
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    pending.extend(target.split('/').rev().filter(|c| !c.is_empty()).map(str::to_string));
                }
                Some(_) => cur = next,
                None if self.is_dir(&next) => cur = next,
                None => return Err(ResolveError::Missing(next)),
            }
            // Only directories may have components after them.
            if !pending.is_empty() && !cur.is_empty() && !self.is_dir(&cur) {
                return Err(ResolveError::Missing(cur));
            }
        }
        Ok(if cur.is_empty() { "/".into() } else { cur })
    }
}

/// Whether a relative symlink target at `link` climbs above the image root
/// (`/a -> ../../etc/passwd`): harmless inside the container, where `..`
/// stops at the root, but it reaches the host's files for any tool that
/// follows it on the host.
pub fn escapes_root(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = link.split('/').filter(|c| !c.is_empty()).count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Joins a tar or directory entry path onto the image root: `./a//b/` →
/// `/a/b`. `None` when `..` would climb above the root.
pub fn normalize(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The directory part of an absolute path: `/a/b` → `/a`, `/a` → `/`.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of a path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Pem;

    fn file() -> Node {
        let content = Content { sha256: [0; 32], size: 1, elf: false, pem: Pem::None };
        Node { kind: NodeKind::File { content, hardlink_of: None }, mode: 0o755, uid: 0, gid: 0 }
    }

    fn link(t: &str) -> Node {
        Node { kind: NodeKind::Symlink(t.into()), mode: 0o777, uid: 0, gid: 0 }
    }

    fn dir() -> Node {
        Node { kind: NodeKind::Dir, mode: 0o755, uid: 0, gid: 0 }
    }

    #[test]
    fn resolves_inside_the_image_only() {
        let mut t = Tree::default();
        t.insert("/bin".into(), link("usr/bin"));
        t.insert("/usr/bin/busybox".into(), file());
        t.insert("/usr/bin/sh".into(), link("busybox"));
        t.insert("/usr/bin/up".into(), link("../../../../usr/bin/sh"));
        t.insert("/etc/shadow".into(), file());
        t.insert("/abs".into(), link("/etc/shadow"));
        t.insert("/loop1".into(), link("loop2"));
        t.insert("/loop2".into(), link("/loop1"));
        assert_eq!(t.resolve("/bin/sh"), Ok("/usr/bin/busybox".into()));
        assert_eq!(t.resolve("/usr/bin/up"), Ok("/usr/bin/busybox".into()), "`..` stops at the root");
        assert_eq!(t.resolve("/abs"), Ok("/etc/shadow".into()));
        assert_eq!(t.resolve("/loop1"), Err(ResolveError::Loop));
        assert_eq!(t.resolve("/usr/bin/busybox/x"), Err(ResolveError::Missing("/usr/bin/busybox".into())));
        assert!(matches!(t.resolve("/nope/x"), Err(ResolveError::Missing(_))));
        assert_eq!(t.resolve("/usr"), Ok("/usr".into()), "implicit directories resolve");
    }

    #[test]
    fn overlay_replacement_rules() {
        let mut t = Tree::default();
        t.insert("/d".into(), dir());
        t.insert("/d/a".into(), file());
        t.insert("/d/sub/b".into(), file());
        assert_eq!(t.children("/d").count(), 1, "only direct children: {:?}", t.children("/d").collect::<Vec<_>>());
        t.insert("/d".into(), file());
        assert!(t.get("/d/a").is_none(), "a file replacing a directory hides its contents");
        t.insert("/d/c".into(), file());
        assert!(t.get("/d").is_none(), "a file on the way to a new entry gives way");
        t.remove_subtree("/d");
        assert!(t.is_empty());
    }

    #[test]
    fn path_helpers() {
        assert_eq!(normalize("./a//b/"), Some("/a/b".into()));
        assert_eq!(normalize("/abs/x"), Some("/abs/x".into()));
        assert_eq!(normalize("a/../../etc"), None);
        assert_eq!(normalize("./"), Some("/".into()));
        assert!(escapes_root("/escape", "../../etc/passwd"));
        assert!(!escapes_root("/a/b/link", "../../etc/passwd"));
        assert!(!escapes_root("/x", "/etc/shadow"));
        assert_eq!((parent("/a/b"), parent("/a"), basename("/a/b")), ("/a", "/", "b"));
    }
}
