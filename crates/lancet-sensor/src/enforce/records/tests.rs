//! Decoding records: known layouts, and any bytes without a panic.

use super::*;

mod known {
    use super::*;

    fn bytes_of<T: plain::Plain>(v: &T) -> Vec<u8> {
        // SAFETY: `v` is a valid reference to plain old data; the slice
        // covers exactly its bytes and lives no longer than the borrow.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn records_decode_with_v4_addresses_and_kills() {
        let mut e = types::lancet_enforce_event::default();
        e.hdr.kind = KIND_ENFORCE;
        e.hdr.pid = 42;
        e.hdr.cgroup_id = 9;
        e.hdr.ts_ns = 100;
        for (i, c) in b"nc".iter().enumerate() {
            e.hdr.comm[i] = *c as i8;
        }
        e.op = 1;
        e.reason = 1;
        e.family = AF_INET;
        e.proto = 6;
        e.port = 8081;
        e.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 88, 0, 5];
        e.denied = 1;
        let r = decode_record(&bytes_of(&e), &Clock::with_offset(1000)).unwrap();
        assert_eq!(r.time_ns, 1100);
        assert_eq!((r.pid, r.cgroup_id, r.comm.as_str()), (42, 9, "nc"));
        assert_eq!((r.op, r.reason, r.proto, r.port), (EnforceOp::Connect4, EnforceReason::NotAllowed, Some(Protocol::Tcp), 8081));
        assert_eq!(r.addr, Some("10.88.0.5".parse().unwrap()));
        assert!(r.denied);

