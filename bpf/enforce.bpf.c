// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * lancet's kernel enforcement backends, one object apart from the sensor so
 * its maps and links can be pinned (and outlive the agent) on their own.
 *
 * The socket hooks and the exec hook are attached once, at the cgroup v2
 * root or globally, and find the container by bpf_get_current_cgroup_id() in
 * `cg_policy`: a cgroup without an entry pays one hash miss and is never
 * restricted. The cgroup_skb programs are attached only to the cgroup of a
 * container while it is isolated, so no other cgroup pays per packet.
 *
 * The listener check (tp_btf/inet_sock_set_state, with its record's port
 * completed at tp_btf/signal_deliver) is global too, and costs a compare
 * per TCP state change. The report of writes refused by a read-only mount
 * (raw_tp/sys_exit) is attached only while some cgroup wants it.
 *
 * Minimum kernels: cgroup/connect4,6 4.17; cgroup/sendmsg4,6 4.18;
 * cgroup/bind4,6 4.17; cgroup_skb 4.10; bpf_skb_cgroup_id 4.18; LPM trie
 * 4.11; ring buffer 5.8; tp_btf 5.5; raw_tp 4.17; bpf_send_signal 5.3;
 * bpf_get_current_task_btf 5.11; bpf_link for cgroups 5.7.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "lancet.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define SIGKILL 9
#define EROFS 30
#define TCP_LISTEN 10
#define LOOPBACK_IFINDEX 1 /* "lo" is ifindex 1 in every network namespace */

#define TMPFS_MAGIC 0x01021994
#define RAMFS_MAGIC 0x858458f6
#define HUGETLBFS_MAGIC 0x958458f6

#define KILL_FLAGS                                                                                             \
	(LANCET_POL_KILL_MEMFD_EXEC | LANCET_POL_KILL_TMPFS_EXEC | LANCET_POL_KILL_DELETED_EXEC |              \
	 LANCET_POL_KILL_EXEC_INO | LANCET_POL_KILL_APPLET)
#define NET_KEY_FULL_BITS (LANCET_NET_KEY_FIXED_BITS + 128)

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Per-container policy, keyed by the container's cgroup v2 id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct lancet_cg_policy);
} cg_policy SEC(".maps");

/* Per-container network allow-lists (see struct lancet_net_key). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lancet_net_key);
	__type(value, __u32); /* LANCET_ALLOW_* */
} net_allow SEC(".maps");

/* Files whose exec must be killed, per container. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lancet_kill_key);
	__type(value, __u32);
} kill_ino SEC(".maps");

/* Multi-call files whose applets are checked at exec, per container (see
 * lancet.h). Preallocated, like every hash map here: tracing programs on
 * kernels before 6.1 may use no other kind. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lancet_kill_key);
	__type(value, struct lancet_multicall);
} multicall SEC(".maps");

/* The applets allowed per multi-call file and container. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct lancet_applet_key);
	__type(value, __u32);
} applets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} enforce_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LANCET_ESTAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} enforce_stats SEC(".maps");

/* The EROFS records of the current second, per cgroup (not pinned: a
 * budget, nothing to keep). LRU: a cgroup that stops writing ages out. */
struct write_budget {
	__u64 second; /* boot time / 1 s */
	__u32 sent;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct write_budget);
} write_budget SEC(".maps");

/* Listeners killed before listen() picked their port, by thread id: the
 * record waits for the SIGKILL to be delivered (enf_listen_port), when
 * listen() has returned and the port is known. Not pinned. */
struct listen_pending {
	__u64 sk;
	__u64 cgid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct listen_pending);
} listen_pending SEC(".maps");

/* Keep the ABI structs in BTF so the skeleton generates Rust views of them. */
struct lancet_enforce_event _lancet_enforce_event = {};
struct lancet_net_key _lancet_net_key = {};
struct lancet_kill_key _lancet_kill_key = {};
struct lancet_cg_policy _lancet_cg_policy = {};
struct lancet_multicall _lancet_multicall = {};
struct lancet_applet_key _lancet_applet_key = {};

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&enforce_stats, &stat);
	if (n)
		*n += 1;
}

static __always_inline bool isolated_now(const struct lancet_cg_policy *p)
{
	if (!(p->flags & LANCET_POL_ISOLATE))
		return false;
	__u64 until = p->isolate_until_ns;
	return until == 0 || bpf_ktime_get_boot_ns() < until;
}

/*
 * Records are rare (a denial or a kill), so they are submitted with the
 * ring's default, adaptive wakeup: the reader is woken at once when it has
 * caught up, and not again while it is still behind (a burst costs one
 * wakeup, not one per record).
 */
