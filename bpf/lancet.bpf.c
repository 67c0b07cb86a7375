// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * lancet's sensor probes. Hooks are chosen by cost (shared/DESIGN.md):
 * sched tracepoints for process lifecycle, inet_sock_set_state for TCP,
 * cgroup sock_addr hooks for UDP, cgroup_mkdir/rmdir to see containers come
 * and go. No syscall tracepoints: enabling any of them slows every syscall of
 * every task on the host.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "lancet.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* TCP states (include/net/tcp_states.h) */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8 /* the peer's FIN arrived */
#define TCP_LISTEN 10

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by userspace before load. */
const volatile __u32 self_tgid = 0; /* the agent itself: never reported */
const volatile __u64 wakeup_bytes = 256 * 1024; /* batch wakeups below this */
const volatile __u32 args_max = LANCET_ARGS_MAX;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* Records that did not fit in the ring, per probe. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LANCET_PROBE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Scratch space for records too large for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lancet_exec);
} exec_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lancet_cgroup);
} cgroup_scratch SEC(".maps");

struct path_names {
	const unsigned char *name[LANCET_PATH_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_names);
} names_scratch SEC(".maps");

/*
 * Who owns a TCP socket. TCP state changes after SYN_SENT happen in softirq,
 * where `current` is whoever was interrupted, so the owner is remembered when
 * the socket is seen in process context (connect) or inherited from the
 * listener (accept): a record header filled there, reused for later records.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock * */
	__type(value, struct lancet_header);
} sock_owners SEC(".maps");

struct listen_key {
	__u32 netns;
	__u16 port;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listen_key);
	__type(value, struct lancet_header);
} listeners SEC(".maps");

/* Keep the ABI structs in BTF so the skeleton generates Rust views of them. */
struct lancet_fork _lancet_fork = {};
struct lancet_exit _lancet_exit = {};
struct lancet_net _lancet_net = {};
struct lancet_exec _lancet_exec = {};
struct lancet_cgroup _lancet_cgroup = {};

static __always_inline void count_lost(__u32 probe)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &probe);
	if (n)
		*n += 1;
}

/* Wake the reader only once enough has queued; it also polls on a timer. */
static __always_inline __u64 rb_flags(void)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return avail >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void fill_header_task(struct lancet_header *h, __u32 kind, __u32 size,
					     struct task_struct *task)
{
	__u64 ugid = bpf_get_current_uid_gid();
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->kind = kind;
	h->size = size;
	h->pid = BPF_CORE_READ(task, tgid);
	h->tid = BPF_CORE_READ(task, pid);
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = (__u32)ugid;
	h->gid = ugid >> 32;
	h->_pad = 0;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

static __always_inline bool is_self(void)
{
	return self_tgid && (bpf_get_current_pid_tgid() >> 32) == self_tgid;
}

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	struct path_names *names;
	char *out;
	__u32 n;
	__u32 off;
	bool complete;
};

/* One step up the tree: a name, or a hop from a mount root to its mountpoint. */
static long walk_up(__u64 i, struct walk_ctx *c)
{
	/* Plain locals: BPF_CORE_READ must not relocate walk_ctx itself. */
	struct dentry *dentry = c->dentry;
	struct vfsmount *vfsmnt = c->vfsmnt;
	struct mount *mnt = c->mnt;

	if (dentry == c->root_dentry && vfsmnt == c->root_mnt) {
		c->complete = true;
		return 1;
	}
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (mnt_parent == mnt || !mnt_parent) {
			/* Global root reached: the task root lies elsewhere. */
			c->complete = true;
			return 1;
		}
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->mnt = mnt_parent;
		c->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	__u64 n = c->n;
	if (n >= LANCET_PATH_DEPTH)
		return 1;
	asm volatile("%0 &= 31" : "+r"(n)); /* LANCET_PATH_DEPTH <= 32 */
	c->names->name[n] = BPF_CORE_READ(dentry, d_name.name);
	c->n = n + 1;
	c->dentry = parent;
	return 0;
}

