//! Reading a root filesystem directory: one thread walks it without
//! following symlinks (`lstat` only), a small pool of threads hashes the
//! regular files, each streaming through a fixed buffer.
//!
//! Files are opened with `O_NOFOLLOW | O_NONBLOCK` and checked against what
//! the walk saw, so a file swapped for a symlink or a FIFO between the walk
//! and the read is reported, never followed or waited on. Other filesystems
//! mounted inside the root (a `/proc` in a bundle's rootfs) are not entered.

use crate::error::{io_ctx, ScanError};
use crate::findings::{Finding, Rule};
use crate::hash::{hash_reader, Content, Meter, Scratch};
use crate::tree::{Node, NodeKind, Tree};
use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

struct Job {
    host: PathBuf,
    image: String,
    dev: u64,
    ino: u64,
}

type Hashed = (String, Result<Content, String>);

/// Reads the tree under `root`. Problems with single entries become
/// findings; only an unreadable root is an error.
pub fn read(root: &Path, threads: usize, meter: &Meter, findings: &mut Vec<Finding>) -> Result<Tree, ScanError> {
    // The root itself may be a symlink the user named (a mount point
    // path); nothing below it is followed.
    let meta = fs::metadata(root).map_err(io_ctx(root.display()))?;
    if !meta.is_dir() {
        return Err(ScanError::Target { target: root.display().to_string(), message: "not a directory".into() });
    }
    let threads = threads.max(1);
    let (tx, rx) = mpsc::sync_channel::<Job>(threads * 64);
    let rx = Arc::new(Mutex::new(rx));
    let mut tree = Tree::default();
    let mut hardlinks: Vec<(String, String)> = Vec::new();
    let mut metas: HashMap<String, Node> = HashMap::new();
    let hashed: Vec<Hashed> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                let meter = meter.clone();
                s.spawn(move || worker(&rx, &meter))
            })
            .collect();
        let walked = walk(root, meta.dev(), &tx, &mut tree, &mut metas, &mut hardlinks, findings);
        drop(tx);
        let mut out = Vec::new();
        for w in workers {
            match w.join() {
                Ok(v) => out.extend(v),
                Err(_) => findings.push(Finding::new(Rule::Unscannable, None, "a hashing thread panicked; files it held are missing")),
            }
        }
        walked.map(|()| out)
    })?;
    for (image, res) in hashed {
        let Some(mut node) = metas.remove(&image) else { continue };
        match res {
            Ok(content) => {
                node.kind = NodeKind::File { content, hardlink_of: None };
                tree.insert(image, node);
            }
            Err(e) => findings.push(Finding::new(Rule::Unscannable, Some(image), format!("not read: {e}"))),
        }
    }
    // Which name of a hard-linked file the walk met first depends on
    // directory order; the smallest path becomes the one the others link
    // to, so reports do not depend on it.
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for (image, first) in hardlinks {
        groups.entry(first).or_default().push(image);
    }
    for (first, others) in groups {
        let Some(Node { kind: NodeKind::File { content, .. }, .. }) = tree.get(&first) else { continue };
        let content = *content;
        let canonical = others.iter().chain(std::iter::once(&first)).min().cloned().unwrap_or_else(|| first.clone());
        for name in others.into_iter().chain(std::iter::once(first)) {
            let node = if let Some(n) = metas.remove(&name) {
                n
            } else if let Some(n) = tree.get(&name) {
                n.clone()
            } else {
                continue;
            };
            let link = (name != canonical).then(|| canonical.clone());
            tree.insert(name, Node { kind: NodeKind::File { content, hardlink_of: link }, ..node });
        }
    }
    Ok(tree)
}

fn worker(rx: &Mutex<Receiver<Job>>, meter: &Meter) -> Vec<Hashed> {
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(r) => match r.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
            Err(_) => break,
        };
        let res = hash_file(&job, &mut scratch, meter);
        out.push((job.image, res));
    }
    out
}

fn hash_file(job: &Job, scratch: &mut Scratch, meter: &Meter) -> Result<Content, String> {
    let mut f: File =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&job.host).map_err(|e| e.to_string())?;
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.is_file() || m.dev() != job.dev || m.ino() != job.ino {
        return Err("changed while it was scanned".into());
    }
    hash_reader(&mut f, m.len(), scratch, meter).map_err(|e| e.to_string())
}

fn node_meta(m: &Metadata, kind: NodeKind) -> Node {
    Node { kind, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() }
}

#[allow(clippy::too_many_arguments)]
fn walk(
    root: &Path,
    root_dev: u64,
    tx: &SyncSender<Job>,
    tree: &mut Tree,
    metas: &mut HashMap<String, Node>,
    hardlinks: &mut Vec<(String, String)>,
    findings: &mut Vec<Finding>,
) -> Result<(), ScanError> {
    let mut seen_inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, image_dir)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if image_dir.is_empty() => return Err(io_ctx(root.display())(e)),
            Err(e) => {
                findings.push(Finding::new(Rule::Unscannable, Some(image_dir), format!("directory not read: {e}")));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    findings.push(Finding::new(Rule::Unscannable, Some(display_dir(&image_dir)), format!("listing failed: {e}")));
                    break;
                }
            };
            let name = entry.file_name();
            let image = format!("{image_dir}/{}", name.to_string_lossy());
            let host = entry.path();
            // DirEntry::metadata does not follow symlinks.
            let m = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    findings.push(Finding::new(Rule::Unscannable, Some(image), format!("not read: {e}")));
                    continue;
                }
            };
            let ft = m.file_type();
            if ft.is_dir() {
                tree.insert(image.clone(), node_meta(&m, NodeKind::Dir));
                if m.dev() != root_dev {
                    findings.push(Finding::new(Rule::Unscannable, Some(image), "another filesystem is mounted here; not scanned"));
                } else {
                    stack.push((host, image));
                }
            } else if ft.is_symlink() {
                match fs::read_link(&host) {
                    Ok(t) => tree.insert(image, node_meta(&m, NodeKind::Symlink(t.to_string_lossy().into_owned()))),
                    Err(e) => findings.push(Finding::new(Rule::Unscannable, Some(image), format!("symlink not read: {e}"))),
                }
            } else if ft.is_file() {
                metas.insert(image.clone(), node_meta(&m, NodeKind::Other));
                if m.nlink() > 1 {
                    if let Some(first) = seen_inodes.get(&(m.dev(), m.ino())) {
                        hardlinks.push((image, first.clone()));
                        continue;
                    }
                    seen_inodes.insert((m.dev(), m.ino()), image.clone());
                }
                let job = Job { host, image, dev: m.dev(), ino: m.ino() };
                if tx.send(job).is_err() {
                    return Err(ScanError::format(root.display(), "every hashing thread stopped"));
                }
            } else {
                tree.insert(image, node_meta(&m, NodeKind::Other));
            }
        }
    }
    Ok(())
}

fn display_dir(d: &str) -> String {
    if d.is_empty() {
        "/".into()
    } else {
        d.to_string()
    }
}
