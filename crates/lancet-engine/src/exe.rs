//! What an executable file asks the kernel to run with it: the ELF
//! interpreter (`PT_INTERP`, the dynamic loader) of a dynamically linked
//! program, or the interpreter named on a script's `#!` line.
//!
//! Protect mode needs this because fanotify's `FAN_OPEN_EXEC_PERM` reports
//! every file opened with exec intent, and an exec of a dynamic program
//! opens two: the program and its loader (`/lib64/ld-linux-x86-64.so.2`,
//! `/lib/ld-musl-x86_64.so.1`). A profile names the program only, so the
//! loader must be derived from the program's own bytes, read the way the
//! kernel reads them (`fs/binfmt_elf.c`, `fs/binfmt_script.c`).
//!
//! The files are the container's, so hostile: every length and count read
//! from them is bounded before anything is allocated or sought, and a
//! malformed file is an error, never a panic.

use std::io::{self, Read, Seek, SeekFrom};

/// Most program headers read. The kernel refuses more than fit in 64 KiB
/// (and a page on common configurations, ~73 ELF64 headers); real programs
/// have about a dozen.
pub const MAX_PROGRAM_HEADERS: u16 = 512;
/// Longest `PT_INTERP` segment accepted, NUL included (the kernel's
/// `PATH_MAX`).
pub const MAX_INTERP_BYTES: u64 = 4096;
/// Bytes of a file the kernel looks at for `#!` (`BINPRM_BUF_SIZE`): a
/// longer first line is cut here.
pub const BINPRM_BUF_SIZE: usize = 256;

const PT_INTERP: u32 = 3;

/// Why an ELF file's interpreter could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExeError {
    #[error("reading the file: {0}")]
    Io(#[from] io::Error),
    /// The file ends before a structure the header points at.
    #[error("truncated ELF file: the {0} runs past the end")]
    Truncated(&'static str),
    #[error("unknown ELF class {0} (1 is 32-bit, 2 is 64-bit)")]
    Class(u8),
    #[error("unknown ELF data encoding {0} (1 is little endian, 2 is big endian)")]
    Encoding(u8),
    /// The kernel refuses program headers of any other size.
    #[error("program header size {got}, expected {want}")]
    ProgramHeaderSize { got: u16, want: u16 },
    #[error("{0} program headers, at most {MAX_PROGRAM_HEADERS} are read")]
    TooManyProgramHeaders(u16),
    #[error("program headers at offset {0} lie outside any file")]
    ProgramHeaderOffset(u64),
    #[error("PT_INTERP of {0} bytes, at most {MAX_INTERP_BYTES} are accepted")]
    InterpreterTooLong(u64),
    #[error("PT_INTERP at offset {0} lies outside any file")]
    InterpreterOffset(u64),
    #[error("PT_INTERP is not NUL-terminated")]
    InterpreterNotTerminated,
    #[error("PT_INTERP is not valid UTF-8")]
    InterpreterNotUtf8,
    /// The kernel would resolve a relative one against the caller's working
    /// directory, which nothing reading the file can know.
    #[error("PT_INTERP {0:?} is not an absolute path")]
    InterpreterNotAbsolute(String),
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let x = [b[at], b[at + 1]];
        match self {
            Endian::Little => u16::from_le_bytes(x),
            Endian::Big => u16::from_be_bytes(x),
        }
    }
    fn u32(self, b: &[u8], at: usize) -> u32 {
        let x = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        match self {
            Endian::Little => u32::from_le_bytes(x),
            Endian::Big => u32::from_be_bytes(x),
        }
    }
    fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        match self {
            Endian::Little => u64::from_le_bytes(x),
            Endian::Big => u64::from_be_bytes(x),
        }
    }
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_exact_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8], what: &'static str) -> Result<(), ExeError> {
    r.seek(SeekFrom::Start(offset))?;
    if read_up_to(r, buf)? < buf.len() {
        return Err(ExeError::Truncated(what));
    }
    Ok(())
}