static __always_inline struct lancet_enforce_event *new_record(struct task_struct *task, __u64 cgid, __u32 op,
							       __u32 reason, bool with_path)
{
	/* A constant size per call site (the verifier wants one): the short
	 * record, or the whole one with its path. */
	__u32 size = with_path ? sizeof(struct lancet_enforce_event) : LANCET_ENFORCE_EVENT_SHORT;
	struct lancet_enforce_event *e = bpf_ringbuf_reserve(&enforce_events, size, 0);
	if (!e) {
		count(LANCET_ESTAT_EVENTS_LOST);
		return NULL;
	}
	__u64 ugid = bpf_get_current_uid_gid();
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.cgroup_id = cgid;
	e->hdr.kind = LANCET_KIND_ENFORCE;
	e->hdr.size = size;
	e->hdr.pid = BPF_CORE_READ(task, tgid);
	e->hdr.tid = BPF_CORE_READ(task, pid);
	e->hdr.ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->hdr.uid = (__u32)ugid;
	e->hdr.gid = ugid >> 32;
	e->hdr._pad = 0;
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));
	e->op = op;
	e->reason = reason;
	e->family = 0;
	e->proto = 0;
	e->port = 0;
	e->_pad = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	e->ino = 0;
	e->dev = 0;
	e->denied = 0;
	__builtin_memset(e->applet, 0, sizeof(e->applet));
	e->syscall = 0;
	e->fd = 0;
	e->path_len = 0;
	e->wr_flags = 0;
	e->_pad2 = 0;
	return e;
}

/* A short record (every op but write refusals). */
static __always_inline struct lancet_enforce_event *new_event(struct task_struct *task, __u64 cgid, __u32 op,
							      __u32 reason)
{
	return new_record(task, cgid, op, reason, false);
}

/* The peer (or, for bind, the local address) is the host itself: loopback,
 * or the unspecified address, which connect() treats as loopback. None of it
 * leaves the container's network namespace, so it is not a network flow. */
static __always_inline bool is_local(const __u8 a[16], bool egress)
{
	bool zero10 = true;
#pragma unroll
	for (int i = 0; i < 10; i++)
		if (a[i])
			zero10 = false;
	if (!zero10)
		return false;
	if (a[10] == 0xff && a[11] == 0xff) {
		/* v4-mapped: 127.0.0.0/8, and 0.0.0.0 for connect */
		if (a[12] == 127)
			return true;
		return egress && !a[12] && !a[13] && !a[14] && !a[15];
	}
	if (a[10] || a[11] || a[12] || a[13] || a[14])
		return false;
	/* ::1, and :: for connect */
	return a[15] == 1 || (egress && a[15] == 0);
}

/* At most four exact-length lookups: (proto, port), (proto, any),
 * (any, port), (any, any). `k` has cgid, dir and addr set. */
static __always_inline bool allowed(struct lancet_net_key *k, __u8 proto, __u16 port)
{
	k->prefixlen = NET_KEY_FULL_BITS;
	k->proto = proto;
	k->port = port;
	if (bpf_map_lookup_elem(&net_allow, k))
		return true;
	if (port) {
		k->port = 0;
		if (bpf_map_lookup_elem(&net_allow, k))
			return true;
	}
	if (proto) {
		k->proto = 0;
		k->port = port;
		if (bpf_map_lookup_elem(&net_allow, k))
			return true;
		if (port) {
			k->port = 0;
			if (bpf_map_lookup_elem(&net_allow, k))
				return true;
		}
	}
	return false;
}

/*
 * The verdict for one connect/sendmsg/bind: 1 lets it through, 0 makes the
 * syscall fail with EPERM. `port` in network byte order.
 */