/* Append "/<name>" for the components collected, root first. */
static long write_component(__u64 i, struct walk_ctx *c)
{
	if (i >= c->n)
		return 1;
	__u64 j = c->n - 1 - i;
	if (j >= LANCET_PATH_DEPTH)
		return 1;
	asm volatile("%0 &= 31" : "+r"(j)); /* LANCET_PATH_DEPTH <= 32 */
	__u64 off = c->off;
	if (off >= LANCET_PATH_MAX - 1)
		return 1;
	/* Masks the verifier can see: clang would otherwise fold them. */
	__u64 slash = off;
	asm volatile("%0 &= 255" : "+r"(slash));
	c->out[slash] = '/';
	__u64 at = off + 1;
	asm volatile("%0 &= 255" : "+r"(at));
	const unsigned char *name = c->names->name[j];
	long r = bpf_probe_read_kernel_str(&c->out[at], LANCET_PATH_MAX, name);
	off += 1;
	if (r > 1)
		off += r - 1;
	c->off = off;
	return 0;
}

/*
 * Write the path of `dentry`/`vfsmnt` relative to the task's root `root` into
 * `out` (2 * LANCET_PATH_MAX bytes). Mount points are crossed; the walk stops
 * at the task root, so a container process gets its container's view.
 * Returns the length (without NUL). Needs bpf_loop (5.17).
 */
static __always_inline __u32 walk_path(struct dentry *dentry, struct vfsmount *vfsmnt,
				       const struct path *root, char *out, __u32 *flags)
{
	__u32 zero = 0;
	struct path_names *names = bpf_map_lookup_elem(&names_scratch, &zero);
	if (!names)
		return 0;
	struct walk_ctx c = {
		.dentry = dentry,
		.vfsmnt = vfsmnt,
		.mnt = container_of(vfsmnt, struct mount, mnt),
		.root_dentry = BPF_CORE_READ(root, dentry),
		.root_mnt = BPF_CORE_READ(root, mnt),
		.names = names,
		.out = out,
	};
	bpf_loop(LANCET_PATH_DEPTH * 2, walk_up, &c, 0);
	if (!c.complete)
		*flags |= LANCET_EXEC_CWD_TRUNCATED;
	if (c.n == 0) {
		out[0] = '/';
		return 1;
	}
	bpf_loop(LANCET_PATH_DEPTH, write_component, &c, 0);
	__u32 off = c.off;
	if (off >= LANCET_PATH_MAX - 1) {
		*flags |= LANCET_EXEC_CWD_TRUNCATED;
		off = LANCET_PATH_MAX - 1;
	}
	return off;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(lancet_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (is_self())
		return 0;
	__u32 zero = 0;
	struct lancet_exec *e = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!e)
		return 0;
	fill_header_task(&e->hdr, LANCET_KIND_EXEC, 0, p);
	BPF_CORE_READ_STR_INTO(&e->pcomm, p, real_parent, comm);
	e->flags = 0;

	struct file *file = BPF_CORE_READ(bprm, file);
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	e->exe_ino = BPF_CORE_READ(inode, i_ino);
	e->exe_dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->exe_nlink = BPF_CORE_READ(inode, __i_nlink);
	e->exe_fs_magic = BPF_CORE_READ(inode, i_sb, s_magic);

	long r = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	if (r < 0)
		r = 1;
	if (r >= (long)sizeof(e->filename))
		e->flags |= LANCET_EXEC_FILENAME_TRUNCATED;
	e->filename_len = r - 1;

	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	struct path root;
	BPF_CORE_READ_INTO(&root, fs, root);
	e->root_ino = BPF_CORE_READ(root.dentry, d_inode, i_ino);
	e->root_dev = BPF_CORE_READ(root.dentry, d_sb, s_dev);
	e->parent_cgroup_id = BPF_CORE_READ(p, real_parent, cgroups, dfl_cgrp, kn, id);
	e->mnt_ns = BPF_CORE_READ(p, nsproxy, mnt_ns, ns.inum);
	e->parent_mnt_ns = BPF_CORE_READ(p, real_parent, nsproxy, mnt_ns, ns.inum);
	e->_pad2 = 0;
	e->start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	e->cwd_len = walk_path(BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt), &root,
			       e->cwd, &e->flags);

	/* argv lives in the new mm, already populated at this point. */
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 len = arg_end - arg_start;
	__u32 max = args_max < LANCET_ARGS_MAX ? args_max : LANCET_ARGS_MAX;
	if (len > max) {
		len = max;
		e->flags |= LANCET_EXEC_ARGS_TRUNCATED;
	}
	len &= (LANCET_ARGS_MAX - 1) | LANCET_ARGS_MAX;
	if (len > LANCET_ARGS_MAX)
		len = LANCET_ARGS_MAX;
	if (bpf_probe_read_user(e->args, len, (void *)arg_start) < 0)
		len = 0;
	e->args_len = len;

	__u64 size = offsetof(struct lancet_exec, args) + len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	e->hdr.size = size;
	if (bpf_ringbuf_output(&events, e, size, rb_flags()) < 0)
		count_lost(LANCET_PROBE_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(lancet_fork, struct task_struct *parent, struct task_struct *child)
{
	/* Threads share the process; only new processes are reported. */
	if (BPF_CORE_READ(child, tgid) != BPF_CORE_READ(child, pid))
		return 0;
	if (is_self())
		return 0;
	struct lancet_fork *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(LANCET_PROBE_FORK);
		return 0;
	}
	fill_header_task(&e->hdr, LANCET_KIND_FORK, sizeof(*e), parent);
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->child_tid = BPF_CORE_READ(child, pid);
	e->child_start_ns = BPF_CORE_READ(child, start_boottime);
	bpf_ringbuf_submit(e, rb_flags());
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(lancet_exit, struct task_struct *p)
{
	/* Report the process, once: when its last thread goes. */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	if (is_self())
		return 0;
	struct lancet_exit *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(LANCET_PROBE_EXIT);
		return 0;
	}
	fill_header_task(&e->hdr, LANCET_KIND_EXIT, sizeof(*e), p);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->_pad = 0;
	bpf_ringbuf_submit(e, rb_flags());
	return 0;
}