/// The `PT_INTERP` path of an ELF executable: the dynamic loader the kernel
/// opens (with exec intent) and runs in its place. `Ok(None)` for a file
/// that is not ELF (a script, data) and for an ELF file without one (a
/// static program, a static PIE, a shared library). Reads from the start of
/// `r` whatever its position.
///
/// Like the kernel, the first `PT_INTERP` counts. Its bytes must hold a NUL
/// (the path ends there), be UTF-8 and name an absolute path; anything else
/// is an error, as are truncated or inconsistent headers. At most
/// [`MAX_PROGRAM_HEADERS`] headers and [`MAX_INTERP_BYTES`] of path are read.
pub fn elf_interpreter<R: Read + Seek>(r: &mut R) -> Result<Option<String>, ExeError> {
    r.seek(SeekFrom::Start(0))?;
    // e_ident plus the rest of the largest (ELF64) header.
    let mut h = [0u8; 64];
    let n = read_up_to(r, &mut h)?;
    if n < 4 || h[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    if n < 6 {
        return Err(ExeError::Truncated("ELF identification"));
    }
    let wide = match h[4] {
        1 => false,
        2 => true,
        c => return Err(ExeError::Class(c)),
    };
    let e = match h[5] {
        1 => Endian::Little,
        2 => Endian::Big,
        d => return Err(ExeError::Encoding(d)),
    };
    let (header_len, phentsize_want) = if wide { (64, 56u16) } else { (52, 32u16) };
    if n < header_len {
        return Err(ExeError::Truncated("ELF header"));
    }
    // e_phoff, e_phentsize, e_phnum: after e_ident (16), e_type, e_machine,
    // e_version, e_entry.
    let (phoff, phentsize, phnum) =
        if wide { (e.u64(&h, 32), e.u16(&h, 54), e.u16(&h, 56)) } else { (u64::from(e.u32(&h, 28)), e.u16(&h, 42), e.u16(&h, 44)) };
    if phnum == 0 {
        return Ok(None);
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(ExeError::TooManyProgramHeaders(phnum));
    }
    if phentsize != phentsize_want {
        return Err(ExeError::ProgramHeaderSize { got: phentsize, want: phentsize_want });
    }
    let table_len = usize::from(phnum) * usize::from(phentsize);
    if phoff.checked_add(table_len as u64).is_none_or(|end| end > i64::MAX as u64) {
        return Err(ExeError::ProgramHeaderOffset(phoff));
    }
    // Bounded above: 512 × 56 bytes.
    let mut table = vec![0u8; table_len];
    read_exact_at(r, phoff, &mut table, "program header table")?;
    for ph in table.chunks_exact(usize::from(phentsize)) {
        if e.u32(ph, 0) != PT_INTERP {
            continue;
        }
        let (offset, filesz) = if wide { (e.u64(ph, 8), e.u64(ph, 32)) } else { (u64::from(e.u32(ph, 4)), u64::from(e.u32(ph, 16))) };
        if filesz > MAX_INTERP_BYTES {
            return Err(ExeError::InterpreterTooLong(filesz));
        }
        if offset.checked_add(filesz).is_none_or(|end| end > i64::MAX as u64) {
            return Err(ExeError::InterpreterOffset(offset));
        }
        // Bounded above by MAX_INTERP_BYTES.
        let mut raw = vec![0u8; filesz as usize];
        read_exact_at(r, offset, &mut raw, "PT_INTERP segment")?;
        let nul = raw.iter().position(|&b| b == 0).ok_or(ExeError::InterpreterNotTerminated)?;
        raw.truncate(nul);
        let path = String::from_utf8(raw).map_err(|_| ExeError::InterpreterNotUtf8)?;
        if !path.starts_with('/') {
            return Err(ExeError::InterpreterNotAbsolute(path));
        }
        return Ok(Some(path));
    }
    Ok(None)
}

/// A script's `#!` line as the kernel splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shebang {
    /// The program the kernel runs (as written: usually absolute, but the
    /// kernel also accepts a relative one, resolved against the caller's
    /// working directory).
    pub interpreter: String,
    /// Everything after the interpreter, as one argument (`#!/usr/bin/env
    /// -S a b` gives `-S a b`). Bytes that are not UTF-8 are replaced; the
    /// argument is reported, never resolved.
    pub arg: Option<String>,
}

