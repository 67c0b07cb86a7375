/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one kernel/user ABI of lancet. Every record the probes put in the ring
 * buffer starts with `struct lancet_header`; `kind` says which struct follows.
 * Userspace gets typed views of these structs from the libbpf-cargo skeleton,
 * so a field changed here changes on both sides at once.
 */
#ifndef __LANCET_H
#define __LANCET_H

#define LANCET_COMM_LEN 16
/* bprm->filename and cwd, each (a path is cut, and flagged, past this). */
#define LANCET_PATH_MAX 256
/* Bytes of argv kept per exec (NUL-separated, as in /proc/<pid>/cmdline). */
#define LANCET_ARGS_MAX 1024
#define LANCET_CGROUP_PATH_MAX 256
/* Path components walked for cwd before giving up (flagged truncated). */
#define LANCET_PATH_DEPTH 24

enum lancet_kind {
	LANCET_KIND_EXEC = 1,
	LANCET_KIND_FORK = 2,
	LANCET_KIND_EXIT = 3,
	LANCET_KIND_CONNECT = 4,
	LANCET_KIND_ACCEPT = 5,
	LANCET_KIND_LISTEN = 6,
	LANCET_KIND_BIND = 7,
	LANCET_KIND_CLOSE = 8,
	LANCET_KIND_CGROUP_MKDIR = 9,
	LANCET_KIND_CGROUP_RMDIR = 10,
};

/* Index into the per-CPU `lost` counters: one per probe. */
enum lancet_probe {
	LANCET_PROBE_EXEC = 0,
	LANCET_PROBE_FORK = 1,
	LANCET_PROBE_EXIT = 2,
	LANCET_PROBE_SOCK_STATE = 3,
	LANCET_PROBE_UDP_CONNECT = 4,
	LANCET_PROBE_UDP_BIND = 5,
	LANCET_PROBE_CGROUP = 6,
	LANCET_PROBE_MAX = 7,
};

/* lancet_exec.flags */
#define LANCET_EXEC_ARGS_TRUNCATED (1U << 0)
#define LANCET_EXEC_CWD_TRUNCATED (1U << 1)
#define LANCET_EXEC_FILENAME_TRUNCATED (1U << 2)

