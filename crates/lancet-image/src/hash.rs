//! Content hashing while the bytes stream past: SHA-256 of every regular
//! file plus what the findings need from its content (ELF magic, PEM
//! headers of small files), so each file is read exactly once.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::sync::Arc;

/// Files up to this size keep their content while hashing, for the PEM
/// sniff; keys and credential files are far smaller.
pub const SNIFF_MAX: u64 = 64 * 1024;
/// Read buffer per hashing thread: large enough that syscalls and hasher
/// calls are amortised, small enough to stay in L2.
pub const BUF_SIZE: usize = 256 * 1024;

/// What a PEM sniff found in a small file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pem {
    #[default]
    None,
    /// A `-----BEGIN … PRIVATE KEY-----` block.
    PrivateKey,
    /// Some other PEM block (a certificate, a public key).
    Other,
}

/// A regular file's content as the scan keeps it: hash and sniff results,
/// never the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    pub sha256: [u8; 32],
    pub size: u64,
    pub elf: bool,
    pub pem: Pem,
}

/// Counts hashed bytes for a progress display; cheap to clone and to call
/// from many threads.
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<dyn Fn(u64) + Send + Sync>>);

impl Meter {
    pub fn new(f: Option<Arc<dyn Fn(u64) + Send + Sync>>) -> Meter {
        Meter(f)
    }

    pub fn add(&self, n: u64) {
        if let Some(f) = &self.0 {
            f(n);
        }
    }
}

/// Reusable buffers for [`hash_reader`]; one per thread.
pub struct Scratch {
    buf: Vec<u8>,
    small: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch { buf: vec![0; BUF_SIZE], small: Vec::new() }
    }
}

/// Hashes `r` to its end. `expected` is the size the caller was told (tar
/// header, lstat); files that claim to be small keep their bytes for the
/// sniff. The returned size is what was actually read.
pub fn hash_reader(r: &mut dyn Read, expected: u64, scratch: &mut Scratch, meter: &Meter) -> io::Result<Content> {
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut head = [0u8; 4];
    let keep = expected <= SNIFF_MAX;
    scratch.small.clear();
    loop {
        let n = match r.read(&mut scratch.buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &scratch.buf[..n];
        if size < 4 {
            let at = size as usize;
            let take = (4 - at).min(n);
            head[at..at + take].copy_from_slice(&chunk[..take]);
        }
        if keep && (scratch.small.len() as u64) + (n as u64) <= SNIFF_MAX {
            scratch.small.extend_from_slice(chunk);
        }
        h.update(chunk);
        size += n as u64;
        meter.add(n as u64);
    }
    let pem = if keep && size <= SNIFF_MAX { sniff_pem(&scratch.small) } else { Pem::None };
    Ok(Content { sha256: h.finalize().into(), size, elf: size >= 4 && head == *b"\x7fELF", pem })
}

/// Finds PEM armour: `-----BEGIN <label>-----` on one line.
pub fn sniff_pem(data: &[u8]) -> Pem {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut found = Pem::None;
    let mut rest = data;
    while let Some(i) = find(rest, BEGIN) {
        let after = &rest[i + BEGIN.len()..];
        let line_end = after.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(after.len());
        let label = &after[..line_end.min(80)];
        if let Some(label) = label.strip_suffix(b"-----") {
            if label.ends_with(b"PRIVATE KEY") {
                return Pem::PrivateKey;
            }
            found = Pem::Other;
        }
        rest = after;
    }
    found
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// `sha256:<hex>` of a byte string.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// A reader that hashes what passes through it, for checking a blob or a
/// layer against the digest that names it while it streams.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new() }
    }

    /// `sha256:<hex>` of everything read so far.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_sniffs_in_one_pass() {
        let key = b"junk\n-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        let mut s = Scratch::default();
        let c = hash_reader(&mut &key[..], key.len() as u64, &mut s, &Meter::default()).expect("hash");
        assert_eq!(c.pem, Pem::PrivateKey);
        assert_eq!(c.size, key.len() as u64);
        assert_eq!(format!("sha256:{}", hex(&c.sha256)), digest_of(key));
        let cert = b"-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n";
        assert_eq!(sniff_pem(cert), Pem::Other);
        assert_eq!(sniff_pem(b"-----BEGIN PRIVATE KEY"), Pem::None, "an unterminated label is no block");
        let elf = b"\x7fELF\x02\x01";
        assert!(hash_reader(&mut &elf[..], 6, &mut s, &Meter::default()).expect("hash").elf);
        assert!(!hash_reader(&mut &b"\x7fEL"[..], 3, &mut s, &Meter::default()).expect("hash").elf);
    }

    #[test]
    fn large_files_are_not_sniffed() {
        let mut big = vec![b'x'; SNIFF_MAX as usize + 10];
        big[..31].copy_from_slice(b"-----BEGIN RSA PRIVATE KEY-----");
        let c = hash_reader(&mut &big[..], big.len() as u64, &mut Scratch::default(), &Meter::default()).expect("hash");
        assert_eq!(c.pem, Pem::None);
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