static __always_inline int sock_verdict(__u32 op, __u8 dir, bool v6, __u32 proto, __u16 port, const __u8 addr[16])
{
	__u64 cgid = bpf_get_current_cgroup_id();
	struct lancet_cg_policy *pol = bpf_map_lookup_elem(&cg_policy, &cgid);
	if (!pol)
		return 1;
	__u32 flags = pol->flags;
	bool isolated = isolated_now(pol);
	if (!isolated && !(flags & (LANCET_POL_NET_ENFORCE | LANCET_POL_NET_AUDIT)))
		return 1;
	/* A bind to port 0 picks an ephemeral port: nothing listens yet, and
	 * what the socket then sends goes through connect/sendmsg. */
	if (dir == LANCET_DIR_BIND && port == 0)
		return 1;
	if (is_local(addr, dir == LANCET_DIR_EGRESS))
		return 1;

	struct lancet_net_key k = {};
	k.cgid = cgid;
	k.dir = isolated ? (dir | LANCET_DIR_ISOLATION) : dir;
	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	if (allowed(&k, proto, port))
		return 1;

	bool deny = isolated || (flags & LANCET_POL_NET_ENFORCE);
	count(deny ? op - 1 : LANCET_ESTAT_AUDIT);
	struct lancet_enforce_event *e = new_event(bpf_get_current_task_btf(), cgid, op,
						   isolated ? LANCET_ER_ISOLATED : LANCET_ER_NOT_ALLOWED);
	if (e) {
		e->family = v6 ? AF_INET6 : AF_INET;
		e->proto = proto;
		e->port = bpf_ntohs(port);
		__builtin_memcpy(e->addr, addr, sizeof(e->addr));
		e->denied = deny;
		bpf_ringbuf_submit(e, 0);
	}
	return deny ? 0 : 1;
}

/* Each hook may read only its own family's context fields, each once: clang
 * turns a second read into pointer arithmetic on ctx, which the verifier
 * refuses. */
static __always_inline void mapped4(__u8 addr[16], __u32 ip4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], &ip4, 4);
}

static __always_inline int verdict4(struct bpf_sock_addr *ctx, __u32 op, __u8 dir)
{
	__u32 ip4 = ctx->user_ip4;
	__u32 port = ctx->user_port;
	__u32 proto = ctx->protocol;
	__u8 addr[16];
	mapped4(addr, ip4);
	return sock_verdict(op, dir, false, proto, (__u16)port, addr);
}

static __always_inline int verdict6(struct bpf_sock_addr *ctx, __u32 op, __u8 dir)
{
	__u32 ip6[4];
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	__u32 port = ctx->user_port;
	__u32 proto = ctx->protocol;
	__u8 addr[16];
	__builtin_memcpy(addr, ip6, sizeof(addr));
	return sock_verdict(op, dir, true, proto, (__u16)port, addr);
}

/* connect() on TCP and UDP sockets (4.17). */
SEC("cgroup/connect4")
int enf_connect4(struct bpf_sock_addr *ctx)
{
	return verdict4(ctx, LANCET_EOP_CONNECT4, LANCET_DIR_EGRESS);
}

SEC("cgroup/connect6")
int enf_connect6(struct bpf_sock_addr *ctx)
{
	return verdict6(ctx, LANCET_EOP_CONNECT6, LANCET_DIR_EGRESS);
}

/* sendto()/sendmsg() with an address on an unconnected UDP socket (4.18);
 * a connected socket was checked at connect. */
SEC("cgroup/sendmsg4")
int enf_sendmsg4(struct bpf_sock_addr *ctx)
{
	return verdict4(ctx, LANCET_EOP_SENDMSG4, LANCET_DIR_EGRESS);
}

SEC("cgroup/sendmsg6")
int enf_sendmsg6(struct bpf_sock_addr *ctx)
{
	return verdict6(ctx, LANCET_EOP_SENDMSG6, LANCET_DIR_EGRESS);
}

/* bind() to an explicit port (4.17): who may listen where. */
SEC("cgroup/bind4")
int enf_bind4(struct bpf_sock_addr *ctx)
{
	return verdict4(ctx, LANCET_EOP_BIND4, LANCET_DIR_BIND);
}

SEC("cgroup/bind6")
int enf_bind6(struct bpf_sock_addr *ctx)
{
	return verdict6(ctx, LANCET_EOP_BIND6, LANCET_DIR_BIND);
}

/*
 * ---- Listeners ----
 * cgroup/bind4,6 judge explicit binds, but a bind to port 0 takes an
 * ephemeral port, listen() on an unbound socket binds one itself with no
 * bind hook, and no cgroup hook sees listen(). A TCP socket going to
 * LISTEN is judged here instead, like a bind of its local address and
 * port (loopback exempt). listen() runs in the caller's context
 * (__sys_listen -> inet_listen -> inet_csk_listen_start, which announces
 * the state under the socket lock), so current is the task that listens:
 * with NET_ENFORCE it is SIGKILLed (bpf_send_signal, delivered as listen()
 * returns to user space: the process never runs another instruction, though
 * a peer's handshake may complete in that instant); with NET_AUDIT only,
 * reported.
 *
 * inet_csk_listen_start announces LISTEN *before* get_port() picks the
 * port of an unbound socket: such a listener reads port 0 here, and only
 * a rule for any port can allow it. For a kill, its record waits (in
 * `listen_pending`) for the SIGKILL to be delivered (enf_listen_port), by
 * when listen() has returned with the port; an audit report says port 0.
 *
 * What the kill cannot reach: a socket shared with another process (fork
 * or SCM_RIGHTS before listen()) stays open in that process; the record
 * names the socket's inode so it can be found and destroyed.
 */