        e.op = 7;
        e.reason = 3;
        e.family = 0;
        e.ino = 77;
        let r = decode_record(&bytes_of(&e), &Clock::with_offset(0)).unwrap();
        assert_eq!((r.op, r.reason, r.addr, r.ino), (EnforceOp::ExecKill, EnforceReason::Memfd, None, 77));
    }

    #[test]
    fn applet_kills_decode_with_the_name_the_cut_and_the_file() {
        let mut e = types::lancet_enforce_event::default();
        e.hdr.kind = KIND_ENFORCE;
        e.op = 7;
        e.reason = 7;
        e.ino = 1234;
        e.denied = 1;
        for (i, c) in b"nc".iter().enumerate() {
            e.applet[i] = *c as i8;
        }
        e.addr[..7].copy_from_slice(b"busybox");
        let r = decode_record(&bytes_of(&e), &Clock::with_offset(0)).unwrap();
        assert_eq!(r.reason, EnforceReason::Applet);
        assert_eq!(r.addr, None, "family 0: addr is the file's name, not an address");
        let a = r.applet.clone().unwrap();
        assert_eq!((a.name.as_str(), a.cut, a.file.as_str()), ("nc", false, "busybox"));
        match r.to_event().kind {
            EventKind::Exec(x) => {
                assert_eq!(x.filename, "applet nc of busybox (inode 1234), killed at exec");
                assert_eq!(x.argv, vec!["nc".to_string()]);
                assert_eq!(x.exe_ino, 1234);
            }
            other => panic!("not an exec: {other:?}"),
        }

        // Cut at 31 bytes, marked in the last byte.
        let long = [b's'; 31];
        for (i, c) in long.iter().enumerate() {
            e.applet[i] = *c as i8;
        }
        e.applet[31] = APPLET_CUT as i8;
        let a = decode_record(&bytes_of(&e), &Clock::with_offset(0)).unwrap().applet.unwrap();
        assert_eq!((a.name.len(), a.cut), (31, true));
        assert_eq!(a.to_string(), format!("{}...", "s".repeat(31)));

        // Empty or unreadable argv[0].
        e.applet = [0; 32];
        let r = decode_record(&bytes_of(&e), &Clock::with_offset(0)).unwrap();
        assert_eq!(r.applet.as_ref().unwrap().name, "");
        match r.to_event().kind {
            EventKind::Exec(x) => assert!(x.filename.starts_with("applet (empty or unreadable argv[0]) of busybox"), "{}", x.filename),
            other => panic!("not an exec: {other:?}"),
        }

        // Other records carry no applet, and records of the size before the
        // field existed still decode.
        e.reason = 6;
        let bytes = bytes_of(&e);
        let r = decode_record(&bytes[..SIZE_BEFORE_APPLET], &Clock::with_offset(0)).unwrap();
        assert_eq!((r.reason, r.applet), (EnforceReason::KillIno, None));
    }

    fn write_refusal(syscall: i32, path: Option<&str>, fd: Option<i32>) -> types::lancet_enforce_event {
        let mut e = types::lancet_enforce_event::default();
        e.hdr.kind = KIND_ENFORCE;
        e.hdr.pid = 7;
        e.hdr.cgroup_id = 3;
        e.op = 8;
        e.reason = 8;
        e.denied = 1;
        e.syscall = syscall;
        if let Some(p) = path {
            for (i, c) in p.bytes().enumerate() {
                e.path[i] = c as i8;
            }
            e.path_len = p.len() as u16;
            e.wr_flags |= WR_PATH;
        }
        if let Some(fd) = fd {
            e.fd = fd;
            e.wr_flags |= WR_FD;
        }
        e
    }

    #[test]
    fn write_refusals_decode_to_file_events() {
        let clock = Clock::with_offset(0);
        // syscall, path, fd; its name, the file op, the path shown, is_dir
        type Case<'a> = (i32, Option<&'a str>, Option<i32>, &'a str, FileOp, &'a str, bool);
        let cases: [Case; 9] = [
            (257, Some("/ro/f"), Some(-100), "openat", FileOp::Modify, "/ro/f", false),
            (85, Some("/ro/new"), None, "creat", FileOp::Create, "/ro/new", false),
            (83, Some("/ro/d"), None, "mkdir", FileOp::Create, "/ro/d", true),
            (258, Some("d"), Some(5), "mkdirat", FileOp::Create, "d", true),
            (263, Some("/ro/f"), Some(-100), "unlinkat", FileOp::Delete, "/ro/f", false),
            (316, Some("/ro/g"), Some(-100), "renameat2", FileOp::Rename, "/ro/g", false),
            (268, Some("/ro/f"), Some(-100), "fchmodat", FileOp::Chmod, "/ro/f", false),
            (1, None, Some(3), "write", FileOp::Modify, "fd 3", false),
            (999, None, None, "syscall_999", FileOp::Modify, "(syscall_999)", false),
        ];
        for (nr, path, fd, name, op, shown, dir) in cases {
            let bytes = bytes_of(&write_refusal(nr, path, fd));
            let r = decode_record(&bytes, &clock).unwrap();
            assert_eq!((r.op, r.reason, r.denied, r.pid, r.cgroup_id), (EnforceOp::WriteRefused, EnforceReason::ReadOnly, true, 7, 3));
            let w = r.write.clone().unwrap();
            assert_eq!((w.syscall, w.path.as_deref(), w.fd, w.evt_type()), (nr, path, fd, name.to_string()), "{name}");
            match r.to_event().kind {
                EventKind::File(f) => {
                    assert_eq!((f.op, f.path.as_str(), f.is_dir, f.old_path), (op, shown, dir, None), "{name}");
                }
                other => panic!("{name}: not a file event: {other:?}"),
            }
        }
        // Unreadable, cut, compat.
        let mut e = write_refusal(2, None, None);
        e.wr_flags = WR_PATH | WR_PATH_UNREADABLE;
        let w = decode_record(&bytes_of(&e), &clock).unwrap().write.unwrap();
        assert!(w.path.is_none() && w.path_unreadable);
        let long = "/ro/".to_string() + &"x".repeat(251);
        let mut e = write_refusal(2, Some(&long), None);
        e.wr_flags |= WR_PATH_CUT;
        let w = decode_record(&bytes_of(&e), &clock).unwrap().write.unwrap();
        assert_eq!((w.path.as_deref(), w.path_cut), (Some(long.as_str()), true));
        let mut e = write_refusal(5, None, None);
        e.wr_flags = WR_COMPAT;
        let w = decode_record(&bytes_of(&e), &clock).unwrap().write.unwrap();
        assert_eq!((w.compat, w.syscall_name(), w.evt_type()), (true, None, "ia32_syscall_5".to_string()));
        // Relative paths resolve against the cwd or the dirfd, in /proc.
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap().display().to_string();
        let w =
            WriteRefusal { syscall: 257, compat: false, path: Some("x".into()), path_unreadable: false, path_cut: false, fd: Some(-100) };
        assert_eq!(w.resolve(me), Some(format!("{}/x", cwd.trim_end_matches('/'))));
        let abs = WriteRefusal { path: Some("/a/b".into()), ..w.clone() };
        assert_eq!(abs.resolve(me), Some("/a/b".into()));
    }

    #[test]
    fn listeners_decode_to_listen_events() {
        let mut e = types::lancet_enforce_event::default();
        e.hdr.kind = KIND_ENFORCE;
        e.op = 9;
        e.reason = 1;
        e.family = AF_INET6;
        e.proto = 6;
        e.port = 41234;
        e.ino = 555;
        e.denied = 1;
        let bytes = bytes_of(&e);
        // Short records (all but write refusals) are sent without `path`.
        let r = decode_record(&bytes[..160], &Clock::with_offset(0)).unwrap();
        assert_eq!((r.op, r.port, r.ino, r.addr), (EnforceOp::Listen, 41234, 555, Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))));
        assert_eq!((r.write.clone(), r.applet.clone()), (None, None));
        match r.to_event().kind {
            EventKind::Net(n) => {
                assert_eq!((n.op, n.proto, n.sport, n.dport, n.result), (NetOp::Listen, Protocol::Tcp, 41234, 0, libc::EPERM));
                assert_eq!(n.saddr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
            }
            other => panic!("not a net event: {other:?}"),
        }
        e.family = AF_INET;
        e.addr[10] = 0xff;
        e.addr[11] = 0xff;
        e.addr[12..16].copy_from_slice(&[10, 0, 0, 1]);
        e.denied = 0;
        let r = decode_record(&bytes_of(&e)[..160], &Clock::with_offset(0)).unwrap();
        match r.to_event().kind {
            EventKind::Net(n) => assert_eq!((n.saddr, n.result), ("10.0.0.1".parse().unwrap(), 0)),
            other => panic!("not a net event: {other:?}"),
        }
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode_record(&[0; 8], &Clock::with_offset(0)), Err(RecordError::Truncated(8)));
        let mut e = types::lancet_enforce_event::default();
        e.hdr.kind = 1;
        assert_eq!(decode_record(&bytes_of(&e), &Clock::with_offset(0)), Err(RecordError::Kind(1)));
        e.hdr.kind = KIND_ENFORCE;
        e.op = 99;
        e.reason = 1;
        assert_eq!(decode_record(&bytes_of(&e), &Clock::with_offset(0)), Err(RecordError::Unknown(99, 1)));
    }
}

