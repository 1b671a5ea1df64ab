// SPDX-License-Identifier: Apache-2.0
// XDP programs for the end-to-end throughput run (testbed/throughput):
//   rr_gen    - a traffic generator for BPF_PROG_RUN "live frames": gives
//               each run's frame the next of GEN_FLOWS inner UDP flows and
//               transmits it (XDP_TX).
//   rr_sink   - counts IPv4 GRE frames per CPU and drops them; passes
//               everything else (ARP keeps working).
//   rr_bounce - the in-kernel ceiling: swaps the MACs of IPv4 GRE frames
//               and sends them back out (XDP_TX); passes everything else.

#include "common.h"

// Must match testbed/bench.rs.
#define GEN_FLOWS 4096
// Ethernet 14 + outer IPv4 20 + GRE 4 + inner IPv4 20: the inner UDP header.
#define INNER_L4 58
#define INNER_SRC 50

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rr_bench_count SEC(".maps");

static __u64 *counter(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&rr_bench_count, &zero);
}

static int is_gre4(void *data, void *end)
{
	__u8 *p = data;
	if ((void *)(p + 34) > end)
		return 0;
	return p[12] == 0x08 && p[13] == 0x00 && p[23] == 47;
}

SEC("xdp")
int rr_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *p = data;
	if ((void *)(p + INNER_L4 + 8) > end)
		return XDP_ABORTED;
	__u64 *n = counter();
	if (!n)
		return XDP_ABORTED;
	__u32 flow = (*n)++ % GEN_FLOWS;
	// Source port and the last byte of the inner source address; the
	// UDP checksum is 0 (none) and the inner IPv4 checksum is fixed up
	// below for the address byte.
	*(__u16 *)(p + INNER_L4) = be16(10000 + flow);
	__u8 old = p[INNER_SRC + 3];
	__u8 new = 1 + (flow & 0x7f);
	p[INNER_SRC + 3] = new;
	__u16 *csum = (__u16 *)(p + 38 + 10);
	__u32 sum = (__u16)~be16(*csum);
	sum += (__u16)~old;
	sum += new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	*csum = be16((__u16)~sum);
	return XDP_TX;
}

SEC("xdp")
int rr_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (!is_gre4(data, end))
		return XDP_PASS;
	__u64 *n = counter();
	if (n)
		(*n)++;
	return XDP_DROP;
}

SEC("xdp")
int rr_bounce(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (!is_gre4(data, end))
		return XDP_PASS;
	__u8 *p = data;
	for (int i = 0; i < 6; i++) {
		__u8 t = p[i];
		p[i] = p[6 + i];
		p[6 + i] = t;
	}
	return XDP_TX;
}

char _license[] SEC("license") = "Dual BSD/GPL";