static __always_inline void emit_listen(struct task_struct *task, __u64 cgid, const struct sock *sk, __u16 family,
					const __u8 addr[16], __u16 port, bool killed)
{
	struct lancet_enforce_event *e = new_event(task, cgid, LANCET_EOP_LISTEN, LANCET_ER_NOT_ALLOWED);
	if (!e)
		return;
	e->family = family;
	e->proto = IPPROTO_TCP;
	e->port = port;
	__builtin_memcpy(e->addr, addr, sizeof(e->addr));
	e->ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	e->denied = killed;
	bpf_ringbuf_submit(e, 0);
}

/* The local address of `sk`, v4-mapped for IPv4; false for other families. */
static __always_inline bool local_addr(const struct sock *sk, __u16 family, __u8 addr[16])
{
	if (family == AF_INET) {
		mapped4(addr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		return true;
	}
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO((struct in6_addr *)addr, sk, __sk_common.skc_v6_rcv_saddr);
		return true;
	}
	return false;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(enf_listen, const struct sock *sk, const int oldstate, const int newstate)
{
	if (newstate != TCP_LISTEN)
		return 0;
	__u64 cgid = bpf_get_current_cgroup_id();
	struct lancet_cg_policy *pol = bpf_map_lookup_elem(&cg_policy, &cgid);
	if (!pol)
		return 0;
	__u32 flags = pol->flags;
	if (!(flags & (LANCET_POL_NET_ENFORCE | LANCET_POL_NET_AUDIT)))
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	struct lancet_net_key k = {};
	__u8 addr[16];
	if (!local_addr(sk, family, addr))
		return 0;
	if (is_local(addr, false))
		return 0;
	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	k.cgid = cgid;
	k.dir = LANCET_DIR_BIND;
	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	if (allowed(&k, IPPROTO_TCP, bpf_htons(port)))
		return 0;

	long r = -1;
	if (flags & LANCET_POL_NET_ENFORCE) {
		r = bpf_send_signal(SIGKILL);
		count(r == 0 ? LANCET_ESTAT_KILL : LANCET_ESTAT_KILL_FAILED);
		if (r == 0)
			count(LANCET_ESTAT_LISTEN_KILL);
	} else {
		count(LANCET_ESTAT_AUDIT);
	}
	if (port == 0 && r == 0) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		struct listen_pending p = { .sk = (__u64)sk, .cgid = cgid };
		if (bpf_map_update_elem(&listen_pending, &tid, &p, BPF_ANY) == 0)
			return 0;
	}
	emit_listen(bpf_get_current_task_btf(), cgid, sk, family, addr, port, r == 0);
	return 0;
}

/* The record of a listener killed before its port was picked: sent as the
 * SIGKILL is delivered to the task that called listen(), which has
 * returned from it with the port bound (its socket is still open: files
 * close later, in do_exit). */
SEC("tp_btf/signal_deliver")
int BPF_PROG(enf_listen_port, int sig, struct kernel_siginfo *info, struct k_sigaction *ka)
{
	if (sig != SIGKILL)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct listen_pending *p = bpf_map_lookup_elem(&listen_pending, &tid);
	if (!p)
		return 0;
	const struct sock *sk = (const struct sock *)p->sk;
	__u64 cgid = p->cgid;
	bpf_map_delete_elem(&listen_pending, &tid);
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u8 addr[16] = {};
	local_addr(sk, family, addr);
	emit_listen(bpf_get_current_task_btf(), cgid, sk, family, addr, BPF_CORE_READ(sk, __sk_common.skc_num), true);
	return 0;
}

/*
 * ---- Applets of multi-call binaries (see lancet.h) ----
 * The argument strings of the new image lie NUL-separated from
 * mm->arg_start to mm->arg_end, in the new mm (create_elf_tables() has
 * laid them out by the time sched_process_exec fires). An argument's end
 * is found by reading it in chunks (a string read stops at the NUL and says
 * where), with no byte-by-byte scan; only the ARG_WIN bytes before the NUL
 * are searched, backwards, for the last '/'.
 *
 * Plain bounded loops (5.3), not bpf_loop() (5.17, and its callback needs
 * 5.13 to load at all), so enf_exec loads on the kernels it did before.
 * ~31k instructions verified on 6.18 (655 without the applet check): the
 * byte index is masked, and `end` is hidden from clang, which otherwise
 * derives the length from the chunk counter and hands the verifier one
 * range per exit of that loop to walk the rest with (457k).
 */
