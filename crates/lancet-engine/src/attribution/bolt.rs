//! A read-only reader for BoltDB (bbolt) files, just enough to look up a key
//! through nested buckets.
//!
//! Why it exists: podman 4.x keeps container labels (and the container config
//! they belong to) only in libpod's `bolt_state.db`; there is no JSON file to
//! read them from. Linking a Go library or a full Rust port is out of
//! proportion, and the format is small: fixed page headers, two meta pages,
//! branch/leaf pages, inline buckets.
//!
//! The file is read whole into memory at one moment (bbolt writes pages
//! copy-on-write and flips the meta page last, so the newest valid meta page
//! describes a consistent tree). Every offset is bounds-checked and the
//! descent depth is limited, so a truncated or corrupt file yields `None`,
//! never a panic or a loop.

const MAGIC: u32 = 0xED0C_DAED;
const PAGE_HEADER: usize = 16;
const BRANCH_ELEM: usize = 16;
const LEAF_ELEM: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// A B+tree deeper than this is not something bbolt writes; it is a cycle.
const MAX_DEPTH: usize = 32;
/// Pages and elements one listing ([`BoltDb::entries`]) looks at, at most.
const MAX_LIST_WORK: usize = 1 << 20;

// bbolt's pages are little-endian.
use crate::bytes::{u16_le, u32_le, u64_le};

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where a bucket's tree lives: in a page of the file, or inline in the
/// bucket's value (small buckets).
#[derive(Clone, Copy)]
enum Node<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

/// One element of a leaf page.
struct LeafItem<'a> {
    key: &'a [u8],
    value: &'a [u8],
    is_bucket: bool,
}

pub struct BoltDb<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
}

impl<'a> BoltDb<'a> {
    /// Picks the newest meta page whose magic, version and checksum hold.
    pub fn open(data: &'a [u8]) -> Option<Self> {
        let mut best: Option<(u64, usize, u64)> = None; // (txid, page_size, root)
                                                        // Meta page 0 is at offset 0; meta page 1 is at offset page_size, and
                                                        // the page size is only known from a meta page, so try page 0's claim
                                                        // and the common sizes.
        let mut candidates = vec![0usize];
        if let Some(ps) = u32_le(data, PAGE_HEADER + 8) {
            candidates.push(ps as usize);
        }
        candidates.extend([4096, 8192, 16384, 65536]);
        candidates.sort_unstable();
        candidates.dedup();
        for off in candidates {
            let m = off + PAGE_HEADER;
            let Some(meta) = data.get(m..m + 64) else { continue };
            if u32_le(meta, 0) != Some(MAGIC) || u32_le(meta, 4) != Some(2) {
                continue;
            }
            if u64_le(meta, 56) != Some(fnv1a64(&meta[..56])) {
                continue;
            }
            let page_size = u32_le(meta, 8)? as usize;
            if !(512..=1 << 20).contains(&page_size) {
                continue;
            }
            let root = u64_le(meta, 16)?;
            let txid = u64_le(meta, 48)?;
            if best.is_none_or(|(t, _, _)| txid > t) {
                best = Some((txid, page_size, root));
            }
        }
        let (_, page_size, root) = best?;
        Some(BoltDb { data, page_size, root })
    }

    /// The bytes of one page including its overflow pages.
    fn page(&self, id: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(id).ok()?.checked_mul(self.page_size)?;
        let hdr = self.data.get(start..start.checked_add(PAGE_HEADER)?)?;
        let overflow = u32_le(hdr, 12)? as usize;
        let len = overflow.checked_add(1)?.checked_mul(self.page_size)?;
        let end = start.checked_add(len)?.min(self.data.len());
        self.data.get(start..end)
    }