static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* A close record's counters (see struct lancet_net). `fin_in`: the state
 * change is the peer's FIN, which the kernel just counted in
 * bytes_received as one sequence number. */
static __always_inline void sock_totals(const struct sock *sk, struct lancet_net *e, bool fin_in)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u64 acked = BPF_CORE_READ(tp, bytes_acked);
	__u32 queued = BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una);
	__u64 received = BPF_CORE_READ(tp, bytes_received);

	/* The SYN is acknowledged like a byte of data. */
	e->bytes_sent = (acked ? acked - 1 : 0) + queued;
	e->bytes_received = (fin_in && received) ? received - 1 : received;
}

static __always_inline void emit_sock(const struct sock *sk, __u32 kind, const struct lancet_header *o,
				      __s32 result, int newstate)
{
	struct lancet_net *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(LANCET_PROBE_SOCK_STATE);
		return;
	}
	e->hdr = *o;
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->family = family;
	e->protocol = IPPROTO_TCP;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((__u32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->daddr, sk, __sk_common.skc_daddr);
	}
	e->result = result;
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->bytes_sent = 0;
	e->bytes_received = 0;
	e->opened = 0;
	e->_pad = 0;
	if (kind == LANCET_KIND_CLOSE) {
		/* The owner's kind says how the socket was opened. */
		e->opened = o->kind;
		sock_totals(sk, e, newstate == TCP_CLOSE_WAIT);
	}
	bpf_ringbuf_submit(e, rb_flags());
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(lancet_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u64 key = (__u64)sk;
	struct lancet_header owner;

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		/* connect(): process context. Reported once the outcome is known.
		 * The owner's kind remembers how the socket was opened. */
		if (is_self())
			return 0;
		fill_header_task(&owner, LANCET_KIND_CONNECT, 0, bpf_get_current_task_btf());
		bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_CLOSE && newstate == TCP_LISTEN) {
		/* listen(): process context. */
		if (is_self())
			return 0;
		fill_header_task(&owner, 0, 0, bpf_get_current_task_btf());
		struct listen_key lk = {
			.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
			.port = BPF_CORE_READ(sk, __sk_common.skc_num),
		};
		bpf_map_update_elem(&listeners, &lk, &owner, BPF_ANY);
		emit_sock(sk, LANCET_KIND_LISTEN, &owner, 0, newstate);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		struct lancet_header *o = bpf_map_lookup_elem(&sock_owners, &key);
		if (!o)
			return 0;
		if (newstate == TCP_ESTABLISHED) {
			emit_sock(sk, LANCET_KIND_CONNECT, o, 0, newstate);
		} else {
			__s32 err = BPF_CORE_READ(sk, sk_err);
			emit_sock(sk, LANCET_KIND_CONNECT, o, err ? err : 111 /* ECONNREFUSED */, newstate);
			bpf_map_delete_elem(&sock_owners, &key);
		}
		return 0;
	}
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* Softirq: the owner is whoever listens on the port. */
		struct listen_key lk = {
			.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
			.port = BPF_CORE_READ(sk, __sk_common.skc_num),
		};
		struct lancet_header *l = bpf_map_lookup_elem(&listeners, &lk);
		if (l) {
			owner = *l;
		} else {
			__builtin_memset(&owner, 0, sizeof(owner));
		}
		owner.cgroup_id = sock_cgroup_id(sk);
		owner.kind = LANCET_KIND_ACCEPT;
		bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		emit_sock(sk, LANCET_KIND_ACCEPT, &owner, 0, newstate);
		return 0;
	}
	if (newstate == TCP_CLOSE && oldstate == TCP_LISTEN) {
		struct listen_key lk = {
			.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
			.port = BPF_CORE_READ(sk, __sk_common.skc_num),
		};
		bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}
	if (oldstate == TCP_ESTABLISHED) {
		/* The first step of closing, from either side: reported here, where
		 * the local port is still bound (at TCP_CLOSE it reads 0). */
		struct lancet_header *o = bpf_map_lookup_elem(&sock_owners, &key);
		if (o)
			emit_sock(sk, LANCET_KIND_CLOSE, o, 0, newstate);
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&sock_owners, &key);
	return 0;
}