#define ARG_CHUNK 128
/* Chunks read per argument before giving up: 33 * (ARG_CHUNK - 1) bytes,
 * more than PATH_MAX (4096). */
#define ARG_CHUNKS 33
/* Bytes before an argument's NUL searched for its last '/' (a power of 2). */
#define ARG_WIN 128

/* Reads into `name` the basename of the argument at user address `start`
 * (zeroed first; cut and marked past LANCET_APPLET_LEN - 1 bytes; a
 * basename longer than ARG_WIN is named by the cut bytes that begin the
 * window). `buf` is scratch of ARG_CHUNK bytes. Returns the address of the
 * argument's NUL, or 0 when it is unreadable, longer than the scan, or has
 * an empty basename ("" or ending in '/'). */
static __always_inline __u64 arg_basename(char *buf, __u64 start, bool strip, char *name)
{
	__builtin_memset(name, 0, LANCET_APPLET_LEN);
	__u64 pos = start, end = 0;
	for (int c = 0; c < ARG_CHUNKS; c++) {
		long n = bpf_probe_read_user_str(buf, ARG_CHUNK, (const void *)pos);
		if (n <= 0)
			return 0;
		if (n < ARG_CHUNK) {
			end = pos + n - 1;
			break;
		}
		/* A full chunk: its last byte is the NUL the helper put there. */
		pos += ARG_CHUNK - 1;
	}
	/* Opaque to clang: it would otherwise compute len from the loop
	 * counter, giving each exit of the loop its own range to verify. */
	barrier_var(end);
	if (end <= start)
		return 0; /* empty, or longer than the scan */
	__u64 len = end - start;
	__u64 w = len < ARG_WIN ? len : ARG_WIN;
	if (w == 0 || w > ARG_WIN)
		return 0;
	if (bpf_probe_read_user(buf, w, (const void *)(end - w)))
		return 0;
	__u64 base = 0;
	bool found = false;
	for (int i = 0; i < ARG_WIN; i++) {
		if (i >= w)
			break;
		/* i < w, so the mask never changes the index; it bounds it for
		 * the verifier. */
		if (buf[(w - 1 - i) & (ARG_WIN - 1)] == '/') {
			base = end - i;
			found = true;
			break;
		}
	}
	bool long_name = !found && len > ARG_WIN;
	if (!found)
		/* No '/' at all (the window held the whole argument, so buf[0]
		 * is its first byte), or a basename longer than the window. */
		base = long_name ? end - ARG_WIN : start + (strip && buf[0] == '-');
	if (base >= end)
		return 0;
	if (bpf_probe_read_user_str(name, LANCET_APPLET_LEN, (const void *)base) <= 0)
		return 0;
	if (long_name || end - base > LANCET_APPLET_LEN - 1)
		name[LANCET_APPLET_LEN - 1] = (char)LANCET_APPLET_CUT;
	return end;
}

/* Whether `name` begins with the file's dispatcher (busybox runs any
 * argv[0] starting with "busybox" as the applet named by the next
 * argument). */
static __always_inline bool dispatches(const struct lancet_multicall *mc, const char *name)
{
	if (!mc->dispatcher[0])
		return false;
#pragma unroll
	for (int i = 0; i < LANCET_DISPATCHER_LEN; i++) {
		char c = mc->dispatcher[i];
		if (!c)
			return true;
		if (name[i] != c)
			return false;
	}
	return true;
}

/* Whether the applet the new image of `task` will run is allowed for the
 * file in k->file. Leaves the applet as judged in k->name (empty when it
 * could not be read) for the record. Anything unknown is not allowed. */
static __always_inline bool applet_allowed(struct task_struct *task, const struct lancet_multicall *mc,
					   struct lancet_applet_key *k)
{
	char buf[ARG_CHUNK];
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u64 pos = BPF_CORE_READ(mm, arg_start);
	__u64 end = BPF_CORE_READ(mm, arg_end);
	for (int hop = 0; hop < LANCET_APPLET_HOPS; hop++) {
		/* No such argument: argc 0 (kernels before 5.18), or a bare
		 * dispatcher (`busybox` alone). */
		if (pos >= end)
			return false;
		__u64 nul = arg_basename(buf, pos, hop == 0, k->name);
		if (!nul)
			return false;
		if (!dispatches(mc, k->name)) {
			if (k->name[LANCET_APPLET_LEN - 1])
				return false; /* cut: longer than any allowed name */
			return bpf_map_lookup_elem(&applets, k) != NULL;
		}
		pos = nul + 1;
	}
	return false;
}