    fn node_bytes(&self, n: Node<'a>) -> Option<&'a [u8]> {
        match n {
            Node::Page(id) => self.page(id),
            Node::Inline(b) => Some(b),
        }
    }

    /// Looks `key` up in the bucket rooted at `node`, descending branch pages.
    fn lookup(&self, node: Node<'a>, key: &[u8], depth: usize) -> Option<LeafItem<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let p = self.node_bytes(node)?;
        let flags = u16_le(p, 8)?;
        let count = u16_le(p, 10)? as usize;
        if flags & FLAG_LEAF != 0 {
            return (0..count).filter_map(|i| leaf_item(p, i)).find(|it| it.key == key);
        }
        if flags & FLAG_BRANCH != 0 {
            // The child to follow is the last one whose first key is <= key.
            let mut chosen = None;
            for i in 0..count {
                let (k, child) = branch_item(p, i)?;
                if i == 0 || k <= key {
                    chosen = Some(child);
                }
                if k > key {
                    break;
                }
            }
            // Inline buckets never have branch pages; a branch inside one is corrupt.
            return match node {
                Node::Page(_) => self.lookup(Node::Page(chosen?), key, depth + 1),
                Node::Inline(_) => None,
            };
        }
        None
    }

    /// The plain key/values of a bucket, in order (for listing buckets), at
    /// most `max` of them. `budget` counts pages and elements looked at: a
    /// corrupt (or hostile) file can make thousands of branch elements name
    /// the same leaf of 65535 elements, which collected whole was hundreds
    /// of millions of items.
    #[cfg_attr(not(test), allow(dead_code))]
    fn items(&self, node: Node<'a>, depth: usize, out: &mut Vec<LeafItem<'a>>, max: usize, budget: &mut usize) {
        if depth > MAX_DEPTH || *budget == 0 || out.len() >= max {
            return;
        }
        *budget -= 1;
        let Some(p) = self.node_bytes(node) else { return };
        let (Some(flags), Some(count)) = (u16_le(p, 8), u16_le(p, 10)) else { return };
        for i in 0..count as usize {
            if *budget == 0 || out.len() >= max {
                return;
            }
            *budget -= 1;
            if flags & FLAG_LEAF != 0 {
                out.extend(leaf_item(p, i).filter(|it| !it.is_bucket));
            } else if flags & FLAG_BRANCH != 0 && matches!(node, Node::Page(_)) {
                if let Some((_, child)) = branch_item(p, i) {
                    self.items(Node::Page(child), depth + 1, out, max, budget);
                }
            } else {
                return;
            }
        }
    }

    fn sub_bucket(value: &'a [u8]) -> Option<Node<'a>> {
        let root = u64_le(value, 0)?;
        if root == 0 {
            value.get(16..).map(Node::Inline)
        } else {
            Some(Node::Page(root))
        }
    }

    fn bucket_node(&self, path: &[&[u8]]) -> Option<Node<'a>> {
        let mut node = Node::Page(self.root);
        for name in path {
            let it = self.lookup(node, name, 0)?;
            if !it.is_bucket {
                return None;
            }
            node = Self::sub_bucket(it.value)?;
        }
        Some(node)
    }

    /// The value of `key` in the bucket reached through `path`; `None` when any
    /// step is missing, is of the wrong kind, or lies outside the file.
    pub fn get(&self, path: &[&[u8]], key: &[u8]) -> Option<&'a [u8]> {
        let node = self.bucket_node(path)?;
        let it = self.lookup(node, key, 0)?;
        (!it.is_bucket).then_some(it.value)
    }

    /// Plain key/value pairs of the bucket reached through `path` (nested
    /// buckets are skipped). Bounded by `max` items. Read for the names in
    /// a podman container's `networks` bucket.
    pub fn entries(&self, path: &[&[u8]], max: usize) -> Vec<(&'a [u8], &'a [u8])> {
        let Some(node) = self.bucket_node(path) else { return Vec::new() };
        let mut out = Vec::new();
        let mut budget = MAX_LIST_WORK;
        self.items(node, 0, &mut out, max, &mut budget);
        out.into_iter().map(|i| (i.key, i.value)).collect()
    }
}

fn leaf_item(p: &[u8], i: usize) -> Option<LeafItem<'_>> {
    let e = PAGE_HEADER.checked_add(i.checked_mul(LEAF_ELEM)?)?;
    let flags = u32_le(p, e)?;
    let pos = u32_le(p, e + 4)? as usize;
    let ksize = u32_le(p, e + 8)? as usize;
    let vsize = u32_le(p, e + 12)? as usize;
    let k0 = e.checked_add(pos)?;
    let v0 = k0.checked_add(ksize)?;
    let key = p.get(k0..v0)?;
    let value = p.get(v0..v0.checked_add(vsize)?)?;
    Some(LeafItem { key, value, is_bucket: flags & BUCKET_LEAF_FLAG != 0 })
}

fn branch_item(p: &[u8], i: usize) -> Option<(&[u8], u64)> {
    let e = PAGE_HEADER.checked_add(i.checked_mul(BRANCH_ELEM)?)?;
    let pos = u32_le(p, e)? as usize;
    let ksize = u32_le(p, e + 4)? as usize;
    let child = u64_le(p, e + 8)?;
    let k0 = e.checked_add(pos)?;
    Some((p.get(k0..k0.checked_add(ksize)?)?, child))
}

