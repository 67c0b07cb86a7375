//! The ring buffer is written by our own probes, but a record is still
//! parsed as outside data: any bytes give an event or an error, and
//! every string of an event fits the array it came from.

use super::tests::bytes_of;
use super::*;
use lancet_testkit::mutate::{apply_bytes, byte_edits};
use proptest::prelude::*;

const COMM: usize = 16;
const PATH: usize = 256;
const ARGS: usize = 1024;

fn check(ev: &Event) -> Result<(), TestCaseError> {
    // Lossy UTF-8 turns a byte into at most one character.
    let chars = |s: &str| s.chars().count();
    prop_assert!(chars(&ev.process.comm) <= COMM);
    match &ev.kind {
        EventKind::Exec(x) => {
            prop_assert!(chars(&x.cwd) <= 2 * PATH);
            prop_assert!(chars(&x.filename) <= 3 * PATH + 1, "{}", x.filename.len());
            prop_assert!(chars(&x.parent_comm) <= COMM);
            let argv: usize = x.argv.iter().map(|a| chars(a) + 1).sum();
            prop_assert!(argv <= ARGS + 1, "{} argv bytes", argv);
            prop_assert!(x.argv.iter().all(|a| !a.contains('\0')));
        }
        EventKind::CgroupMkdir { path, .. } | EventKind::CgroupRmdir { path, .. } => prop_assert!(chars(path) <= PATH),
        _ => {}
    }
    Ok(())
}

/// A record of `kind`: its struct filled with arbitrary bytes, the
/// header's kind set, cut anywhere.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let sizes = [
        (kind::EXEC, size_of::<types::lancet_exec>()),
        (kind::FORK, size_of::<types::lancet_fork>()),
        (kind::EXIT, size_of::<types::lancet_exit>()),
        (kind::CONNECT, size_of::<types::lancet_net>()),
        (kind::ACCEPT, size_of::<types::lancet_net>()),
        (kind::LISTEN, size_of::<types::lancet_net>()),
        (kind::BIND, size_of::<types::lancet_net>()),
        (kind::CLOSE, size_of::<types::lancet_net>()),
        (kind::CGROUP_MKDIR, size_of::<types::lancet_cgroup>()),
        (kind::CGROUP_RMDIR, size_of::<types::lancet_cgroup>()),
    ];
    (proptest::sample::select(sizes.to_vec()), any::<prop::sample::Index>(), any::<u64>()).prop_flat_map(|((k, size), cut, seed)| {
        proptest::collection::vec(any::<u8>(), size..=size).prop_map(move |mut b| {
            let off = std::mem::offset_of!(types::lancet_header, kind);
            b[off..off + 4].copy_from_slice(&k.to_ne_bytes());
            // Half the time keep the whole record.
            if seed % 2 == 0 {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        })
    })
}

fn exec_record(filename: &str, cwd: &str, args: &[u8]) -> Vec<u8> {
    let mut e = types::lancet_exec { hdr: types::lancet_header { kind: kind::EXEC, ..Default::default() }, ..Default::default() };
    for (d, b) in e.filename.iter_mut().zip(filename.bytes()) {
        *d = b as i8;
    }
    e.filename_len = filename.len() as u16;
    for (d, b) in e.cwd.iter_mut().zip(cwd.bytes()) {
        *d = b as i8;
    }
    e.cwd_len = cwd.len() as u16;
    for (d, b) in e.args.iter_mut().zip(args) {
        *d = *b as i8;
    }
    e.args_len = args.len() as u16;
    let mut v = bytes_of(&e);
    v.truncate(std::mem::offset_of!(types::lancet_exec, args) + args.len());
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Into a slot that held anything, the same event as `decode`.
    #[test]
    fn decoding_in_place_gives_the_same_event(data in record(), before in record(), offset in any::<i32>()) {
        let clock = Clock::with_offset(i128::from(offset));
        let mut slot = decode(&before, &clock).unwrap_or_default();
        match (decode(&data, &clock), decode_into(&data, &clock, &mut slot)) {
            (Ok(ev), Ok(())) => prop_assert_eq!(ev, slot),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "decode {:?}, decode_into {:?}", a, b),
        }
    }

    #[test]
    fn arbitrary_bytes_are_events_or_errors(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(ev) = decode(&data, &Clock::with_offset(0)) {
            check(&ev)?;
        }
    }

    #[test]
    fn records_of_every_kind_with_any_fields(data in record(), offset in any::<i64>()) {
        match decode(&data, &Clock::with_offset(i128::from(offset))) {
            Ok(ev) => check(&ev)?,
            Err(DecodeError::Truncated { len, need, .. }) => prop_assert!(len < need && len == data.len()),
            Err(DecodeError::UnknownKind(k)) => prop_assert!(false, "kind {} is known", k),
        }
    }

    #[test]
    fn mutated_exec_records(args in proptest::collection::vec("[^\0]{1,20}", 0..20), e in byte_edits(8)) {
        let raw: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let data = apply_bytes(&exec_record("sh", "/tmp", &raw), &e);
        if let Ok(ev) = decode(&data, &Clock::with_offset(0)) {
            check(&ev)?;
        }
    }

    /// What the probe writes is what comes out: argv split at NULs
    /// (cut at the record's size), the file name resolved against cwd.
    #[test]
    fn exec_records_read_back(filename in "[a-z./]{1,40}", cwd in "/[a-z/]{0,40}", args in proptest::collection::vec("[^\0]{1,40}", 1..60)) {
        let raw: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let kept = &raw[..raw.len().min(ARGS)];
        let ev = decode(&exec_record(&filename, &cwd, kept), &Clock::with_offset(0)).unwrap();
        let EventKind::Exec(x) = ev.kind else { panic!("not an exec") };
        if raw.len() <= ARGS {
            prop_assert_eq!(&x.argv, &args);
        } else {
            // Whole arguments up to the cut, then the cut one's start.
            let whole = args.iter().scan(0, |n, a| { *n += a.len() + 1; Some(*n) }).take_while(|&n| n <= ARGS).count();
            prop_assert_eq!(&x.argv[..whole], &args[..whole]);
        }
        prop_assert_eq!(x.cwd, cwd.clone());
        let want = if filename.starts_with('/') { filename.clone() } else {
            let rel = filename.strip_prefix("./").unwrap_or(&filename);
            if cwd.ends_with('/') { format!("{cwd}{rel}") } else { format!("{cwd}/{rel}") }
        };
        prop_assert_eq!(x.filename, want);
    }
}

/// A record whose args_len claims the whole array while the record is
/// 10 MB long: the argv read is the array's 1 KiB, not the record.
#[test]
fn a_huge_record_is_read_within_its_struct() {
    let mut data = exec_record("sh", "/", b"a\0");
    let off = std::mem::offset_of!(types::lancet_exec, args_len);
    data[off..off + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
    data.resize(10 << 20, b'x');
    let ev = decode(&data, &Clock::with_offset(0)).unwrap();
    let EventKind::Exec(x) = ev.kind else { panic!("not an exec") };
    assert_eq!(x.argv.iter().map(|a| a.len() + 1).sum::<usize>(), ARGS + 1);
}