/*
 * Kill a process whose new image must not run. sched_process_exec fires after
 * the point of no return of execve, before the new image runs: the SIGKILL
 * from bpf_send_signal (5.3) is delivered on the way back to user space, so
 * not one instruction of the file runs. (With BPF-LSM the exec could be
 * refused instead; lockdown refuses lsm programs on these hosts.)
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(enf_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cgid = bpf_get_current_cgroup_id();
	struct lancet_cg_policy *pol = bpf_map_lookup_elem(&cg_policy, &cgid);
	if (!pol)
		return 0;
	__u32 flags = pol->flags & KILL_FLAGS;
	if (!flags)
		return 0;

	struct file *file = BPF_CORE_READ(bprm, file);
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	__u64 ino = BPF_CORE_READ(inode, i_ino);
	__u32 dev = BPF_CORE_READ(inode, i_sb, s_dev);
	__u32 nlink = BPF_CORE_READ(inode, __i_nlink);
	__u64 magic = BPF_CORE_READ(inode, i_sb, s_magic);
	bool shm = magic == TMPFS_MAGIC || magic == RAMFS_MAGIC;
	bool memfd = false;
	if ((shm || magic == HUGETLBFS_MAGIC) && nlink == 0) {
		/* memfd_create() files are unlinked shmem/hugetlbfs files named
		 * "memfd:<name>" on the kernel's internal mount. */
		char name[6] = {};
		bpf_probe_read_kernel(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
		memfd = name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' && name[4] == 'd' &&
			name[5] == ':';
	}

	__u32 reason = 0;
	if ((flags & LANCET_POL_KILL_MEMFD_EXEC) && memfd) {
		reason = LANCET_ER_MEMFD;
	} else if ((flags & LANCET_POL_KILL_TMPFS_EXEC) && shm && !memfd) {
		reason = LANCET_ER_TMPFS;
	} else if ((flags & LANCET_POL_KILL_DELETED_EXEC) && nlink == 0 && !memfd) {
		reason = LANCET_ER_DELETED;
	} else if (flags & LANCET_POL_KILL_EXEC_INO) {
		struct lancet_kill_key kk = { .cgid = cgid, .ino = ino, .dev = dev, ._pad = 0 };
		if (bpf_map_lookup_elem(&kill_ino, &kk))
			reason = LANCET_ER_KILL_INO;
	}
	/* Multi-call files: one lookup per exec of a flagged container; the
	 * argv scan only for the files listed. */
	struct lancet_applet_key ak = {};
	if (!reason && (flags & LANCET_POL_KILL_APPLET)) {
		ak.file.cgid = cgid;
		ak.file.ino = ino;
		ak.file.dev = dev;
		struct lancet_multicall *mc = bpf_map_lookup_elem(&multicall, &ak.file);
		if (mc && !applet_allowed(p, mc, &ak))
			reason = LANCET_ER_APPLET;
	}
	if (!reason)
		return 0;

	long r = bpf_send_signal(SIGKILL);
	count(r == 0 ? LANCET_ESTAT_KILL : LANCET_ESTAT_KILL_FAILED);
	struct lancet_enforce_event *e = new_event(p, cgid, LANCET_EOP_EXEC_KILL, reason);
	if (e) {
		e->ino = ino;
		e->dev = dev;
		e->denied = r == 0;
		if (reason == LANCET_ER_APPLET) {
			__builtin_memcpy(e->applet, ak.name, sizeof(e->applet));
			bpf_probe_read_kernel_str(e->addr, sizeof(e->addr), BPF_CORE_READ(file, f_path.dentry, d_name.name));
		}
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

/*
 * Isolation at the packet level, for flows a socket hook cannot stop: those
 * established before the isolation, and inbound connections. Attached to an
 * isolated container's cgroup only (cgroup_skb 4.10). 1 passes, 0 drops.
 */
static __always_inline int skb_verdict(struct __sk_buff *skb, bool ingress)
{
	__u64 cgid = bpf_skb_cgroup_id(skb);
	struct lancet_cg_policy *pol = bpf_map_lookup_elem(&cg_policy, &cgid);
	if (!pol || !isolated_now(pol))
		return 1;
	if (skb->ifindex == LOOPBACK_IFINDEX)
		return 1;

	struct lancet_net_key k = {};
	k.cgid = cgid;
	k.dir = LANCET_DIR_EGRESS | LANCET_DIR_ISOLATION;
	__u8 proto = 0;
	__u16 port = 0;
	__u32 l3 = skb->protocol;
	if (l3 == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			goto drop;
		mapped4(k.addr, ingress ? ip.saddr : ip.daddr);
		proto = ip.protocol;
		if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) && !(ip.frag_off & bpf_htons(0x1fff))) {
			__u16 ports[2];
			__u32 off = ip.ihl * 4;
			if (!bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
				port = ingress ? ports[0] : ports[1];
		}
	} else if (l3 == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			goto drop;
		if (ingress)
			__builtin_memcpy(k.addr, &ip6.saddr, sizeof(k.addr));
		else
			__builtin_memcpy(k.addr, &ip6.daddr, sizeof(k.addr));
		proto = ip6.nexthdr;
		if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
			__u16 ports[2];
			if (!bpf_skb_load_bytes(skb, sizeof(ip6), ports, sizeof(ports)))
				port = ingress ? ports[0] : ports[1];
		}
	} else {
		return 1;
	}
	if (is_local(k.addr, false))
		return 1;
	/* The peer's side of an allowed flow: its address, and its port (the
	 * destination going out, the source coming back). */
	if (allowed(&k, proto, port))
		return 1;