/// Builds small bbolt files for tests (the layout bbolt writes: two meta pages,
/// a freelist page, then data pages). Only used by tests, but public to the
/// crate so fixture builders elsewhere can use it.
#[cfg(test)]
pub(crate) mod writer {
    use super::*;

    pub enum Val {
        Bytes(Vec<u8>),
        Bucket(Vec<(Vec<u8>, Val)>),
    }

    pub struct Writer {
        pub page_size: usize,
        pages: Vec<Vec<u8>>, // each entry is a full page run (with overflow)
    }

    fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(16);
        h.extend(id.to_le_bytes());
        h.extend(flags.to_le_bytes());
        h.extend(count.to_le_bytes());
        h.extend(overflow.to_le_bytes());
        h
    }

    impl Writer {
        pub fn new(page_size: usize) -> Self {
            Writer { page_size, pages: vec![Vec::new(), Vec::new(), Vec::new()] }
        }

        fn next_id(&self) -> u64 {
            self.pages.iter().map(|p| (p.len() / self.page_size).max(1) as u64).sum()
        }

        /// Serialises a leaf body (elements + data) for the given items.
        fn leaf_body(&mut self, items: &[(Vec<u8>, Val)], inline_small: bool) -> (u16, Vec<u8>) {
            let mut elems = Vec::new();
            let mut data = Vec::new();
            let n = items.len();
            for (i, (k, v)) in items.iter().enumerate() {
                let (flag, val) = match v {
                    Val::Bytes(b) => (0u32, b.clone()),
                    Val::Bucket(children) => (BUCKET_LEAF_FLAG, self.bucket_value(children, inline_small)),
                };
                let elem_off = PAGE_HEADER + i * LEAF_ELEM;
                let pos = (PAGE_HEADER + n * LEAF_ELEM + data.len()) - elem_off;
                elems.extend(flag.to_le_bytes());
                elems.extend((pos as u32).to_le_bytes());
                elems.extend((k.len() as u32).to_le_bytes());
                elems.extend((val.len() as u32).to_le_bytes());
                data.extend(k);
                data.extend(val);
            }
            elems.extend(data);
            (n as u16, elems)
        }

        fn push_page(&mut self, flags: u16, count: u16, body: Vec<u8>) -> u64 {
            let id = self.next_id();
            let total = PAGE_HEADER + body.len();
            let npages = total.div_ceil(self.page_size).max(1);
            let mut p = page_header(id, flags, count, (npages - 1) as u32);
            p.extend(body);
            p.resize(npages * self.page_size, 0);
            self.pages.push(p);
            id
        }

        fn bucket_value(&mut self, items: &[(Vec<u8>, Val)], inline_small: bool) -> Vec<u8> {
            let (count, body) = self.leaf_body(items, inline_small);
            if inline_small && body.len() < self.page_size / 4 {
                let mut v = Vec::new();
                v.extend(0u64.to_le_bytes());
                v.extend(0u64.to_le_bytes());
                v.extend(page_header(0, FLAG_LEAF, count, 0));
                v.extend(body);
                v
            } else {
                let root = self.push_leaf_or_branch(items, count, body);
                let mut v = Vec::new();
                v.extend(root.to_le_bytes());
                v.extend(0u64.to_le_bytes());
                v
            }
        }

        /// Buckets with more than 2 items are split into two leaves under a
        /// branch, so readers are exercised on branch pages too.
        fn push_leaf_or_branch(&mut self, items: &[(Vec<u8>, Val)], count: u16, body: Vec<u8>) -> u64 {
            if items.len() <= 2 {
                return self.push_page(FLAG_LEAF, count, body);
            }
            let _ = body;
            let mid = items.len() / 2;
            let (a, b) = items.split_at(mid);
            let first_keys = [a[0].0.clone(), b[0].0.clone()];
            let mut ids = Vec::new();
            for half in [a, b] {
                let (c, bd) = self.leaf_body(half, false);
                ids.push(self.push_page(FLAG_LEAF, c, bd));
            }
            let mut elems = Vec::new();
            let mut data: Vec<u8> = Vec::new();
            for (i, k) in first_keys.iter().enumerate() {
                let pos = (PAGE_HEADER + 2 * BRANCH_ELEM + data.len()) - (PAGE_HEADER + i * BRANCH_ELEM);
                elems.extend((pos as u32).to_le_bytes());
                elems.extend((k.len() as u32).to_le_bytes());
                elems.extend(ids[i].to_le_bytes());
                data.extend(k);
            }
            elems.extend(data);
            self.push_page(FLAG_BRANCH, 2, elems)
        }

        /// The whole file for a root bucket holding `items` (keys must be sorted).
        pub fn finish(mut self, items: &[(Vec<u8>, Val)], inline_small: bool) -> Vec<u8> {
            let (count, body) = self.leaf_body(items, inline_small);
            let root = self.push_leaf_or_branch(items, count, body);
            let ps = self.page_size;
            let high = self.next_id();
            for (i, txid) in [(0usize, 2u64), (1, 3)] {
                let mut p = page_header(i as u64, 0x04, 0, 0);
                let mut meta = Vec::new();
                meta.extend(MAGIC.to_le_bytes());
                meta.extend(2u32.to_le_bytes());
                meta.extend((ps as u32).to_le_bytes());
                meta.extend(0u32.to_le_bytes());
                meta.extend(root.to_le_bytes());
                meta.extend(0u64.to_le_bytes());
                meta.extend(2u64.to_le_bytes());
                meta.extend(high.to_le_bytes());
                meta.extend(txid.to_le_bytes());
                let sum = fnv1a64(&meta);
                meta.extend(sum.to_le_bytes());
                p.extend(meta);
                p.resize(ps, 0);
                self.pages[i] = p;
            }
            let mut fl = page_header(2, 0x10, 0, 0);
            fl.resize(ps, 0);
            self.pages[2] = fl;
            self.pages.concat()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{Val, Writer};
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn sample(inline: bool) -> Vec<u8> {
        let big = "x".repeat(9000);
        let ctr = Val::Bucket(vec![
            (b("aaa"), Val::Bucket(vec![(b("config"), Val::Bytes(b(r#"{"labels":{"a":"1"}}"#))), (b("state"), Val::Bytes(b("{}")))])),
            (b("bbb"), Val::Bucket(vec![(b("config"), Val::Bytes(b(&big)))])),
            (b("ccc"), Val::Bucket(vec![(b("config"), Val::Bytes(b("c")))])),
            (b("ddd"), Val::Bucket(vec![(b("config"), Val::Bytes(b("d")))])),
        ]);
        Writer::new(4096).finish(&[(b("all-ctrs"), Val::Bucket(vec![(b("aaa"), Val::Bytes(b("aaa")))])), (b("ctr"), ctr)], inline)
    }

    #[test]
    fn reads_nested_buckets_pages_inline_and_overflow() {
        for inline in [false, true] {
            let f = sample(inline);
            let db = BoltDb::open(&f).expect("open");
            assert_eq!(db.get(&[b"ctr", b"aaa"], b"config"), Some(&br#"{"labels":{"a":"1"}}"#[..]));
            assert_eq!(db.get(&[b"ctr", b"bbb"], b"config").map(|v| v.len()), Some(9000));
            assert_eq!(db.get(&[b"ctr", b"ddd"], b"config"), Some(&b"d"[..]));
            assert_eq!(db.get(&[b"ctr", b"ccc"], b"config"), Some(&b"c"[..]));
            assert_eq!(db.get(&[b"ctr", b"zzz"], b"config"), None);
            assert_eq!(db.get(&[b"ctr"], b"aaa"), None, "a bucket is not a value");
            assert_eq!(db.entries(&[b"all-ctrs"], 10).len(), 1);
        }
    }

    #[test]
    fn corrupt_files_never_panic() {
        let f = sample(true);
        for cut in (0..f.len()).step_by(97) {
            if let Some(db) = BoltDb::open(&f[..cut]) {
                let _ = db.get(&[b"ctr", b"bbb"], b"config");
            }
        }
        let mut seed = 0x1234_5678u64;
        for _ in 0..3000 {
            let mut g = f.clone();
            for _ in 0..8 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let pos = (seed >> 20) as usize % g.len();
                g[pos] = (seed >> 8) as u8;
            }
            // Skip the meta checksum so corruption reaches the tree.
            if let Some(db) = BoltDb::open(&g) {
                let _ = db.get(&[b"ctr", b"aaa"], b"config");
                let _ = db.entries(&[b"ctr"], 100);
            }
        }
        assert!(BoltDb::open(b"").is_none());
        assert!(BoltDb::open(&[0xffu8; 10000]).is_none());
    }
}
