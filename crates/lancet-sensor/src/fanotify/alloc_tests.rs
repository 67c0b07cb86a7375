//! The steady state of the file-change source allocates nothing: events
//! whose directory is known are written into reused batch slots. Counted
//! on this test's thread only (see `crate::alloc_count`).

use super::parse::{build, events};
use super::FileChangeWatcher;
use crate::alloc_count::thread_allocations;
use lancet_engine::batch::EventBatch;
use lancet_engine::event::{EventKind, FileOp};

const FSID: [i32; 2] = [7, 9];
const HANDLE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const UPPER: &str = "/var/lib/containers/storage/overlay/749c1ce0e70e633d7898507105456ba0e3d833bbf389a399563a89dfeb984633/diff/tmp";

/// create, close-after-write and delete of `name` in the known directory,
/// as three queued events, and the same merged into one.
fn buffer(name: &str) -> Vec<u8> {
    let info = build::fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, FSID, 1, &HANDLE, Some(name));
    [
        build::event(libc::FAN_CREATE, -1, 4242, std::slice::from_ref(&info)),
        build::event(libc::FAN_CLOSE_WRITE, -1, 4242, std::slice::from_ref(&info)),
        build::event(libc::FAN_DELETE, -1, 4242, std::slice::from_ref(&info)),
        build::event(libc::FAN_CREATE | libc::FAN_CLOSE_WRITE | libc::FAN_DELETE, -1, 4242, std::slice::from_ref(&info)),
    ]
    .concat()
}

#[test]
fn file_events_of_a_known_directory_allocate_nothing() {
    let Ok(mut w) = FileChangeWatcher::new() else {
        eprintln!("SKIP: fanotify_init not permitted");
        return;
    };
    w.set_path_filter(vec![UPPER.rsplit_once("/diff").unwrap().0.into()]);
    w.remember_dir(FSID, 1, &HANDLE, UPPER);
    let names: Vec<Vec<u8>> = (0..64).map(|i| buffer(&format!("f{i}"))).collect();
    let mut batch = EventBatch::new();
    let mut round = |batch: &mut EventBatch| {
        for buf in &names {
            let mut it = events(buf);
            while let Some(ev) = it.next_event() {
                w.handle(ev.expect("a well-formed event"), 1, batch);
            }
        }
        let n = batch.len();
        batch.clear();
        n
    };
    // Warm: the slots and their strings grow to size once.
    round(&mut batch);
    let before = thread_allocations();
    let mut handled = 0;
    for _ in 0..20 {
        handled += round(&mut batch);
    }
    let allocated = thread_allocations() - before;
    assert_eq!(handled, 20 * 64 * 6, "every event handled");
    assert_eq!(allocated, 0, "{allocated} allocations for {handled} file events");
    // The count sees allocations: the same events into new ones allocate.
    let before = thread_allocations();
    let mut fresh = Vec::new();
    let mut it = events(&names[0]);
    while let Some(ev) = it.next_event() {
        w.handle(ev.unwrap(), 1, &mut fresh);
    }
    assert!(thread_allocations() - before >= fresh.len() as u64, "each new event allocates its path");
    // And they are what they say.
    for buf in &names[..1] {
        let mut it = events(buf);
        while let Some(ev) = it.next_event() {
            w.handle(ev.unwrap(), 1, &mut batch);
        }
    }
    let ops: Vec<(FileOp, String)> = batch
        .events()
        .iter()
        .map(|e| match &e.kind {
            EventKind::File(f) => (f.op, f.path.clone()),
            other => panic!("not a file event: {other:?}"),
        })
        .collect();
    let p = format!("{UPPER}/f0");
    assert_eq!(ops[0], (FileOp::Create, p.clone()));
    assert_eq!(ops[1], (FileOp::Modify, p.clone()));
    assert_eq!(ops[2], (FileOp::Delete, p.clone()));
    assert_eq!(ops[3..].iter().map(|(o, _)| *o).collect::<Vec<_>>(), [FileOp::Create, FileOp::Modify, FileOp::Delete]);
    assert!(batch.events().iter().all(|e| e.process.pid == 4242));
}