drop:
	count(ingress ? LANCET_ESTAT_DROP_INGRESS : LANCET_ESTAT_DROP_EGRESS);
	return 0;
}

SEC("cgroup_skb/ingress")
int enf_skb_in(struct __sk_buff *skb)
{
	return skb_verdict(skb, true);
}

SEC("cgroup_skb/egress")
int enf_skb_out(struct __sk_buff *skb)
{
	return skb_verdict(skb, false);
}

/*
 * ---- Writes refused by a read-only mount (LANCET_POL_REPORT_EROFS) ----
 * Protect mode makes a container's filesystem read-only; a write then
 * fails with EROFS in the syscall, where no other hook of ours sees it.
 * This raw tracepoint sees every syscall's return on the host, so it is
 * attached only while some cgroup has the flag (see lancet.h for the cost),
 * and its first test is the return value, before any lookup.
 *
 * The arguments are read from the task's saved user registers (x86_64:
 * di, si, dx, r10 for arguments 1-4). Per syscall: which argument is the
 * path (for rename*, link* and symlink* the new name: the name being
 * made or replaced says what was under attack, the old one of a rename
 * is often a temp file), and which is a fd (the directory of *at(), or
 * the file of fd-based calls). access()/faccessat*() are not writes (a
 * W_OK probe of a read-only file answers EROFS) and are never reported.
 */
#define WR_ARG(path, fd) ((path) | ((fd) << 4))
#define WR_SKIP 0xff

static __always_inline __u32 write_args(long nr)
{
	switch (nr) {
	/* path in argument 1 */
	case 2: /* open */
	case 85: /* creat */
	case 83: /* mkdir */
	case 133: /* mknod */
	case 87: /* unlink */
	case 84: /* rmdir */
	case 90: /* chmod */
	case 92: /* chown */
	case 94: /* lchown */
	case 76: /* truncate */
	case 132: /* utime */
	case 235: /* utimes */
	case 188: /* setxattr */
	case 189: /* lsetxattr */
	case 197: /* removexattr */
	case 198: /* lremovexattr */
		return WR_ARG(1, 0);
	/* the new name in argument 2 */
	case 82: /* rename */
	case 86: /* link */
	case 88: /* symlink */
		return WR_ARG(2, 0);
	/* dirfd, path */
	case 257: /* openat */
	case 437: /* openat2 */
	case 258: /* mkdirat */
	case 259: /* mknodat */
	case 263: /* unlinkat */
	case 260: /* fchownat */
	case 268: /* fchmodat */
	case 452: /* fchmodat2 */
	case 280: /* utimensat (a NULL path: the fd itself) */
	case 261: /* futimesat */
	case 463: /* setxattrat */
	case 466: /* removexattrat */
	case 469: /* file_setattr */
		return WR_ARG(2, 1);
	case 266: /* symlinkat(target, newdirfd, newpath) */
		return WR_ARG(3, 2);
	case 264: /* renameat(olddirfd, old, newdirfd, new) */
	case 316: /* renameat2 */
	case 265: /* linkat */
		return WR_ARG(4, 3);
	/* fd-based */
	case 1: /* write */
	case 18: /* pwrite64 */
	case 20: /* writev */
	case 296: /* pwritev */
	case 328: /* pwritev2 */
	case 77: /* ftruncate */
	case 91: /* fchmod */
	case 93: /* fchown */
	case 190: /* fsetxattr */
	case 199: /* fremovexattr */
	case 285: /* fallocate */
	case 16: /* ioctl (FS_IOC_SETFLAGS, ...) */
		return WR_ARG(0, 1);
	/* questions, not writes */
	case 21: /* access */
	case 269: /* faccessat */
	case 439: /* faccessat2 */
		return WR_SKIP;
	default:
		return 0;
	}
}