struct lancet_header {
	__u64 ts_ns; /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id; /* cgroup v2 id of the task, or of the socket */
	__u32 kind; /* enum lancet_kind */
	__u32 size; /* bytes of the whole record, header included */
	__u32 pid; /* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 _pad;
	char comm[LANCET_COMM_LEN];
};

/* Variable length: the record ends `args_len` bytes into `args`. */
struct lancet_exec {
	struct lancet_header hdr;
	char pcomm[LANCET_COMM_LEN];
	__u64 exe_ino;
	__u64 exe_fs_magic;
	/* The task's root directory at exec (inode, kernel s_dev): the host's
	 * own root for a container runtime before it enters the container
	 * (runc init before pivot_root), read here because userspace sees the
	 * event only after the process moved on. */
	__u64 root_ino;
	/* cgroup v2 id of the parent (real_parent) at exec: a parent outside
	 * the container is the runtime (podman exec, the first process), read
	 * here because the parent may be gone when userspace sees the event. */
	__u64 parent_cgroup_id;
	__u32 exe_dev;
	__u32 exe_nlink;
	__u32 flags;
	__u16 filename_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 _pad;
	__u32 root_dev;
	/* Mount namespaces (nsfs inode numbers) of the task and of its parent
	 * at exec. The runtime execs `runc init` in the namespace of the runc
	 * that forked it, before entering the container; a container process
	 * that chroots into a bind mount of the host's root is in the
	 * container's namespace, not its outside parent's. */
	__u32 mnt_ns;
	__u32 parent_mnt_ns;
	__u32 _pad2;
	/* The process's start (its thread group leader's start_boottime, ns):
	 * with the pid, which process this was, so a kill after the fact never
	 * hits a later process that reuses the pid. */
	__u64 start_ns;
	char filename[LANCET_PATH_MAX];
	/* Twice the path size: the walk writes a component at an offset below
	 * LANCET_PATH_MAX and lets it run on; only cwd_len bytes are valid. */
	char cwd[LANCET_PATH_MAX * 2];
	char args[LANCET_ARGS_MAX];
};

struct lancet_fork {
	struct lancet_header hdr; /* the parent */
	__u32 child_pid;
	__u32 child_tid;
	__u64 child_start_ns; /* the child's start_boottime */
};

struct lancet_exit {
	struct lancet_header hdr;
	__u32 exit_code; /* raw wait status: code << 8 | signal */
	__u32 _pad;
};

/* connect, accept, listen, bind, close. Ports in host byte order, addresses
 * in network byte order (IPv4 in the first 4 bytes). */
struct lancet_net {
	struct lancet_header hdr;
	__u16 family; /* AF_INET / AF_INET6 */
	__u16 protocol; /* IPPROTO_TCP / IPPROTO_UDP */
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__s32 result; /* 0 or a positive errno */
	__u32 netns; /* network namespace inode */
	/* Close records only (zero in the others). What the socket carried,
	 * from its own counters at the first step of closing, read once per
	 * connection (never per packet): bytes_sent is what its owner wrote
	 * (tcp_sock.bytes_acked, less the SYN, plus what was still queued or
	 * unacknowledged: write_seq - snd_una); bytes_received is
	 * tcp_sock.bytes_received (less a FIN just counted in it). Data the
	 * peer sends after our own FIN is not counted. `opened` says how the
	 * socket came to be: LANCET_KIND_CONNECT or LANCET_KIND_ACCEPT (0:
	 * unknown). Records of builds before these fields end at `netns`;
	 * userspace reads the missing fields as zero. */
	__u64 bytes_sent;
	__u64 bytes_received;
	__u32 opened;
	__u32 _pad;
};

/* The size of a `struct lancet_net` before the close counters. */
#define LANCET_NET_V1_SIZE __builtin_offsetof(struct lancet_net, bytes_sent)

struct lancet_cgroup {
	struct lancet_header hdr;
	__u64 id;
	__u32 level;
	__u32 path_len;
	char path[LANCET_CGROUP_PATH_MAX];
};

/*
 * ---- Enforcement (bpf/enforce.bpf.c) ----
 * A separate object with its own maps and ring buffer, pinned under the pin
 * dir (default /sys/fs/bpf/lancet/) so rules outlive the agent. Every map is
 * keyed by the cgroup v2 id of a container; a cgroup without a `cg_policy`
 * entry is never restricted.
 */

/* header.kind of a `struct lancet_enforce_event` (its own ring buffer). */
#define LANCET_KIND_ENFORCE 64

/* lancet_cg_policy.flags */
/* connect/sendmsg/bind must match `net_allow`, else EPERM. */
#define LANCET_POL_NET_ENFORCE (1U << 0)
/* The same check, reported but never denied (ENFORCE wins when both). */
#define LANCET_POL_NET_AUDIT (1U << 1)
/* Deny all connect/sendmsg/bind and drop packets (cgroup_skb, attached to the
 * container's cgroup while isolated) except loopback and rules in the
 * isolation key space; ends by itself at isolate_until_ns. */
#define LANCET_POL_ISOLATE (1U << 2)
/* SIGKILL a process right after it execs a file that is a memfd / on tmpfs
 * or ramfs (not memfd) / unlinked (nlink 0, not memfd) / in `kill_ino`. */
#define LANCET_POL_KILL_MEMFD_EXEC (1U << 3)
#define LANCET_POL_KILL_TMPFS_EXEC (1U << 4)
#define LANCET_POL_KILL_DELETED_EXEC (1U << 5)
#define LANCET_POL_KILL_EXEC_INO (1U << 6)
/* SIGKILL a process that execs a multi-call file listed in `multicall` under
 * an applet name its `applets` set does not allow (see below). */
#define LANCET_POL_KILL_APPLET (1U << 7)
/* Report each syscall of the container's tasks that fails with EROFS (a
 * write refused by a read-only mount, e.g. protect mode's immutable root):
 * one LANCET_EOP_WRITE_REFUSED record naming the writer, the syscall and
 * its path, at most LANCET_WRITE_REFUSED_BUDGET a second per cgroup. Read
 * by enf_sys_exit, a raw_tp on sys_exit that is attached only while some
 * cgroup has this flag: any sys_exit program puts every syscall of every
 * task on the host on the slow path. */
#define LANCET_POL_REPORT_EROFS (1U << 8)

struct lancet_cg_policy {
	__u32 flags;
	__u32 _pad;
	__u64 isolate_until_ns; /* bpf_ktime_get_boot_ns() deadline; 0 = none */
};

/* lancet_net_key.dir */
#define LANCET_DIR_EGRESS 0 /* connect, sendmsg: addr/port are the peer's */
#define LANCET_DIR_BIND 1 /* bind: addr/port are the local ones */
/* OR-ed into dir: the copy of a rule that also holds during isolation. A
 * separate key space, so a longer prefix without the flag cannot shadow a
 * shorter one with it in the longest-prefix match. */
#define LANCET_DIR_ISOLATION 0x80

/* net_allow value flags */
#define LANCET_ALLOW_DURING_ISOLATION (1U << 0)

/*
 * LPM trie key of `net_allow`. Packed: no padding bytes enter the match.
 * prefixlen counts bits after itself: cgid, proto, dir and port are always
 * matched whole (LANCET_NET_KEY_FIXED_BITS = 64 + 8 + 8 + 16), then the
 * address: an IPv4 CIDR a.b.c.d/n is stored v4-mapped (::ffff:a.b.c.d), so
 * prefixlen = 96 + 96 + n; an IPv6 CIDR /n has prefixlen = 96 + n.
 * proto 0 and port 0 are wildcards, looked up as separate exact keys.
 */
struct lancet_net_key {
	__u32 prefixlen;
	__u64 cgid;
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP, 0 = any */
	__u8 dir; /* LANCET_DIR_* */
	__u16 port; /* network byte order, 0 = any */
	__u8 addr[16]; /* network byte order; IPv4 v4-mapped */
} __attribute__((packed));

#define LANCET_NET_KEY_FIXED_BITS 96

/* `kill_ino` key: dev is the kernel's s_dev (major << 20 | minor), as in
 * lancet_exec.exe_dev. */
struct lancet_kill_key {
	__u64 cgid;
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

/*
 * Multi-call binaries (busybox: one inode, every applet chosen by argv[0]).
 * Exec permission checks see the file, not the name it runs under, so for a
 * file in `multicall` the applet is judged in the kernel at exec: the
 * basename of argv[0] (after one leading '-', which busybox strips for login
 * shells), read from the new image's mm. When that name begins with the
 * file's dispatcher (busybox: "busybox", as in `busybox nc`), the applet is
 * the basename of the next argument instead, for up to LANCET_APPLET_HOPS
 * arguments. The name must be in `applets` for that file and container;
 * an empty, unreadable or too long argument (the scan gives up after
 * ~4 KiB) is never allowed, nor is a bare dispatcher.
 *
 * Names are NUL-padded to LANCET_APPLET_LEN. A name of LANCET_APPLET_LEN
 * bytes or more is cut at LANCET_APPLET_LEN - 1 and its last byte set to
 * LANCET_APPLET_CUT, so it can never equal an allowed name (userspace
 * refuses to allow names that long).
 */
#define LANCET_APPLET_LEN 32
#define LANCET_APPLET_CUT 0xff
#define LANCET_DISPATCHER_LEN 16
#define LANCET_APPLET_HOPS 4

/* `multicall` value, keyed by struct lancet_kill_key (the file). */
struct lancet_multicall {
	char dispatcher[LANCET_DISPATCHER_LEN]; /* NUL-padded; "" = none */
};

/* `applets` key: present when `name` may run from `file` in `file.cgid`. */
struct lancet_applet_key {
	struct lancet_kill_key file;
	char name[LANCET_APPLET_LEN];
};

enum lancet_enforce_op {
	LANCET_EOP_CONNECT4 = 1,
	LANCET_EOP_CONNECT6 = 2,
	LANCET_EOP_SENDMSG4 = 3,
	LANCET_EOP_SENDMSG6 = 4,
	LANCET_EOP_BIND4 = 5,
	LANCET_EOP_BIND6 = 6,
	LANCET_EOP_EXEC_KILL = 7,
	/* A syscall that failed with EROFS (LANCET_POL_REPORT_EROFS). */
	LANCET_EOP_WRITE_REFUSED = 8,
	/* A TCP socket went to LISTEN on a port its container may not bind
	 * (with NET_ENFORCE the process is killed). */
	LANCET_EOP_LISTEN = 9,
};

enum lancet_enforce_reason {
	LANCET_ER_NOT_ALLOWED = 1,
	LANCET_ER_ISOLATED = 2,
	LANCET_ER_MEMFD = 3,
	LANCET_ER_TMPFS = 4,
	LANCET_ER_DELETED = 5,
	LANCET_ER_KILL_INO = 6,
	LANCET_ER_APPLET = 7, /* `applet` names it; `addr` holds the file's name */
	LANCET_ER_READ_ONLY = 8, /* the write met a read-only mount (EROFS) */
};

/* Index into the per-CPU `enforce_stats` counters. */
enum lancet_enforce_stat {
	LANCET_ESTAT_DENY_CONNECT4 = 0, /* = op - 1 for the six socket ops */
	LANCET_ESTAT_DENY_CONNECT6 = 1,
	LANCET_ESTAT_DENY_SENDMSG4 = 2,
	LANCET_ESTAT_DENY_SENDMSG6 = 3,
	LANCET_ESTAT_DENY_BIND4 = 4,
	LANCET_ESTAT_DENY_BIND6 = 5,
	LANCET_ESTAT_AUDIT = 6, /* would have been denied (NET_AUDIT) */
	LANCET_ESTAT_KILL = 7,
	LANCET_ESTAT_KILL_FAILED = 8, /* bpf_send_signal refused */
	LANCET_ESTAT_DROP_INGRESS = 9, /* packets dropped while isolated */
	LANCET_ESTAT_DROP_EGRESS = 10,
	LANCET_ESTAT_EVENTS_LOST = 11, /* enforce_events full */
	LANCET_ESTAT_WRITE_REFUSED = 12, /* EROFS records sent */
	LANCET_ESTAT_WRITE_REFUSED_DROPPED = 13, /* EROFS records over budget */
	LANCET_ESTAT_LISTEN_KILL = 14, /* listeners killed (also in KILL) */
	LANCET_ESTAT_MAX = 15,
};

/* Slots of `enforce_stats`: room for counters to come, so the pinned map
 * keeps its shape when one is added (a map of another size cannot be
 * reused; the agent then replaces it, and its counts start again). */
#define LANCET_ESTAT_SLOTS 32

/* EROFS records per cgroup per second of boot time; the rest are counted
 * in LANCET_ESTAT_WRITE_REFUSED_DROPPED. */
#define LANCET_WRITE_REFUSED_BUDGET 64

/* lancet_enforce_event.wr_flags */
#define LANCET_WR_PATH (1U << 0) /* the syscall has a path argument */
#define LANCET_WR_PATH_UNREADABLE (1U << 1) /* ... that could not be read */
#define LANCET_WR_PATH_CUT (1U << 2) /* path filled the field: maybe cut */
#define LANCET_WR_FD (1U << 3) /* `fd` holds the syscall's fd argument */
#define LANCET_WR_COMPAT (1U << 4) /* an i386 syscall: its own numbers, no path read */

/* One denied (or, with NET_AUDIT, would-be-denied) operation, one kill,
 * or one write refused by a read-only mount.
 * port in host byte order; addr is v4-mapped for IPv4 (family says which).
 * For an applet kill (LANCET_ER_APPLET, family 0) addr holds instead the
 * exec'd file's name (its dentry: the target of a symlink), NUL-padded, cut
 * at 15 bytes, and `applet` the applet as judged: the last argument looked
 * at ("busybox" for a bare `busybox`), NUL-padded, its last byte
 * LANCET_APPLET_CUT when cut (a basename longer than 128 bytes is named by
 * 31 bytes from its last 128), empty when that argument was empty, ended in
 * '/', or could not be read whole. `applet` is all zero in other records.
 * A listener (LANCET_EOP_LISTEN) has its local address and port (0 when
 * listen() is still to pick an ephemeral one: a NET_AUDIT report, or a
 * kill that could not be sent) and in `ino` the socket's inode (as in
 * /proc/net/tcp). */
struct lancet_enforce_event {
	struct lancet_header hdr;
	__u32 op; /* enum lancet_enforce_op */
	__u32 reason; /* enum lancet_enforce_reason */
	__u16 family;
	__u16 proto;
	__u16 port;
	__u16 _pad;
	__u8 addr[16];
	__u64 ino; /* exec kills: the file */
	__u32 dev; /* kernel s_dev */
	__u32 denied; /* 1 denied or killed, 0 audit only (or the kill failed) */
	char applet[LANCET_APPLET_LEN];
	/*
	 * Write refusals (LANCET_EOP_WRITE_REFUSED) only; zero otherwise.
	 * syscall: the x86_64 number (the i386 one with LANCET_WR_COMPAT).
	 * fd: the fd argument (LANCET_WR_FD): the directory a relative path
	 * starts from for *at() syscalls (AT_FDCWD = -100: the cwd), the file
	 * for fd-based ones (write, fchmod, ftruncate, ...). path: the path
	 * argument as the task passed it (relative or not), for rename*,
	 * link* and symlink* the new name. path_len: its bytes before the
	 * NUL.
	 */
	__s32 syscall;
	__s32 fd;
	__u16 path_len;
	__u16 wr_flags; /* LANCET_WR_* */
	__u32 _pad2;
	/* Only in records of LANCET_EOP_WRITE_REFUSED: every other record
	 * ends here (hdr.size = LANCET_ENFORCE_EVENT_SHORT), to keep the ring
	 * for many of them. */
	char path[LANCET_PATH_MAX];
};

#define LANCET_ENFORCE_EVENT_SHORT __builtin_offsetof(struct lancet_enforce_event, path)

#endif /* __LANCET_H */
