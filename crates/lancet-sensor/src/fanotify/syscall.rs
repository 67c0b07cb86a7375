//! What a task stopped in a permission event is doing, from its
//! `/proc/<tid>/syscall` (the syscall number and raw arguments) and, where
//! an argument is a pointer, its memory (`process_vm_readv`): an open's
//! write intent, an exec's file name and arguments. The task is blocked
//! inside the syscall until we answer, so what we read is what it asked.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A small stack buffer for `/proc/...` paths.
pub(crate) struct PathBuf32 {
    b: [u8; 48],
    len: usize,
}

impl PathBuf32 {
    pub(crate) fn new(prefix: &[u8]) -> Self {
        let mut s = PathBuf32 { b: [0; 48], len: 0 };
        s.push(prefix);
        s
    }
    fn push(&mut self, x: &[u8]) {
        let n = x.len().min(self.b.len() - self.len);
        self.b[self.len..self.len + n].copy_from_slice(&x[..n]);
        self.len += n;
    }
    pub(crate) fn num(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
    /// Appends `suffix` and a NUL; errs when it did not fit.
    pub(crate) fn finish(mut self, suffix: &[u8]) -> io::Result<[u8; 48]> {
        self.push(suffix);
        if self.len >= self.b.len() {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        Ok(self.b)
    }
}

// ---- Write intent from /proc/<tid>/syscall ----

/// What the stopped task's syscall says about its open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenCall {
    /// Open flags are known.
    Flags(u64),
    /// `openat2`: the flags are in `struct open_how` at this address.
    OpenHow(u64),
    /// An exec's open (read only).
    Exec,
    Unknown,
}

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const OPEN: i64 = 2;
    pub const CREAT: i64 = 85;
    pub const OPENAT: i64 = 257;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const EXECVE: i64 = 59;
    pub const EXECVEAT: i64 = 322;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const OPEN: i64 = -100; // no open(2) on arm64
    pub const CREAT: i64 = -101;
    pub const OPENAT: i64 = 56;
    pub const OPEN_BY_HANDLE_AT: i64 = 265;
    pub const EXECVE: i64 = 221;
    pub const EXECVEAT: i64 = 281;
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod nr {
    pub const OPEN: i64 = -100;
    pub const CREAT: i64 = -101;
    pub const OPENAT: i64 = -102;
    pub const OPEN_BY_HANDLE_AT: i64 = -103;
    pub const EXECVE: i64 = -104;
    pub const EXECVEAT: i64 = -105;
}
/// Same number on every architecture that has it.
const NR_OPENAT2: i64 = 437;

/// Parses `/proc/<tid>/syscall`: `"<nr> 0x<arg1> … 0x<arg6> 0x<sp> 0x<pc>"`,
/// or `"running"`, or `"-1 0x<sp> 0x<pc>"` outside a syscall.
pub(crate) fn parse_syscall(text: &[u8]) -> Option<(i64, [u64; 6])> {
    let text = std::str::from_utf8(text).ok()?;
    let mut f = text.split_ascii_whitespace();
    let nr: i64 = f.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        let s = f.next()?;
        *a = u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()?;
    }
    Some((nr, args))
}