mod prop_tests {
    //! Enforcement records outlive the agent in a pinned ring (an older
    //! agent's programs may have written them): any bytes give a record or
    //! an error, and what a record says fits its fields.
    use super::*;
    use lancet_testkit::mutate::{apply_bytes, byte_edits};
    use proptest::prelude::*;

    const FULL: usize = std::mem::size_of::<types::lancet_enforce_event>();

    fn check(r: &EnforceRecord, data: &[u8]) -> Result<(), TestCaseError> {
        prop_assert!(data.len() >= SIZE_BEFORE_APPLET);
        prop_assert!(r.comm.chars().count() <= 16);
        prop_assert_eq!(r.applet.is_some(), r.reason == EnforceReason::Applet);
        if let Some(a) = &r.applet {
            prop_assert!(a.name.chars().count() <= 31 + usize::from(!a.cut));
            prop_assert!(a.file.chars().count() <= 16);
        }
        // A record is refused or killed only when it says so.
        let d = std::mem::offset_of!(types::lancet_enforce_event, denied);
        prop_assert_eq!(r.denied, data[d..d + 4].iter().any(|&b| b != 0));
        let ev = r.to_event();
        if let EventKind::Net(n) = &ev.kind {
            prop_assert_eq!(n.result != 0, r.denied);
        }
        Ok(())
    }

    /// A record with a valid kind, op and reason and every other byte
    /// arbitrary, possibly cut.
    fn record() -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(any::<u8>(), FULL..=FULL), 1u32..=7, 1u32..=7, any::<prop::sample::Index>(), any::<bool>()).prop_map(
            |(mut b, op, reason, cut, whole)| {
                let put = |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
                put(&mut b, std::mem::offset_of!(types::lancet_header, kind), KIND_ENFORCE);
                put(&mut b, std::mem::offset_of!(types::lancet_enforce_event, op), op);
                put(&mut b, std::mem::offset_of!(types::lancet_enforce_event, reason), reason);
                if !whole {
                    b.truncate(cut.index(FULL + 1));
                }
                b
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_are_records_or_errors(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            match decode_record(&data, &Clock::with_offset(0)) {
                Ok(r) => check(&r, &data)?,
                Err(RecordError::Truncated(n)) => prop_assert!(n == data.len() && n < SIZE_BEFORE_APPLET),
                Err(_) => {}
            }
        }

        #[test]
        fn records_with_any_fields(data in record()) {
            match decode_record(&data, &Clock::with_offset(0)) {
                Ok(r) => check(&r, &data)?,
                Err(e) => prop_assert!(data.len() < SIZE_BEFORE_APPLET, "{} bytes: {}", data.len(), e),
            }
        }

        #[test]
        fn mutated_records(data in record(), e in byte_edits(8)) {
            let data = apply_bytes(&data, &e);
            if let Ok(r) = decode_record(&data, &Clock::with_offset(0)) {
                check(&r, &data)?;
            }
        }
    }
}
