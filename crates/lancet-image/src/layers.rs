//! Applying image layers (tar change sets) to the merged tree, streaming:
//! each layer is read once, regular files are hashed as their bytes pass,
//! and only metadata and hashes are kept. Nothing is written to disk.
//!
//! OCI rules: entries replace what lower layers had at the same path;
//! `.wh.<name>` deletes `<name>` from lower layers, `.wh..wh..opq` hides
//! everything lower layers had in its directory. Whiteouts apply to lower
//! layers only, whatever their order inside the layer, so a layer is
//! collected first and applied once it has been read (and verified) whole.

use crate::error::ScanError;
use crate::findings::{Finding, Rule};
use crate::hash::{hash_reader, HashingReader, Meter, Scratch};
use crate::tree::{basename, normalize, parent, Node, NodeKind, Tree};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What a layer blob must hash to, checked once it has been read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The blob as stored (an OCI descriptor digest).
    Stored(String),
    /// The uncompressed tar (a `rootfs.diff_ids` entry).
    Uncompressed(String),
}

/// Reads one layer blob (plain, gzip or zstd tar; detected from its first
/// bytes) from `blob`, checks it against `expect`, and applies it to `tree`.
pub fn apply_blob(
    tree: &mut Tree,
    blob: &mut dyn Read,
    name: &str,
    expect: &Expect,
    scratch: &mut Scratch,
    meter: &Meter,
    findings: &mut Vec<Finding>,
) -> Result<(), ScanError> {
    let ctx = |m: &dyn std::fmt::Display| format!("layer {name}: {m}");
    let mut raw = BufReader::with_capacity(64 * 1024, HashingReader::new(blob));
    let magic = raw.fill_buf().map_err(|e| ScanError::format(name, ctx(&e)))?;
    let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(&mut raw))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(ruzstd::StreamingDecoder::new(&mut raw).map_err(|e| ScanError::format(name, ctx(&format!("zstd: {e}"))))?)
    } else {
        Box::new(&mut raw)
    };
    let mut tar = HashingReader::new(decoded);
    let pending = read_layer(&mut tar, tree, scratch, meter, findings).map_err(|m| ScanError::format(format!("layer {name}"), m))?;
    // The tar ends before its padding; the digest covers all of it.
    io::copy(&mut tar, &mut io::sink())
        .map_err(|e| ScanError::format(format!("layer {name}"), format!("reading past the archive end: {e}")))?;
    let uncompressed = tar.digest();
    drop(tar);
    let (expected, actual) = match expect {
        Expect::Stored(d) => (d, raw.get_ref().digest()),
        Expect::Uncompressed(d) => (d, uncompressed),
    };
    if *expected != actual {
        return Err(ScanError::Digest { context: format!("layer {name}"), expected: expected.clone(), actual });
    }
    pending.apply(tree);
    Ok(())
}

/// A layer read but not yet applied.
#[derive(Default)]
struct Pending {
    entries: Vec<(String, Node)>,
    index: HashMap<String, usize>,
    whiteouts: Vec<String>,
    opaque: Vec<String>,
}

impl Pending {
    fn add(&mut self, path: String, node: Node) {
        match self.index.get(&path) {
            Some(&i) => self.entries[i].1 = node,
            None => {
                self.index.insert(path.clone(), self.entries.len());
                self.entries.push((path, node));
            }
        }
    }

    fn apply(self, tree: &mut Tree) {
        for d in &self.opaque {
            tree.remove_children(d);
        }
        for w in &self.whiteouts {
            tree.remove_subtree(w);
        }
        for (p, n) in self.entries {
            tree.insert(p, n);
        }
    }
}

fn read_layer(r: &mut dyn Read, tree: &Tree, scratch: &mut Scratch, meter: &Meter, findings: &mut Vec<Finding>) -> Result<Pending, String> {
    let mut p = Pending::default();
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries().map_err(|e| e.to_string())? {
        let mut e = entry.map_err(|e| format!("reading an entry header: {e}"))?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let Some(path) = normalize(&raw) else {
            findings.push(Finding::new(
                Rule::UnsafeArchivePath,
                None,
                format!("layer entry {raw:?} climbs out of the image root; ignored"),
            ));
            continue;
        };
        if path == "/" {
            continue;
        }
        let h = e.header();
        let mode = h.mode().map_err(|err| format!("{raw}: {err}"))? & 0o7777;
        let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(u32::MAX);
        let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(u32::MAX);
        let kind = h.entry_type();
        let name = basename(&path);
        if name == OPAQUE {
            p.opaque.push(parent(&path).to_string());
            continue;
        }
        if name.starts_with(".wh..wh.") {
            continue; // aufs bookkeeping
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let dir = parent(&path);
            p.whiteouts.push(if dir == "/" { format!("/{hidden}") } else { format!("{dir}/{hidden}") });
            continue;
        }
        let link_name = || e.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let node = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let declared = e.size();
                let content = hash_reader(&mut e, declared, scratch, meter).map_err(|err| format!("{raw}: {err}"))?;
                // Sparse entries declare their stored size, not their length.
                if content.size != declared && kind != tar::EntryType::GNUSparse {
                    return Err(format!("{raw}: truncated ({} of {declared} bytes)", content.size));
                }
                Node { kind: NodeKind::File { content, hardlink_of: None }, mode, uid, gid }
            }
            tar::EntryType::Directory => Node { kind: NodeKind::Dir, mode, uid, gid },
            tar::EntryType::Symlink => Node { kind: NodeKind::Symlink(link_name()), mode, uid, gid },
            tar::EntryType::Link => {
                let target_raw = link_name();
                let Some(target) = normalize(&target_raw) else {
                    findings.push(Finding::new(
                        Rule::UnsafeArchivePath,
                        Some(path),
                        format!("hard link to {target_raw:?} climbs out of the image root; ignored"),
                    ));
                    continue;
                };
                let found = p.index.get(&target).map(|&i| &p.entries[i].1).or_else(|| tree.get(&target));
                match found {
                    Some(Node { kind: NodeKind::File { content, .. }, mode, uid, gid }) => {
                        Node { kind: NodeKind::File { content: *content, hardlink_of: Some(target) }, mode: *mode, uid: *uid, gid: *gid }
                    }
                    _ => {
                        findings.push(Finding::new(
                            Rule::Unscannable,
                            Some(path),
                            format!("hard link to {target}, which the image does not have"),
                        ));
                        continue;
                    }
                }
            }
            _ => Node { kind: NodeKind::Other, mode, uid, gid },
        };
        p.add(path, node);
    }
    Ok(p)
}