fn spacetab(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Where the interpreter's name (or its argument) ends.
fn terminator(b: u8) -> bool {
    spacetab(b) || b == 0
}

/// The first index in `from..=to` (the kernel's inclusive scans) whose byte
/// satisfies `f`.
fn find(buf: &[u8], from: usize, to: usize, f: impl Fn(u8) -> bool) -> Option<usize> {
    (from..=to).find(|&i| f(buf[i]))
}

/// `#!` line of a script: the interpreter the kernel would run, with its
/// optional argument, following Linux's `binfmt_script`: only the first
/// [`BINPRM_BUF_SIZE`] bytes count; the line ends at a newline (or, if none
/// comes before a NUL or the end of those bytes, at the end of the buffer,
/// provided the interpreter's name visibly ends inside it, else the kernel
/// refuses the exec as truncated); spaces and tabs around the interpreter
/// are skipped; the interpreter ends at the first space, tab or NUL; the
/// rest, trailing blanks trimmed, is one argument.
///
/// `None`: not a script, or a `#!` line the kernel refuses (no interpreter,
/// or an interpreter cut by the buffer), or an interpreter name that is not
/// UTF-8 (it could not name a file a profile lists).
pub fn shebang(head: &[u8]) -> Option<Shebang> {
    // The kernel's buffer: the file's first bytes, zero-filled after.
    let mut buf = [0u8; BINPRM_BUF_SIZE];
    let n = head.len().min(BINPRM_BUF_SIZE);
    buf[..n].copy_from_slice(&head[..n]);
    if buf[0] != b'#' || buf[1] != b'!' {
        return None;
    }
    let last = BINPRM_BUF_SIZE - 1;
    // strnchr: a newline before the first NUL.
    let newline = buf.iter().take_while(|&&b| b != 0).position(|&b| b == b'\n');
    let mut end = match newline {
        Some(i) => i,
        None => {
            let start = find(&buf, 2, last, |b| !spacetab(b))?;
            // No visible end of the interpreter's name: it may be cut.
            find(&buf, start, last, terminator)?;
            last
        }
    };
    while spacetab(buf[end - 1]) {
        end -= 1;
    }
    buf[end] = 0;
    let name = find(&buf, 2, end, |b| !spacetab(b))?;
    if name == end {
        return None;
    }
    let sep = find(&buf, name, end, terminator)?;
    if sep == name {
        // An empty name (a NUL right after the blanks): the exec fails.
        return None;
    }
    let interpreter = std::str::from_utf8(&buf[name..sep]).ok()?.to_string();
    let arg = if buf[sep] != 0 {
        find(&buf, sep, end, |b| !spacetab(b)).map(|a| {
            let len = buf[a..].iter().position(|&b| b == 0).unwrap_or(buf.len() - a);
            String::from_utf8_lossy(&buf[a..a + len]).into_owned()
        })
    } else {
        None
    };
    Some(Shebang { interpreter, arg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// A minimal ELF file: header, `phdrs` (p_type, p_offset, p_filesz)
    /// right after it, then `tail` at the offset the caller computed.
    fn elf(wide: bool, big: bool, phdrs: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let (hlen, phlen) = if wide { (64usize, 56usize) } else { (52, 32) };
        let mut b = vec![0u8; hlen + phdrs.len() * phlen];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = if wide { 2 } else { 1 };
        b[5] = if big { 2 } else { 1 };
        b[6] = 1;
        let put = |b: &mut Vec<u8>, at: usize, v: u64, len: usize| {
            let bytes = v.to_le_bytes();
            for i in 0..len {
                b[at + i] = if big { bytes[len - 1 - i] } else { bytes[i] };
            }
        };
        put(&mut b, 16, 2, 2); // ET_EXEC
        if wide {
            put(&mut b, 32, hlen as u64, 8);
            put(&mut b, 52, hlen as u64, 2);
            put(&mut b, 54, phlen as u64, 2);
            put(&mut b, 56, phdrs.len() as u64, 2);
        } else {
            put(&mut b, 28, hlen as u64, 4);
            put(&mut b, 40, hlen as u64, 2);
            put(&mut b, 42, phlen as u64, 2);
            put(&mut b, 44, phdrs.len() as u64, 2);
        }
        for (i, &(ty, off, sz)) in phdrs.iter().enumerate() {
            let at = hlen + i * phlen;
            put(&mut b, at, u64::from(ty), 4);
            if wide {
                put(&mut b, at + 8, off, 8);
                put(&mut b, at + 32, sz, 8);
            } else {
                put(&mut b, at + 4, off, 4);
                put(&mut b, at + 16, sz, 4);
            }
        }
        b.extend_from_slice(tail);
        b
    }

    /// An executable with PT_LOAD, PT_INTERP (pointing at `interp`) and
    /// PT_DYNAMIC, in every class and byte order.
    fn with_interp(wide: bool, big: bool, interp: &[u8]) -> Vec<u8> {
        let (hlen, phlen) = if wide { (64u64, 56u64) } else { (52, 32) };
        let at = hlen + 3 * phlen;
        elf(wide, big, &[(1, 0, 0), (PT_INTERP, at, interp.len() as u64), (2, 0, 0)], interp)
    }

    fn interp(bytes: &[u8]) -> Result<Option<String>, ExeError> {
        elf_interpreter(&mut Cursor::new(bytes))
    }

    #[test]
    fn every_class_and_byte_order() {
        for wide in [false, true] {
            for big in [false, true] {
                let b = with_interp(wide, big, b"/lib/ld-musl-x86_64.so.1\0");
                assert_eq!(interp(&b).unwrap().as_deref(), Some("/lib/ld-musl-x86_64.so.1"), "wide={wide} big={big}");
                // No PT_INTERP: a static program.
                let s = elf(wide, big, &[(1, 0, 0), (2, 0, 0)], &[]);
                assert_eq!(interp(&s).unwrap(), None, "wide={wide} big={big}");
                // No program headers at all (an object file).
                assert_eq!(interp(&elf(wide, big, &[], &[])).unwrap(), None);
            }
        }
    }

    #[test]
    fn the_first_interp_counts_and_the_position_does_not_matter() {
        let hlen = 64u64 + 2 * 56;
        let tail = b"/first\0/second\0";
        let b = elf(true, false, &[(PT_INTERP, hlen, 7), (PT_INTERP, hlen + 7, 8)], tail);
        let mut c = Cursor::new(b);
        c.set_position(40);
        assert_eq!(elf_interpreter(&mut c).unwrap().as_deref(), Some("/first"));
        // The path ends at the first NUL, even with bytes after it.
        assert_eq!(interp(&with_interp(true, false, b"/ld.so\0junk\0")).unwrap().as_deref(), Some("/ld.so"));
    }

    #[test]
    fn not_elf_is_none() {
        for b in [&b""[..], b"\x7fEL", b"#!/bin/sh\n", b"MZ\x90\0", b"\x7fELX\x02\x01"] {
            assert_eq!(interp(b).unwrap(), None, "{b:?}");
        }
    }

    /// `b` with `bytes` written at `at`.
    fn patched(b: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = b.to_vec();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn malformed_is_an_error() {
        let good = with_interp(true, false, b"/ld\0");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x7fELF\x02".to_vec(), "truncated"),
            (good[..40].to_vec(), "truncated"),
            (good[..100].to_vec(), "truncated"),
            (good[..good.len() - 2].to_vec(), "truncated"),
            (patched(&good, 4, &[3]), "class"),
            (patched(&good, 5, &[0]), "encoding"),
            (patched(&good, 54, &[55]), "size"),
            (patched(&good, 56, &[0xff, 0xff]), "program headers"),
            (patched(&good, 32, &u64::MAX.to_le_bytes()), "outside"),
            (patched(&good, 32, &(1u64 << 40).to_le_bytes()), "truncated"),
            (with_interp(true, false, b"/ld"), "NUL"),
            (with_interp(true, false, b""), "NUL"),
            (with_interp(true, false, b"\0"), "absolute"),
            (with_interp(true, false, b"lib/ld.so\0"), "absolute"),
            (with_interp(true, false, b"/\xff\xfe\0"), "UTF-8"),
            (with_interp(false, true, &[b'/'; 5000]), "at most"),
        ];
        for (b, want) in cases {
            let e = interp(&b).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // A PT_INTERP pointing past u64 or far out of the file.
        let mut b = with_interp(true, false, b"/ld\0");
        let ph = 64 + 56;
        b[ph + 8..ph + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(interp(&b), Err(ExeError::InterpreterOffset(_))));
        b[ph + 8..ph + 16].copy_from_slice(&(1u64 << 50).to_le_bytes());
        assert!(matches!(interp(&b), Err(ExeError::Truncated(_))));
    }

    #[test]
    fn real_programs_on_this_host() {
        // glibc's /bin/true names the loader.
        let mut t = std::io::BufReader::new(std::fs::File::open("/bin/true").expect("/bin/true"));
        let loader = elf_interpreter(&mut t).expect("parse /bin/true").expect("a dynamic program");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(loader, "/lib64/ld-linux-x86-64.so.2");
        assert!(loader.starts_with('/'));
        // busybox-static names none (installed by scripts/setup.sh).
        match std::fs::File::open("/bin/busybox") {
            Ok(f) => assert_eq!(elf_interpreter(&mut std::io::BufReader::new(f)).expect("parse busybox"), None),
            Err(e) => eprintln!("skipping /bin/busybox: {e}"),
        }
    }

    #[test]
    fn shebang_lines() {
        let sb = |i: &str, a: Option<&str>| Some(Shebang { interpreter: i.into(), arg: a.map(Into::into) });
        let cases: Vec<(&[u8], Option<Shebang>)> = vec![
            (b"#!/bin/sh\necho hi\n", sb("/bin/sh", None)),
            (b"#! /bin/sh -e\n", sb("/bin/sh", Some("-e"))),
            (b"#!\t/usr/bin/env  python3 -u \t\r\n", sb("/usr/bin/env", Some("python3 -u \t\r"))),
            (b"#!/usr/bin/env -S a b\n", sb("/usr/bin/env", Some("-S a b"))),
            (b"#!/bin/sh   \n", sb("/bin/sh", None)),
            (b"#!/bin/sh", sb("/bin/sh", None)),
            (b"#!sh\n", sb("sh", None)),
            (b"#!/bin/sh\0-x\n", sb("/bin/sh", None)),
            (b"#!/bin/sh -x\0y\n", sb("/bin/sh", Some("-x"))),
            (b"#!\n/bin/sh\n", None),
            (b"#!   \t\n", None),
            (b"#!", None),
            (b"#!\0/bin/sh\n", None),
            (b"# !/bin/sh\n", None),
            (b"\n#!/bin/sh\n", None),
            (b"\x7fELF", None),
            (b"", None),
            (b"#!/bin/\xff\n", None),
            (b"#!/bin/sh \xff\n", sb("/bin/sh", Some("\u{fffd}"))),
        ];
        for (head, want) in cases {
            assert_eq!(shebang(head), want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn shebang_looks_at_the_first_256_bytes_only() {
        // The argument is cut at the buffer's end.
        let mut line = b"#!/bin/sh ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 400));
        line.push(b'\n');
        let s = shebang(&line).unwrap();
        assert_eq!(s.interpreter, "/bin/sh");
        assert_eq!(s.arg.unwrap().len(), BINPRM_BUF_SIZE - 1 - 10);
        // An interpreter whose name does not end inside the buffer is refused.
        let mut long = b"#!/".to_vec();
        long.extend(std::iter::repeat_n(b'x', 300));
        assert_eq!(shebang(&long), None);
        // Blanks up to the end of the buffer: no interpreter.
        let mut blank = b"#!".to_vec();
        blank.extend(std::iter::repeat_n(b' ', 300));
        assert_eq!(shebang(&blank), None);
        // A name that ends exactly at the buffer's last byte is kept whole
        // only when a terminator follows it inside the buffer.
        let mut edge = b"#!/".to_vec();
        edge.extend(std::iter::repeat_n(b'y', BINPRM_BUF_SIZE - 4));
        edge.push(b' ');
        assert_eq!(shebang(&edge).map(|s| s.interpreter.len()), Some(BINPRM_BUF_SIZE - 3));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = interp(&bytes);
            let _ = shebang(&bytes);
        }

        #[test]
        fn arbitrary_elf_headers_never_panic(
            wide in any::<bool>(),
            big in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let mut b = b"\x7fELF".to_vec();
            b.push(if wide { 2 } else { 1 });
            b.push(if big { 2 } else { 1 });
            b.extend(body);
            let _ = interp(&b);
        }

        #[test]
        fn mutated_elf_files_never_panic(
            wide in any::<bool>(),
            big in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        ) {
            let mut b = with_interp(wide, big, b"/lib/ld-linux.so.2\0");
            for (at, v) in flips {
                let i = at.index(b.len());
                b[i] = v;
            }
            if let Ok(Some(p)) = interp(&b) {
                prop_assert!(p.starts_with('/') && p.len() < MAX_INTERP_BYTES as usize && !p.contains('\0'));
            }
        }

        #[test]
        fn the_interpreter_has_no_blank_or_nul(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut head = b"#!".to_vec();
            head.extend(bytes);
            if let Some(s) = shebang(&head) {
                prop_assert!(!s.interpreter.is_empty());
                prop_assert!(!s.interpreter.bytes().any(|b| b == b' ' || b == b'\t' || b == 0 || b == b'\n'));
                if let Some(a) = s.arg {
                    prop_assert!(!a.contains('\0') && !a.contains('\n') && !a.starts_with([' ', '\t']));
                }
            }
        }
    }

    /// The host's real headers, mutated: still no panic.
    #[test]
    fn mutated_real_headers_never_panic() {
        let Ok(real) = std::fs::read("/bin/true") else { return };
        let head = &real[..real.len().min(4096)];
        proptest!(ProptestConfig::with_cases(256), |(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8))| {
            let mut b = head.to_vec();
            for (at, v) in flips {
                // Headers live in the first few hundred bytes.
                let i = at.index(b.len().min(1024));
                b[i] = v;
            }
            let _ = interp(&b);
        });
    }
}
