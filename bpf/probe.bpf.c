// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Minimal programs, one per BPF program type lancet uses or could use.
 * `lancet doctor` loads (and attaches) each one on its own to learn what the
 * running kernel allows: a lockdown or a missing config refuses some types
 * even where the kernel is new enough.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tracepoint/sched/sched_process_exec")
int probe_tracepoint(void *ctx) { return 0; }

SEC("raw_tp/sched_process_exec")
int probe_raw_tp(void *ctx) { return 0; }

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_tp_btf, struct task_struct *p) { return 0; }

SEC("kprobe/do_unlinkat")
int probe_kprobe(void *ctx) { return 0; }

SEC("fentry/do_unlinkat")
int BPF_PROG(probe_fentry) { return 0; }

SEC("lsm/bprm_check_security")
int BPF_PROG(probe_lsm, struct linux_binprm *bprm, int ret) { return ret; }

SEC("cgroup/connect4")
int probe_cgroup_connect4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sock_create")
int probe_cgroup_sock_create(struct bpf_sock *ctx) { return 1; }

SEC("cgroup_skb/egress")
int probe_cgroup_skb(struct __sk_buff *skb) { return 1; }

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_rb SEC(".maps");

SEC("tp_btf/sched_process_fork")
int BPF_PROG(probe_ringbuf, struct task_struct *parent, struct task_struct *child)
{
	__u32 *v = bpf_ringbuf_reserve(&probe_rb, sizeof(*v), 0);
	if (v)
		bpf_ringbuf_discard(v, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_send_signal, struct task_struct *p)
{
	/* Only verified, never attached: proves bpf_send_signal is allowed. */
	if (!p)
		bpf_send_signal(9);
	return 0;
}
