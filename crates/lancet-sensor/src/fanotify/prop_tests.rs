//! Property tests of what fanotify and /proc hand the permission path:
//! event buffers (lengths the kernel wrote, names a container chose),
//! `/proc/<tid>/syscall` lines, and event-fd paths to normalise. Any input
//! gives an answer or an error, never a panic, and never an answer that
//! reaches outside the input.

use super::parse::build::{event, fid_info, raw_info};
use super::parse::{events, ParseError, RawEvent, METADATA_LEN};
use super::syscall::parse_syscall;
use crate::enforce::perm::normalise;
use lancet_testkit::mutate::{apply_bytes, byte_edits};
use proptest::prelude::*;

/// Every event found lies inside the buffer, one after another, and the
/// iteration ends.
fn walk(buf: &[u8]) -> Result<Vec<RawEvent<'_>>, TestCaseError> {
    let mut out = Vec::new();
    let mut events = events(buf);
    let mut n = 0;
    while let Some(r) = events.next_event() {
        prop_assert!(n <= buf.len() / METADATA_LEN, "more events than the buffer holds");
        n += 1;
        match r.copied() {
            Ok(ev) => {
                for f in [ev.dfid_name, ev.old_dfid_name, ev.new_dfid_name, ev.fid].into_iter().flatten() {
                    prop_assert!(!f.handle.is_empty());
                    prop_assert!(f.handle.len() <= buf.len());
                    if let Some(name) = f.name {
                        prop_assert!(!name.contains(&0), "a name ends at its NUL");
                    }
                }
                out.push(ev);
            }
            Err(ParseError::Truncated { offset, have, need }) => {
                prop_assert!(offset + have == buf.len() && have < need);
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

const INFO_TYPES: [u8; 6] = [
    libc::FAN_EVENT_INFO_TYPE_FID,
    libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
    libc::FAN_EVENT_INFO_TYPE_DFID,
    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    libc::FAN_EVENT_INFO_TYPE_PIDFD,
];

/// An info record: type, fsid, handle type, handle, name.
type Info = (u8, [i32; 2], i32, Vec<u8>, Option<String>);
/// An event: mask, fd, pid, info records.
type Ev = (u64, i32, i32, Vec<Info>);

/// An info record: a fid type with a handle and (for the named types) a
/// name a container chose, or an unknown type.
fn info() -> impl Strategy<Value = Info> {
    (
        proptest::sample::select(INFO_TYPES.to_vec()),
        any::<[i32; 2]>(),
        any::<i32>(),
        proptest::collection::vec(any::<u8>(), 1..40),
        proptest::option::of("[^\0]{0,255}"),
    )
}

fn build_info((t, fsid, ht, handle, name): &Info) -> Vec<u8> {
    let named = matches!(
        *t,
        libc::FAN_EVENT_INFO_TYPE_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
    );
    if *t == libc::FAN_EVENT_INFO_TYPE_PIDFD {
        return raw_info(*t, &5i32.to_ne_bytes());
    }
    fid_info(*t, *fsid, *ht, handle, if named { Some(name.as_deref().unwrap_or("")) } else { None })
}

fn buffer() -> impl Strategy<Value = Vec<Ev>> {
    proptest::collection::vec((any::<u64>(), any::<i32>(), any::<i32>(), proptest::collection::vec(info(), 0..4)), 1..6)
}

fn build(evs: &[Ev]) -> Vec<u8> {
    evs.iter().flat_map(|(mask, fd, pid, infos)| event(*mask, *fd, *pid, &infos.iter().map(build_info).collect::<Vec<_>>())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_buffers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
        walk(&buf)?;
    }

    /// Buffers laid out as the kernel lays them out read back field by field.
    #[test]
    fn kernel_buffers_read_back(evs in buffer()) {
        let buf = build(&evs);
        let got = walk(&buf)?;
        prop_assert_eq!(got.len(), evs.len());
        for (g, (mask, fd, pid, infos)) in got.iter().zip(&evs) {
            prop_assert_eq!((g.mask, g.fd, g.pid), (*mask, *fd, *pid));
            // The last record of each slot wins; unknown types are skipped.
            let last = |types: &[u8]| infos.iter().rev().find(|i| types.contains(&i.0));
            let slot = |f: Option<super::parse::FidRecord<'_>>, want: Option<&Info>| -> Result<(), TestCaseError> {
                match (f, want) {
                    (Some(f), Some((t, fsid, ht, handle, name))) => {
                        prop_assert_eq!((f.fsid, f.handle_type, f.handle), (*fsid, *ht, &handle[..]));
                        let named = *t != libc::FAN_EVENT_INFO_TYPE_FID && *t != libc::FAN_EVENT_INFO_TYPE_DFID;
                        prop_assert_eq!(f.name, named.then(|| name.as_deref().unwrap_or("").as_bytes()));
                    }
                    (None, None) => {}
                    (f, w) => prop_assert!(false, "{:?} vs {:?}", f, w),
                }
                Ok(())
            };
            slot(g.fid, last(&[libc::FAN_EVENT_INFO_TYPE_FID]))?;
            slot(g.dfid_name, last(&[libc::FAN_EVENT_INFO_TYPE_DFID_NAME, libc::FAN_EVENT_INFO_TYPE_DFID]))?;
            slot(g.old_dfid_name, last(&[libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME]))?;
            slot(g.new_dfid_name, last(&[libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME]))?;
            prop_assert_eq!(g.skipped_infos as usize, infos.iter().filter(|i| i.0 == libc::FAN_EVENT_INFO_TYPE_PIDFD).count());
        }
    }

    /// Lengths and counts overwritten, bytes flipped, inserted, removed.
    #[test]
    fn mutated_kernel_buffers_never_panic(evs in buffer(), e in byte_edits(10)) {
        walk(&apply_bytes(&build(&evs), &e))?;
    }

    #[test]
    fn arbitrary_syscall_lines_never_panic(text in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some((nr, _)) = parse_syscall(&text) {
            prop_assert!(nr >= 0);
        }
    }

    /// What the kernel prints reads back; a line cut or changed is read
    /// only if it still holds a number and six hex arguments.
    #[test]
    fn syscall_lines_read_back(nr in 0i64..1000, args in any::<[u64; 6]>(), sp in any::<u64>(), pc in any::<u64>(), cut in any::<prop::sample::Index>()) {
        let line = format!("{nr} {} 0x{sp:x} 0x{pc:x}\n", args.iter().map(|a| format!("0x{a:x}")).collect::<Vec<_>>().join(" "));
        prop_assert_eq!(parse_syscall(line.as_bytes()), Some((nr, args)));
        let short = &line.as_bytes()[..cut.index(line.len())];
        if let Some((n, a)) = parse_syscall(short) {
            // Cut inside sp/pc (or inside the last argument's digits, which
            // reads as a smaller number): never a different syscall.
            prop_assert_eq!(n, nr);
            prop_assert_eq!(&a[..5], &args[..5]);
        }
    }

    /// Normalised paths: the link itself when no prefix matched, else
    /// the part after a prefix ending at a component boundary.
    #[test]
    fn normalise_strips_only_whole_prefixes(link in proptest::collection::vec(any::<u8>(), 0..200), prefixes in proptest::collection::vec("(/[a-z]{1,4}){0,3}", 0..4), under in any::<bool>(), rest in "(/[a-z\u{e9}]{1,4}){0,3}") {
        let link = if under && !prefixes.is_empty() { format!("{}{rest}", prefixes[0]).into_bytes() } else { link };
        let mut out = String::from("stale");
        let stripped = normalise(&link, &prefixes, &mut out);
        if stripped {
            prop_assert!(out.starts_with('/'));
            let p = prefixes.iter().find(|p| link.starts_with(p.as_bytes()) && (link.len() == p.len() || link[p.len()] == b'/')).expect("a prefix matched");
            let tail = &link[p.len()..];
            prop_assert_eq!(out.as_str(), if tail.is_empty() { "/".into() } else { String::from_utf8_lossy(tail) });
        } else {
            prop_assert_eq!(out, String::from_utf8_lossy(&link));
        }
    }
}
