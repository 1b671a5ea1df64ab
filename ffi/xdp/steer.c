// SPDX-License-Identifier: Apache-2.0
// rusty_rail's XDP steering program.
//
// Steers to the AF_XDP socket of the receiving queue only the frames that
// rusty_rail handles, on the configured VLAN: GRE (IPv4 or IPv6 outer, GRE
// right after the fixed header) addressed to one of this node's addresses,
// and plain IP to an announced VIP the node holds, except IPv6 Neighbour
// Discovery, which the host answers for the VIP. Every other frame gets
// XDP_PASS, so the host stack keeps ARP, ssh, ping and everything else. A
// queue without a socket also passes (redirect fallback).

#include "common.h"

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define IPPROTO_GRE 47
#define IPPROTO_ICMPV6 58
// Neighbour Discovery: router solicitation .. redirect (RFC 4861).
#define ND_FIRST 133
#define ND_LAST 137

// Must match src/io/xdp.rs.
#define MAX_QUEUES 256
#define MAX_ADDRS 256
// Must match MAX_FRAME in src/io/xsk.rs: a 2048-byte UMEM frame less the
// 256 bytes of XDP headroom. A longer frame could not be received there,
// so it goes to the host instead of being dropped unseen.
#define MAX_FRAME 1792

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} rr_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ADDRS);
	__type(key, __u32);
	__type(value, __u8);
} rr_local4 SEC(".maps");

struct addr6 {
	__u8 b[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ADDRS);
	__type(key, struct addr6);
	__type(value, __u8);
} rr_local6 SEC(".maps");

// Announced VIPs, keyed as rr_local4 and rr_local6.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ADDRS);
	__type(key, __u32);
	__type(value, __u8);
} rr_vip4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ADDRS);
	__type(key, struct addr6);
	__type(value, __u8);
} rr_vip6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); // the VLAN id; 0: untagged
} rr_conf SEC(".maps");

struct ethhdr {
	__u8 dst[6];
	__u8 src[6];
	__u16 proto;
};

struct vlanhdr {
	__u16 tci;
	__u16 proto;
};

struct ipv4hdr {
	__u8 ver_ihl;
	__u8 tos;
	__u16 len;
	__u16 id;
	__u16 frag;
	__u8 ttl;
	__u8 proto;
	__u16 csum;
	__u32 src;
	__u32 dst;
};

struct ipv6hdr {
	__u32 ver_tc_flow;
	__u16 len;
	__u8 next;
	__u8 hop_limit;
	struct addr6 src;
	struct addr6 dst;
};

static inline __attribute__((always_inline)) int redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&rr_xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int rr_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || end - data > MAX_FRAME)
		return XDP_PASS;

	__u16 proto = eth->proto;
	void *l3 = eth + 1;
	__u16 vid = 0;
	if (proto == be16(ETH_P_8021Q)) {
		struct vlanhdr *tag = l3;
		if ((void *)(tag + 1) > end)
			return XDP_PASS;
		vid = be16(tag->tci) & 0x0fff;
		proto = tag->proto;
		l3 = tag + 1;
	}
	__u32 zero = 0;
	__u32 *vlan = bpf_map_lookup_elem(&rr_conf, &zero);
	// VID 0 is a priority tag only: such a frame counts as untagged.
	if (!vlan || vid != *vlan)
		return XDP_PASS;

	if (proto == be16(ETH_P_IPV4)) {
		struct ipv4hdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		if ((ip->ver_ihl >> 4) != 4 || (ip->ver_ihl & 0x0f) < 5)
			return XDP_PASS;
		__u32 dst = ip->dst;
		if (ip->proto == IPPROTO_GRE && bpf_map_lookup_elem(&rr_local4, &dst))
			return redirect(ctx);
		if (bpf_map_lookup_elem(&rr_vip4, &dst))
			return redirect(ctx);
	} else if (proto == be16(ETH_P_IPV6)) {
		struct ipv6hdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		struct addr6 dst = ip->dst;
		if (ip->next == IPPROTO_GRE && bpf_map_lookup_elem(&rr_local6, &dst))
			return redirect(ctx);
		if (!bpf_map_lookup_elem(&rr_vip6, &dst))
			return XDP_PASS;
		if (ip->next == IPPROTO_ICMPV6) {
			__u8 *type = (void *)(ip + 1);
			if ((void *)(type + 1) > end)
				return XDP_PASS;
			// The host must answer neighbour solicitations for the VIP.
			if (*type >= ND_FIRST && *type <= ND_LAST)
				return XDP_PASS;
		}
		return redirect(ctx);
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