/* A UDP record: `local` or `remote` address as four words (IPv4 in the first). */
static __always_inline void emit_udp(__u32 kind, __u32 probe, bool v6, __u16 sport, __u16 dport,
				     const __u32 local[4], const __u32 remote[4])
{
	struct lancet_net *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(probe);
		return;
	}
	fill_header_task(&e->hdr, kind, sizeof(*e), bpf_get_current_task_btf());
	e->family = v6 ? AF_INET6 : AF_INET;
	e->protocol = IPPROTO_UDP;
	e->sport = sport;
	e->dport = dport;
	__builtin_memcpy(e->saddr, local, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, remote, sizeof(e->daddr));
	e->result = 0;
	e->netns = 0;
	e->bytes_sent = 0;
	e->bytes_received = 0;
	e->opened = 0;
	e->_pad = 0;
	bpf_ringbuf_submit(e, rb_flags());
}

/* UDP has no state machine to watch: see connect() on datagram sockets here.
 * TCP connects are reported from inet_sock_set_state with their outcome. */
/* Each hook may read only its own family's context fields, so the address
 * is copied out here, with constant offsets. */
SEC("cgroup/connect4")
int lancet_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM && !is_self()) {
		__u32 none[4] = {}, remote[4] = { ctx->user_ip4 };
		emit_udp(LANCET_KIND_CONNECT, LANCET_PROBE_UDP_CONNECT, false, 0, bpf_ntohs(ctx->user_port), none,
			 remote);
	}
	return 1;
}

SEC("cgroup/connect6")
int lancet_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM && !is_self()) {
		__u32 none[4] = {}, remote[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
						  ctx->user_ip6[3] };
		emit_udp(LANCET_KIND_CONNECT, LANCET_PROBE_UDP_CONNECT, true, 0, bpf_ntohs(ctx->user_port), none,
			 remote);
	}
	return 1;
}

/* Unconnected UDP sends (`sendto` with an address: musl's DNS, statsd,
 * syslog) have no connect() to see: each is reported as a UDP connect to its
 * peer, at most once per cgroup and peer every UDP_SEND_EVERY_NS, so a busy
 * sender costs one LRU lookup per send, not a record. (The hook runs only
 * for sends that name an address.) */
#define UDP_SEND_EVERY_NS (10ULL * 1000000000ULL)

struct udp_send_key {
	__u64 cgroup_id;
	__u32 daddr[4];
	__u16 dport;
	__u16 family;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct udp_send_key);
	__type(value, __u64); /* when it was last reported */
} udp_sends SEC(".maps");

