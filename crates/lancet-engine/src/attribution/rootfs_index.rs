//! Which container a host path lies in, by the container's root filesystem
//! directories (an overlay upper directory, a merged root).

use std::sync::Arc;

/// Root filesystem directory (no trailing '/') → container id, and the
/// distinct lengths of those directories.
///
/// A file event's path is looked up by its ancestors, deepest first. Only
/// an ancestor as long as some container's root can be one, so the walk
/// tries just those lengths (one or two on a host whose roots all lie in
/// one storage directory) instead of hashing every ancestor of a
/// ~120-byte path.
#[derive(Debug, Default)]
pub(super) struct RootfsIndex {
    map: crate::FastMap<String, Arc<str>>,
    /// Distinct key lengths, longest first, with how many keys have each:
    /// kept up to date per insert and remove (a host with thousands of
    /// containers inserts one root at a time).
    lens: Vec<(usize, usize)>,
}

impl RootfsIndex {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn insert(&mut self, dir: &str, id: &str) {
        let dir = dir.trim_end_matches('/');
        if self.map.get(dir).is_some_and(|old| &**old == id) {
            return;
        }
        if self.map.insert(dir.to_string(), id.into()).is_none() {
            self.count(dir.len(), true);
        }
    }

    /// Forgets `dir` if it is still `id`'s (a restart may have taken it).
    pub(super) fn remove(&mut self, dir: &str, id: &str) {
        let dir = dir.trim_end_matches('/');
        if self.map.get(dir).is_some_and(|old| &**old == id) {
            self.map.remove(dir);
            self.count(dir.len(), false);
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.lens.clear();
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.map.retain(|_, id| keep(id));
        self.lens.clear();
        let lens: Vec<usize> = self.map.keys().map(String::len).collect();
        for len in lens {
            self.count(len, true);
        }
    }

    /// One key of length `len` more (`add`) or fewer.
    fn count(&mut self, len: usize, add: bool) {
        if len == 0 {
            return;
        }
        // Longest first: search by the reversed order.
        match self.lens.binary_search_by(|&(l, _)| len.cmp(&l)) {
            Ok(i) if add => self.lens[i].1 += 1,
            Ok(i) => {
                self.lens[i].1 -= 1;
                if self.lens[i].1 == 0 {
                    self.lens.remove(i);
                }
            }
            Err(i) if add => self.lens.insert(i, (len, 1)),
            Err(_) => {}
        }
    }

    /// The id of the container whose root `path` (without a trailing '/')
    /// lies in, with the root's length: the deepest root that is `path` or
    /// an ancestor of it.
    pub(super) fn find(&self, path: &str) -> Option<(&str, usize)> {
        let bytes = path.as_bytes();
        self.lens.iter().find_map(|&(len, _)| {
            // `path` itself, or an ancestor: it ends before a '/' (so `len`
            // is a char boundary).
            let fits = len == bytes.len() || (len < bytes.len() && bytes[len] == b'/');
            fits.then(|| self.map.get(&path[..len]))?.map(|id| (&**id, len))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RootfsIndex;

    /// The walk by lengths finds what the walk over every ancestor finds.
    #[test]
    fn the_deepest_root_holding_a_path_is_found() {
        let mut ix = RootfsIndex::default();
        ix.insert("/s/overlay/aaaa/diff/", "a");
        ix.insert("/s/overlay/bbbb/diff", "b");
        ix.insert("/s/overlay/aaaa/diff/vol", "v");
        ix.insert("/s/x", "x");
        for (path, want) in [
            ("/s/overlay/aaaa/diff/tmp/f", Some(("a", 20))),
            ("/s/overlay/aaaa/diff", Some(("a", 20))),
            ("/s/overlay/aaaa/diff/vol/f", Some(("v", 24))),
            ("/s/overlay/aaaa/diff/volume/f", Some(("a", 20))),
            ("/s/overlay/bbbb/diff/é/f", Some(("b", 20))),
            ("/s/overlay/aaaa/diffx", None),
            ("/s/xy", None),
            ("/s/x/y", Some(("x", 4))),
            ("/", None),
            ("", None),
        ] {
            assert_eq!(ix.find(path), want, "{path}");
        }
        ix.remove("/s/overlay/aaaa/diff/vol", "other");
        assert_eq!(ix.find("/s/overlay/aaaa/diff/vol/f"), Some(("v", 24)), "another container's entry stays");
        ix.remove("/s/overlay/aaaa/diff/vol", "v");
        assert_eq!(ix.find("/s/overlay/aaaa/diff/vol/f"), Some(("a", 20)));
        ix.retain(|id| id != "a");
        assert_eq!(ix.find("/s/overlay/aaaa/diff/tmp/f"), None);
        assert_eq!(ix.find("/s/overlay/bbbb/diff/tmp/f"), Some(("b", 20)), "a root of the same length stays");
        assert_eq!(ix.len(), 2);
        // A root taken over by a restart is one key, counted once.
        ix.insert("/s/yy", "y1");
        ix.insert("/s/yy/", "y2");
        assert_eq!(ix.find("/s/yy/f"), Some(("y2", 5)));
        ix.remove("/s/yy", "y2");
        assert_eq!(ix.find("/s/yy/f"), None);
        assert_eq!(ix.lens, [(20, 1), (4, 1)]);
        ix.clear();
        assert_eq!(ix.find("/s/x/y"), None);
    }
}