static __always_inline __u64 syscall_arg(struct pt_regs *regs, __u32 n)
{
	switch (n) {
	case 1:
		return PT_REGS_PARM1_CORE_SYSCALL(regs);
	case 2:
		return PT_REGS_PARM2_CORE_SYSCALL(regs);
	case 3:
		return PT_REGS_PARM3_CORE_SYSCALL(regs);
	case 4:
		return PT_REGS_PARM4_CORE_SYSCALL(regs);
	default:
		return 0;
	}
}

/* Takes one record from the cgroup's budget for this second. Concurrent
 * CPUs may let a few records more through at a second's turn. */
static __always_inline bool within_budget(__u64 cgid)
{
	__u64 second = bpf_ktime_get_boot_ns() / 1000000000ULL;
	struct write_budget *b = bpf_map_lookup_elem(&write_budget, &cgid);
	if (!b) {
		struct write_budget fresh = { .second = second, .sent = 1 };
		bpf_map_update_elem(&write_budget, &cgid, &fresh, BPF_ANY);
		return true;
	}
	if (b->second != second) {
		b->second = second;
		b->sent = 1;
		return true;
	}
	if (b->sent >= LANCET_WRITE_REFUSED_BUDGET)
		return false;
	/* The add's result is not used: clang 14 emits it for -mcpu v1. */
	__sync_fetch_and_add(&b->sent, 1);
	return true;
}

#define TS_COMPAT 0x0002 /* x86 thread_info.status: an i386 syscall */
#define X32_SYSCALL_BIT 0x40000000

SEC("raw_tp/sys_exit")
int BPF_PROG(enf_sys_exit, struct pt_regs *regs, long ret)
{
	if (ret != -EROFS)
		return 0;
#if defined(__TARGET_ARCH_x86)
	__u64 cgid = bpf_get_current_cgroup_id();
	struct lancet_cg_policy *pol = bpf_map_lookup_elem(&cg_policy, &cgid);
	if (!pol || !(pol->flags & LANCET_POL_REPORT_EROFS))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	bool compat = BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
	long nr = BPF_CORE_READ(regs, orig_ax);
	/* x32 uses the x86_64 numbers (and registers) with this bit set. */
	if (!compat)
		nr &= ~(long)X32_SYSCALL_BIT;
	__u32 args = compat ? 0 : write_args(nr);
	if (args == WR_SKIP)
		return 0;
	if (!within_budget(cgid)) {
		count(LANCET_ESTAT_WRITE_REFUSED_DROPPED);
		return 0;
	}
	count(LANCET_ESTAT_WRITE_REFUSED);
	struct lancet_enforce_event *e = new_record(task, cgid, LANCET_EOP_WRITE_REFUSED, LANCET_ER_READ_ONLY, true);
	if (!e)
		return 0;
	e->denied = 1;
	e->syscall = (__s32)nr;
	__u16 wr = compat ? LANCET_WR_COMPAT : 0;
	__u32 fd_arg = args >> 4, path_arg = args & 0xf;
	if (fd_arg) {
		e->fd = (__s32)syscall_arg(regs, fd_arg);
		wr |= LANCET_WR_FD;
	}
	e->path[0] = 0;
	if (path_arg) {
		wr |= LANCET_WR_PATH;
		const void *upath = (const void *)syscall_arg(regs, path_arg);
		long n = upath ? bpf_probe_read_user_str(e->path, sizeof(e->path), upath) : 0;
		if (n > 0) {
			e->path_len = n - 1;
			if (n >= sizeof(e->path))
				wr |= LANCET_WR_PATH_CUT;
		} else {
			e->path[0] = 0;
			if (upath)
				wr |= LANCET_WR_PATH_UNREADABLE;
		}
	}
	e->wr_flags = wr;
	bpf_ringbuf_submit(e, 0);
#endif
	return 0;
}