pub(crate) fn classify(nr: i64, args: &[u64; 6]) -> OpenCall {
    match nr {
        nr::OPEN => OpenCall::Flags(args[1]),
        nr::CREAT => OpenCall::Flags((libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64),
        nr::OPENAT | nr::OPEN_BY_HANDLE_AT => OpenCall::Flags(args[2]),
        NR_OPENAT2 => OpenCall::OpenHow(args[2]),
        nr::EXECVE | nr::EXECVEAT => OpenCall::Exec,
        _ => OpenCall::Unknown,
    }
}

/// Do these open flags ask for write access (or may they change the file)?
pub(crate) fn flags_write(flags: u64) -> bool {
    let f = flags as u32 as i32;
    f & libc::O_ACCMODE != libc::O_RDONLY || f & (libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0
}

/// The write intent of stopped task `tid`'s open, when it can be told.
pub(crate) fn write_intent(tid: i32) -> Option<bool> {
    let (nr, args) = read_syscall(tid)?;
    match classify(nr, &args) {
        OpenCall::Flags(f) => Some(flags_write(f)),
        OpenCall::Exec => Some(false),
        OpenCall::OpenHow(addr) => read_remote_u64(tid, addr).map(flags_write),
        OpenCall::Unknown => None,
    }
}

/// How many times a task that still shows as running is looked at again
/// (with a yield between) before its syscall counts as unknown.
const RUNNING_RETRIES: u32 = 2000;

/// The syscall task `tid` is stopped in, with its raw arguments. Reads
/// onto the stack only: this runs on the permission path.
///
/// The kernel queues a permission event before the task goes to sleep
/// waiting for the answer, so the event can be read while the task is
/// still on its way there: its `syscall` file then says `running`. That
/// lasts microseconds; it is read again until the task sleeps (a bounded
/// number of times). Taking the first `running` as "unknown" refused an
/// exec of an approved interpreter (busybox) once in a benchmark's ~20 000.
fn read_syscall(tid: i32) -> Option<(i64, [u64; 6])> {
    let mut p = PathBuf32::new(b"/proc/");
    p.num(tid.max(0) as u64);
    let p = p.finish(b"/syscall").ok()?;
    for _ in 0..RUNNING_RETRIES {
        // SAFETY: `p` is NUL-terminated and outlives the call.
        let fd = unsafe { libc::open(p.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just returned to us and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut b = [0u8; 256];
        // SAFETY: `b` is writable for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        if n <= 0 {
            return None;
        }
        let text = &b[..n as usize];
        if !text.starts_with(b"running") {
            return parse_syscall(text);
        }
        // SAFETY: sched_yield takes no arguments and cannot fail in a way
        // that matters here.
        unsafe { libc::sched_yield() };
    }
    None
}

/// At most this many arguments of an exec are read, each at most
/// [`EXEC_ARG_MAX`] bytes: enough to find a script operand, bounded against
/// a hostile argv.
pub const EXEC_ARGS_MAX: usize = 64;
pub const EXEC_ARG_MAX: usize = 4096;

/// What a task stopped in `execve`/`execveat` asked the kernel to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecCall {
    /// The file name as given (relative to the task's cwd when relative;
    /// empty for `execveat(fd, "", AT_EMPTY_PATH)`).
    pub filename: String,
    pub argv: Vec<String>,
    /// More than [`EXEC_ARGS_MAX`] arguments, or one longer than
    /// [`EXEC_ARG_MAX`] bytes.
    pub truncated: bool,
}

/// The file name and arguments of the exec task `tid` is stopped in, read
/// from its memory (still the old image's: a permission event comes before
/// exec's point of no return). None when the task is not in an exec or its
/// memory cannot be read.
pub fn exec_call(tid: i32) -> Option<ExecCall> {
    let (nr, args) = read_syscall(tid)?;
    let (name_ptr, argv_ptr) = match nr {
        nr::EXECVE => (args[0], args[1]),
        nr::EXECVEAT => (args[1], args[2]),
        _ => return None,
    };
    let mut call = ExecCall::default();
    let (filename, cut) = read_remote_str(tid, name_ptr)?;
    call.filename = filename;
    call.truncated |= cut;
    let mut ptrs = [0u64; EXEC_ARGS_MAX];
    let n = read_remote(tid, argv_ptr, bytes_of_mut(&mut ptrs));
    let n = n / 8;
    for &p in ptrs.iter().take(n) {
        if p == 0 {
            return Some(call);
        }
        let (a, cut) = read_remote_str(tid, p)?;
        call.argv.push(a);
        call.truncated |= cut;
    }
    // No NULL among the pointers read: more arguments than we keep.
    call.truncated = true;
    Some(call)
}

fn bytes_of_mut(v: &mut [u64; EXEC_ARGS_MAX]) -> &mut [u8] {
    // SAFETY: u64 has no padding and every byte pattern is a valid u64;
    // the slice covers exactly the array's bytes and borrows it mutably.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Reads up to `buf.len()` bytes at `addr` in task `tid`, stopping at the
/// first unreadable page. Returns how many bytes were read.
fn read_remote(tid: i32, addr: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let at = addr.wrapping_add(done as u64);
        // Never cross a page in one call: a partial read stops there.
        let page_left = 4096 - (at % 4096) as usize;
        let want = (buf.len() - done).min(page_left);
        let local = libc::iovec { iov_base: buf[done..].as_mut_ptr().cast(), iov_len: want };
        let remote = libc::iovec { iov_base: at as usize as *mut libc::c_void, iov_len: want };
        // SAFETY: `local` describes `want` writable bytes of `buf`, which
        // outlives the call; the kernel dereferences `remote` only in the
        // other process, where a bad address gives EFAULT.
        let n = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

/// A NUL-terminated string at `addr` in task `tid`, at most
/// [`EXEC_ARG_MAX`] bytes (`true` when cut there). None when unreadable.
fn read_remote_str(tid: i32, addr: u64) -> Option<(String, bool)> {
    let mut buf = vec![0u8; EXEC_ARG_MAX];
    let mut have = 0;
    while have < buf.len() {
        let want = (buf.len() - have).min(256);
        let n = read_remote(tid, addr.wrapping_add(have as u64), &mut buf[have..have + want]);
        if let Some(z) = buf[have..have + n].iter().position(|&b| b == 0) {
            buf.truncate(have + z);
            return Some((String::from_utf8_lossy(&buf).into_owned(), false));
        }
        if n < want {
            return None;
        }
        have += n;
    }
    Some((String::from_utf8_lossy(&buf).into_owned(), true))
}

/// Reads 8 bytes at `addr` in task `tid`'s address space.
fn read_remote_u64(tid: i32, addr: u64) -> Option<u64> {
    let mut v = 0u64;
    let local = libc::iovec { iov_base: (&mut v as *mut u64).cast(), iov_len: 8 };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: 8 };
    // SAFETY: `local` describes 8 writable bytes of `v`, which outlives the
    // call; `remote` is only dereferenced by the kernel in the other process,
    // where a bad address yields EFAULT.
    let n = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
    (n == 8).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_call_is_none_outside_an_exec() {
        // (A task inside an exec is covered by the protect root tests: the
        // interpreter checks read it from a task blocked in a permission
        // event.)
        let me = std::process::id() as i32;
        assert_eq!(exec_call(me), None, "reading ourselves: not in an exec");
        let mut child = std::process::Command::new("/bin/sh").args(["-c", "sleep 5"]).spawn().expect("spawn sh");
        // Not stopped in an exec: None (it sleeps in wait4 or nanosleep).
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(exec_call(child.id() as i32), None);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn remote_strings_are_bounded() {
        let me = std::process::id() as i32;
        let s = std::ffi::CString::new("hello").unwrap();
        assert_eq!(read_remote_str(me, s.as_ptr() as u64), Some(("hello".to_string(), false)));
        let long = std::ffi::CString::new("x".repeat(EXEC_ARG_MAX + 10)).unwrap();
        let (got, cut) = read_remote_str(me, long.as_ptr() as u64).unwrap();
        assert!(cut);
        assert_eq!(got.len(), EXEC_ARG_MAX);
        assert_eq!(read_remote_str(me, 8), None, "unmapped address");
    }

    #[test]
    fn syscall_lines() {
        // openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC, 0666) as the kernel prints it.
        let l = b"257 0xffffffffffffff9c 0x7ffd2c6a1f40 0x241 0x1b6 0x0 0x0 0x7ffd2c6a1a28 0x4a3c1e\n";
        let (nr, a) = parse_syscall(l).unwrap();
        assert_eq!(nr, 257);
        assert_eq!(a[0], 0xffffffffffffff9c);
        assert_eq!(a[2], 0x241);
        assert_eq!(parse_syscall(b"running\n"), None);
        assert_eq!(parse_syscall(b"-1 0x7ffd2c6a1a28 0x4a3c1e\n"), None);
        assert_eq!(parse_syscall(b"257 0x1 0x2\n"), None, "truncated");
        assert_eq!(parse_syscall(b"257 1 2 3 4 5 6 7 8"), None, "no 0x");
        assert_eq!(parse_syscall(b""), None);
        assert_eq!(parse_syscall(&[0xff, 0xfe]), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn classify_x86_64() {
        let a = [1, 2, 3, 4, 5, 6];
        assert_eq!(classify(2, &a), OpenCall::Flags(2));
        assert_eq!(classify(257, &a), OpenCall::Flags(3));
        assert_eq!(classify(304, &a), OpenCall::Flags(3));
        assert_eq!(classify(437, &a), OpenCall::OpenHow(3));
        assert_eq!(classify(59, &a), OpenCall::Exec);
        assert_eq!(classify(322, &a), OpenCall::Exec);
        assert_eq!(classify(0, &a), OpenCall::Unknown);
        assert_eq!(classify(426, &a), OpenCall::Unknown, "io_uring_enter");
        match classify(85, &a) {
            OpenCall::Flags(f) => assert!(flags_write(f)),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn write_flags() {
        let w = |f: i32| flags_write(f as u64);
        assert!(!w(libc::O_RDONLY));
        assert!(!w(libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_LARGEFILE | libc::O_DIRECTORY));
        assert!(w(libc::O_WRONLY));
        assert!(w(libc::O_RDWR));
        assert!(w(libc::O_RDONLY | libc::O_CREAT));
        assert!(w(libc::O_RDONLY | libc::O_TRUNC));
        assert!(w(libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT));
        // 0x241 = O_WRONLY|O_CREAT|O_TRUNC (the `>` redirect).
        assert!(flags_write(0x241));
        assert!(flags_write(0x441), "`>>`: O_WRONLY|O_CREAT|O_APPEND");
        assert!(!flags_write(0x8000), "O_LARGEFILE only");
        // Upper bits of the register are ignored.
        assert!(!flags_write(0xffff_ffff_0000_0000));
    }

    #[test]
    fn own_process_syscall_file_parses() {
        // Our own /proc/self/syscall while reading it is "running"-free for
        // another thread: read the main thread of a sleeping child instead.
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = std::fs::read(format!("/proc/{}/syscall", child.id()));
        let _ = child.kill();
        let _ = child.wait();
        match text {
            // Not readable without ptrace rights (non-root in some sandboxes).
            Err(e) => eprintln!("SKIP: {e}"),
            Ok(t) if t.is_empty() => eprintln!("SKIP: empty syscall file"),
            Ok(t) => {
                let (nr, _) = parse_syscall(&t).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&t)));
                assert!(nr >= 0);
                assert_eq!(classify(nr, &[0; 6]), OpenCall::Unknown, "sleeping, not opening");
            }
        }
    }

    #[test]
    fn stack_paths() {
        let mut p = PathBuf32::new(b"/proc/");
        p.num(4_194_304);
        let b = p.finish(b"/syscall").unwrap();
        assert_eq!(&b[..b.iter().position(|&c| c == 0).unwrap()], b"/proc/4194304/syscall");
        let mut p = PathBuf32::new(b"/proc/self/fd/");
        p.num(0);
        let b = p.finish(b"").unwrap();
        assert_eq!(&b[..b.iter().position(|&c| c == 0).unwrap()], b"/proc/self/fd/0");
        let mut p = PathBuf32::new(&[b'a'; 40]);
        p.num(u64::MAX);
        assert!(p.finish(b"/syscall").is_err());
    }
}
