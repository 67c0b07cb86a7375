//! Bounds-checked parsing of the buffers `read(2)` returns on a fanotify fd.
//!
//! Nothing here trusts a length the kernel wrote: every `event_len`,
//! `metadata_len`, info-record `len` and `handle_bytes` is checked against the
//! bytes actually present before it is used. Parsing is pure (no syscalls), so
//! it is unit-tested with hand-built buffers.

/// `sizeof(struct fanotify_event_metadata)`.
pub(crate) const METADATA_LEN: usize = 24;
/// `sizeof(struct fanotify_event_info_header)`.
const INFO_HDR_LEN: usize = 4;
/// Header + `__kernel_fsid_t` + `struct file_handle` without `f_handle`.
const FID_FIXED_LEN: usize = INFO_HDR_LEN + 8 + 8;

/// A file identifier record (`FAN_EVENT_INFO_TYPE_{FID,DFID,DFID_NAME,
/// OLD_DFID_NAME,NEW_DFID_NAME}`), borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FidRecord<'a> {
    pub fsid: [i32; 2],
    pub handle_type: i32,
    pub handle: &'a [u8],
    /// The entry name for the `*DFID_NAME` types (without the NUL).
    pub name: Option<&'a [u8]>,
}

/// One event as the kernel laid it out, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawEvent<'a> {
    pub mask: u64,
    /// An open fd (classic mode) or `FAN_NOFD` (-1) in fid mode / overflow.
    pub fd: i32,
    pub pid: i32,
    /// `FAN_EVENT_INFO_TYPE_DFID_NAME` or `FAN_EVENT_INFO_TYPE_DFID`.
    pub dfid_name: Option<FidRecord<'a>>,
    pub old_dfid_name: Option<FidRecord<'a>>,
    pub new_dfid_name: Option<FidRecord<'a>>,
    /// `FAN_EVENT_INFO_TYPE_FID`: the object itself.
    pub fid: Option<FidRecord<'a>>,
    /// Info records that were skipped (unknown type or malformed body).
    pub skipped_infos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("truncated event at offset {offset}: {have} bytes left, need {need}")]
    Truncated { offset: usize, have: usize, need: usize },
    #[error("bad event header at offset {offset}: event_len {event_len}, metadata_len {metadata_len}")]
    BadLengths { offset: usize, event_len: usize, metadata_len: usize },
    #[error("unsupported fanotify metadata version {0}")]
    Version(u8),
}

use lancet_engine::bytes::{i32_ne, u16_ne, u32_ne, u64_ne};

/// The events in one read buffer, one at a time, each built in place and
/// lent (an event is some 200 bytes: returned by value, as an `Iterator`
/// item, it was copied with `memcpy` per event, a twentieth of the agent's
/// CPU on a stream of file events). After the first error it
/// stops: once a length is wrong nothing after it can be located.
pub(crate) struct EventIter<'a> {
    buf: &'a [u8],
    off: usize,
    failed: bool,
    current: RawEvent<'a>,
}

pub(crate) fn events(buf: &[u8]) -> EventIter<'_> {
    EventIter { buf, off: 0, failed: false, current: RawEvent::default() }
}