static __always_inline void udp_send(bool v6, __u16 dport, const __u32 remote[4])
{
	struct udp_send_key k = {
		.cgroup_id = bpf_get_current_cgroup_id(),
		.dport = dport,
		.family = v6 ? AF_INET6 : AF_INET,
	};
	__builtin_memcpy(k.daddr, remote, sizeof(k.daddr));
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&udp_sends, &k);
	if (last && now - *last < UDP_SEND_EVERY_NS)
		return;
	bpf_map_update_elem(&udp_sends, &k, &now, BPF_ANY);
	__u32 none[4] = {};
	emit_udp(LANCET_KIND_CONNECT, LANCET_PROBE_UDP_CONNECT, v6, 0, dport, none, remote);
}

SEC("cgroup/sendmsg4")
int lancet_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM && !is_self()) {
		__u32 remote[4] = { ctx->user_ip4 };
		udp_send(false, bpf_ntohs(ctx->user_port), remote);
	}
	return 1;
}

SEC("cgroup/sendmsg6")
int lancet_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM && !is_self()) {
		__u32 remote[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
		udp_send(true, bpf_ntohs(ctx->user_port), remote);
	}
	return 1;
}

/* A UDP server is a bound datagram socket; TCP servers show up as listen. */
SEC("cgroup/post_bind4")
int lancet_post_bind4(struct bpf_sock *sk)
{
	/* Each field read once: clang turns a second read into pointer
	 * arithmetic on ctx, which the verifier refuses. */
	__u32 port = sk->src_port;
	if (sk->type == SOCK_DGRAM && port && !is_self()) {
		__u32 none[4] = {}, local[4] = { sk->src_ip4 };
		emit_udp(LANCET_KIND_BIND, LANCET_PROBE_UDP_BIND, false, port, 0, local, none);
	}
	return 1;
}

SEC("cgroup/post_bind6")
int lancet_post_bind6(struct bpf_sock *sk)
{
	__u32 port = sk->src_port;
	if (sk->type == SOCK_DGRAM && port && !is_self()) {
		__u32 none[4] = {}, local[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3] };
		emit_udp(LANCET_KIND_BIND, LANCET_PROBE_UDP_BIND, true, port, 0, local, none);
	}
	return 1;
}

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/*
 * Run once at start-up: every TCP socket already listening, with the process
 * that holds it, goes into `listeners`, so connections accepted by servers
 * started before the agent are attributed to their process too.
 */
SEC("iter/task_file")
int lancet_seed_listeners(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP ||
	    BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return 0;
	struct listen_key lk = {
		.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
		.port = BPF_CORE_READ(sk, __sk_common.skc_num),
	};
	struct lancet_header owner = {
		.cgroup_id = sock_cgroup_id(sk),
		.pid = BPF_CORE_READ(task, tgid),
		.tid = BPF_CORE_READ(task, pid),
		.ppid = BPF_CORE_READ(task, real_parent, tgid),
		.uid = BPF_CORE_READ(task, cred, uid.val),
		.gid = BPF_CORE_READ(task, cred, gid.val),
	};
	BPF_CORE_READ_STR_INTO(&owner.comm, task, comm);
	/* Never replace an owner seen live by the listen hook. */
	bpf_map_update_elem(&listeners, &lk, &owner, BPF_NOEXIST);
	return 0;
}

static __always_inline void emit_cgroup(struct cgroup *cgrp, const char *path, __u32 kind)
{
	/* Only the unified (v2) hierarchy: that is where BPF cgroup ids live. */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return;
	__u32 zero = 0;
	struct lancet_cgroup *e = bpf_map_lookup_elem(&cgroup_scratch, &zero);
	if (!e)
		return;
	fill_header_task(&e->hdr, kind, sizeof(*e), bpf_get_current_task_btf());
	e->id = BPF_CORE_READ(cgrp, kn, id);
	e->level = BPF_CORE_READ(cgrp, level);
	long r = bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	e->path_len = r > 0 ? r - 1 : 0;
	if (bpf_ringbuf_output(&events, e, sizeof(*e), BPF_RB_FORCE_WAKEUP) < 0)
		count_lost(LANCET_PROBE_CGROUP);
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(lancet_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	emit_cgroup(cgrp, path, LANCET_KIND_CGROUP_MKDIR);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(lancet_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	emit_cgroup(cgrp, path, LANCET_KIND_CGROUP_RMDIR);
	return 0;
}
