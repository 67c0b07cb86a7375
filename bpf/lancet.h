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
	__u32 exe_dev;
	__u32 exe_nlink;
	__u32 flags;
	__u16 filename_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 _pad[3];
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
};

struct lancet_cgroup {
	struct lancet_header hdr;
	__u64 id;
	__u32 level;
	__u32 path_len;
	char path[LANCET_CGROUP_PATH_MAX];
};

#endif /* __LANCET_H */