impl<'a> EventIter<'a> {
    /// The next event, or why the rest of the buffer cannot be read.
    pub(crate) fn next_event(&mut self) -> Option<Result<&RawEvent<'a>, ParseError>> {
        if self.failed || self.off >= self.buf.len() {
            return None;
        }
        match parse_into(self.buf, self.off, &mut self.current) {
            Ok(len) => {
                self.off += len;
                Some(Ok(&self.current))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Parses the event at `off` into `ev`; its length.
fn parse_into<'a>(buf: &'a [u8], off: usize, ev: &mut RawEvent<'a>) -> Result<usize, ParseError> {
    let rest = &buf[off..];
    if rest.len() < METADATA_LEN {
        return Err(ParseError::Truncated { offset: off, have: rest.len(), need: METADATA_LEN });
    }
    // Lengths checked above: all the fixed-offset reads below are in bounds,
    // but go through the checked helpers anyway.
    let event_len = u32_ne(rest, 0).unwrap_or(0) as usize;
    let vers = rest[4];
    let metadata_len = u16_ne(rest, 6).unwrap_or(0) as usize;
    if vers != libc::FANOTIFY_METADATA_VERSION {
        return Err(ParseError::Version(vers));
    }
    if metadata_len < METADATA_LEN || event_len < metadata_len {
        return Err(ParseError::BadLengths { offset: off, event_len, metadata_len });
    }
    if event_len > rest.len() {
        return Err(ParseError::Truncated { offset: off, have: rest.len(), need: event_len });
    }
    ev.mask = u64_ne(rest, 8).unwrap_or(0);
    ev.fd = i32_ne(rest, 16).unwrap_or(-1);
    ev.pid = i32_ne(rest, 20).unwrap_or(0);
    (ev.dfid_name, ev.old_dfid_name, ev.new_dfid_name, ev.fid, ev.skipped_infos) = (None, None, None, None, 0);
    let mut infos = &rest[metadata_len..event_len];
    while !infos.is_empty() {
        if infos.len() < INFO_HDR_LEN {
            ev.skipped_infos += 1;
            break;
        }
        let info_type = infos[0];
        let len = u16_ne(infos, 2).unwrap_or(0) as usize;
        if len < INFO_HDR_LEN || len > infos.len() {
            // Can't find the next record; keep what we have.
            ev.skipped_infos += 1;
            break;
        }
        let rec = &infos[..len];
        infos = &infos[len..];
        let with_name = matches!(
            info_type,
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
        );
        let slot = match info_type {
            libc::FAN_EVENT_INFO_TYPE_FID => &mut ev.fid,
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_DFID => &mut ev.dfid_name,
            libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => &mut ev.old_dfid_name,
            libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => &mut ev.new_dfid_name,
            _ => {
                ev.skipped_infos += 1;
                continue;
            }
        };
        match parse_fid(rec, with_name) {
            Some(f) => *slot = Some(f),
            None => ev.skipped_infos += 1,
        }
    }
    Ok(event_len)
}

/// Parse one fid-type record (`rec` spans exactly the record's `len`).
fn parse_fid(rec: &[u8], with_name: bool) -> Option<FidRecord<'_>> {
    if rec.len() < FID_FIXED_LEN {
        return None;
    }
    let fsid = [i32_ne(rec, 4)?, i32_ne(rec, 8)?];
    let handle_bytes = u32_ne(rec, 12)? as usize;
    let handle_type = i32_ne(rec, 16)?;
    let handle_end = FID_FIXED_LEN.checked_add(handle_bytes)?;
    let handle = rec.get(FID_FIXED_LEN..handle_end)?;
    if handle.is_empty() {
        return None;
    }
    let name = if with_name {
        let tail = rec.get(handle_end..)?;
        let nul = tail.iter().position(|&b| b == 0)?;
        Some(&tail[..nul])
    } else {
        None
    };
    Some(FidRecord { fsid, handle_type, handle, name })
}

/// Test helpers for building kernel-shaped buffers.
#[cfg(test)]
pub(crate) mod build {
    /// One info record of a fid type; `name` adds a NUL-terminated name.
    pub fn fid_info(info_type: u8, fsid: [i32; 2], handle_type: i32, handle: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid[0].to_ne_bytes());
        body.extend_from_slice(&fsid[1].to_ne_bytes());
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&handle_type.to_ne_bytes());
        body.extend_from_slice(handle);
        if let Some(n) = name {
            body.extend_from_slice(n.as_bytes());
            body.push(0);
        }
        raw_info(info_type, &body)
    }

    /// Any info record, padded to 4 bytes like the kernel does.
    pub fn raw_info(info_type: u8, body: &[u8]) -> Vec<u8> {
        let mut len = 4 + body.len();
        len = (len + 3) & !3;
        let mut v = vec![info_type, 0];
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(body);
        v.resize(len, 0);
        v
    }

    pub fn event(mask: u64, fd: i32, pid: i32, infos: &[Vec<u8>]) -> Vec<u8> {
        let info_len: usize = infos.iter().map(Vec::len).sum();
        let mut v = Vec::new();
        v.extend_from_slice(&((super::METADATA_LEN + info_len) as u32).to_ne_bytes());
        v.push(libc::FANOTIFY_METADATA_VERSION);
        v.push(0);
        v.extend_from_slice(&(super::METADATA_LEN as u16).to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&fd.to_ne_bytes());
        v.extend_from_slice(&pid.to_ne_bytes());
        for i in infos {
            v.extend_from_slice(i);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn collect(buf: &[u8]) -> Vec<Result<RawEvent<'_>, ParseError>> {
        let mut out = Vec::new();
        let mut it = events(buf);
        while let Some(r) = it.next_event() {
            out.push(r.copied());
        }
        out
    }

    #[test]
    fn parses_dfid_name_and_fid() {
        let buf = event(
            libc::FAN_CREATE | libc::FAN_ONDIR,
            libc::FAN_NOFD,
            42,
            &[
                fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [1, 2], 1, &[9; 8], Some("hello.txt")),
                fid_info(libc::FAN_EVENT_INFO_TYPE_FID, [1, 2], 1, &[7; 8], None),
            ],
        );
        let evs = collect(&buf);
        assert_eq!(evs.len(), 1);
        let e = evs[0].unwrap();
        assert_eq!(e.mask, libc::FAN_CREATE | libc::FAN_ONDIR);
        assert_eq!(e.pid, 42);
        assert_eq!(e.fd, -1);
        let d = e.dfid_name.unwrap();
        assert_eq!(d.fsid, [1, 2]);
        assert_eq!(d.handle, &[9; 8]);
        assert_eq!(d.name, Some(&b"hello.txt"[..]));
        assert_eq!(e.fid.unwrap().handle, &[7; 8]);
        assert_eq!(e.fid.unwrap().name, None);
        assert_eq!(e.skipped_infos, 0);
    }

    #[test]
    fn parses_rename_records_and_several_events() {
        let mut buf = event(
            libc::FAN_RENAME,
            -1,
            7,
            &[
                fid_info(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, [3, 4], 1, &[1; 12], Some("a")),
                fid_info(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, [3, 4], 1, &[2; 12], Some("bb")),
            ],
        );
        buf.extend(event(libc::FAN_DELETE, -1, 8, &[fid_info(2, [3, 4], 1, &[1; 12], Some("c"))]));
        let evs = collect(&buf);
        assert_eq!(evs.len(), 2);
        let r = evs[0].unwrap();
        assert_eq!(r.old_dfid_name.unwrap().name, Some(&b"a"[..]));
        assert_eq!(r.new_dfid_name.unwrap().name, Some(&b"bb"[..]));
        assert_eq!(r.new_dfid_name.unwrap().handle, &[2; 12]);
        assert_eq!(evs[1].unwrap().dfid_name.unwrap().name, Some(&b"c"[..]));
        assert_eq!(evs[1].unwrap().pid, 8);
    }

    #[test]
    fn skips_unknown_and_malformed_infos() {
        let buf = event(
            libc::FAN_ATTRIB,
            -1,
            1,
            &[
                raw_info(99, &[1, 2, 3, 4, 5]),
                // pidfd record: known to the kernel, not to us -> skipped.
                raw_info(libc::FAN_EVENT_INFO_TYPE_PIDFD, &5i32.to_ne_bytes()),
                // fid record whose handle_bytes overruns the record.
                {
                    let mut r = fid_info(libc::FAN_EVENT_INFO_TYPE_FID, [0, 0], 1, &[1; 4], None);
                    r[12..16].copy_from_slice(&1000u32.to_ne_bytes());
                    r
                },
                // DFID_NAME without a NUL terminator.
                {
                    let mut r = fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [0, 0], 1, &[1; 4], Some("abc"));
                    let n = r.len();
                    for b in &mut r[24..n] {
                        *b = b'x';
                    }
                    r
                },
                fid_info(libc::FAN_EVENT_INFO_TYPE_DFID, [5, 6], 2, &[3; 8], None),
            ],
        );
        let e = collect(&buf)[0].unwrap();
        assert_eq!(e.skipped_infos, 4);
        assert!(e.fid.is_none());
        // DFID (no name) landed in the dfid slot, with no name.
        let d = e.dfid_name.unwrap();
        assert_eq!(d.fsid, [5, 6]);
        assert_eq!(d.name, None);
    }

    #[test]
    fn info_len_overrunning_event_is_contained() {
        let mut info = fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [0, 0], 1, &[1; 8], Some("n"));
        info[2..4].copy_from_slice(&500u16.to_ne_bytes());
        let mut buf = event(libc::FAN_CREATE, -1, 1, &[info]);
        buf.extend(event(libc::FAN_DELETE, -1, 2, &[]));
        let evs = collect(&buf);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].unwrap().skipped_infos, 1);
        assert!(evs[0].unwrap().dfid_name.is_none());
        assert_eq!(evs[1].unwrap().mask, libc::FAN_DELETE);
        // Zero-length info header: must not loop forever.
        let mut buf = event(libc::FAN_CREATE, -1, 1, &[vec![1, 0, 0, 0, 0, 0, 0, 0]]);
        buf.extend(event(libc::FAN_DELETE, -1, 2, &[]));
        let evs = collect(&buf);
        assert_eq!(evs.len(), 2);
    }

    #[test]
    fn overflow_event() {
        let buf = event(libc::FAN_Q_OVERFLOW, libc::FAN_NOFD, 0, &[]);
        let e = collect(&buf)[0].unwrap();
        assert_eq!(e.mask, libc::FAN_Q_OVERFLOW);
        assert_eq!(e.fd, -1);
        assert!(e.dfid_name.is_none());
    }

    #[test]
    fn truncated_and_bad_buffers_error_without_panic() {
        let full = event(libc::FAN_CREATE, -1, 1, &[fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [0, 0], 1, &[1; 8], Some("name"))]);
        for cut in 1..full.len() {
            let evs = collect(&full[..cut]);
            assert_eq!(evs.len(), 1, "cut {cut}");
            assert!(matches!(evs[0], Err(ParseError::Truncated { .. })), "cut {cut}: {:?}", evs[0]);
        }
        // event_len smaller than metadata.
        let mut bad = full.clone();
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(collect(&bad)[0], Err(ParseError::BadLengths { .. })));
        // event_len == 0 must not loop.
        let mut bad = full.clone();
        bad[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(collect(&bad).len(), 1);
        // metadata_len beyond event_len.
        let mut bad = full.clone();
        bad[6..8].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(collect(&bad)[0], Err(ParseError::BadLengths { .. })));
        // Wrong version.
        let mut bad = full.clone();
        bad[4] = 2;
        assert!(matches!(collect(&bad)[0], Err(ParseError::Version(2))));
        // Good event followed by garbage: first is returned, then one error.
        let mut two = full.clone();
        two.extend_from_slice(&[0xff; 10]);
        let evs = collect(&two);
        assert_eq!(evs.len(), 2);
        assert!(evs[0].is_ok());
        assert!(evs[1].is_err());
        assert!(collect(&[]).is_empty());
    }

    #[test]
    fn fuzz_like_random_buffers_never_panic() {
        // Deterministic xorshift; mutate a valid buffer in many ways.
        let base = {
            let mut b = event(
                libc::FAN_RENAME,
                -1,
                1,
                &[
                    fid_info(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, [1, 1], 1, &[1; 8], Some("x")),
                    fid_info(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, [1, 1], 1, &[1; 8], Some("y")),
                ],
            );
            b.extend(event(libc::FAN_CLOSE_WRITE, -1, 2, &[fid_info(2, [1, 1], 1, &[2; 8], Some("z"))]));
            b
        };
        let mut s: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mut b = base.clone();
            let pos = (s as usize) % b.len();
            b[pos] = (s >> 32) as u8;
            let cut = ((s >> 16) as usize) % (b.len() + 1);
            let mut it = events(&b[..cut]);
            while let Some(r) = it.next_event() {
                let _ = r.map(|e| e.dfid_name.map(|d| d.name));
            }
        }
    }
}
