#!/usr/bin/env python3
"""Writes seed inputs for the `pipeline` fuzz target into seeds/.

Each input is one selector byte (bit 0: node on VLAN 100; bit 1: spare
room to encapsulate in) and a frame: GRE to the fuzz target's node
addresses with varied GRE options and inner packets, or plain IP to its
announced VIPs, so the fuzzer starts past the "is this ours" checks.
"""
import os
import struct

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def ipv4(src, dst, proto, payload, ttl=64, flags=0x4000):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, flags, ttl, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def ipv6(src, dst, nh, payload, hlim=64):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hlim, bytes(src), bytes(dst)) + payload

def tcp(sport, dport):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + b"x" * 8

def udp(sport, dport):
    return struct.pack("!HHHH", sport, dport, 12, 0) + b"ping"

def gre(proto, payload, c=False, k=None, s=None):
    flags = (0x8000 if c else 0) | (0x2000 if k is not None else 0) | (0x1000 if s is not None else 0)
    opt = (b"\0\0\0\0" if c else b"") + (struct.pack("!I", k) if k is not None else b"") + (struct.pack("!I", s) if s is not None else b"")
    h = struct.pack("!HH", flags, proto) + opt
    if c:
        v = csum(h + payload)
        h = h[:4] + struct.pack("!H", v) + h[6:]
    return h + payload

def eth(payload, ethertype, vlan=None):
    hdr = bytes([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xFE])
    if vlan is not None:
        hdr += struct.pack("!HH", 0x8100, vlan)
    return hdr + struct.pack("!H", ethertype) + payload

NODE4 = [172, 16, 0, 1]
NODE6 = [0x20, 0x01, 0x0D, 0xB8, 0xFF, 0xFF] + [0] * 9 + [1]
CLIENT6 = [0x20, 0x01, 0x0D, 0xB8, 0, 2] + [0] * 9 + [9]
VIP6 = [0x20, 0x01, 0x0D, 0xB8, 0, 3] + [0] * 9 + [10]
ROUTER = [198, 51, 100, 1]

inner_tcp = ipv4([10, 0, 0, 9], [192, 0, 2, 10], 6, tcp(40000, 80))
inner_udp = ipv4([10, 0, 0, 9], [192, 0, 2, 11], 17, udp(40000, 53))
inner_icmp = ipv4([10, 0, 0, 9], [192, 0, 2, 12], 1, b"\x08\0\0\0\0\1\0\1")
inner_frag = ipv4([10, 0, 0, 9], [192, 0, 2, 10], 6, tcp(40000, 80), flags=0x2000)
inner6 = ipv6(CLIENT6, VIP6, 6, tcp(40000, 443))
inner6_frag = ipv6(CLIENT6, VIP6, 44, bytes([6, 0, 0, 1, 0, 0, 0, 7]) + tcp(1, 2))
inner6_udp = ipv6(CLIENT6, VIP6, 17, udp(40000, 53))
# A neighbour solicitation for the VIP: the host's to answer.
ns6 = ipv6(CLIENT6, VIP6, 58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) + bytes(VIP6), hlim=255)

seeds = {
    "v4_tcp": (0, eth(ipv4(ROUTER, NODE4, 47, gre(0x0800, inner_tcp)), 0x0800)),
    "v4_udp_key": (0, eth(ipv4(ROUTER, NODE4, 47, gre(0x0800, inner_udp, k=7)), 0x0800)),
    "v4_icmp_all_opts": (0, eth(ipv4(ROUTER, NODE4, 47, gre(0x0800, inner_icmp, c=True, k=1, s=2)), 0x0800)),
    "v4_frag": (0, eth(ipv4(ROUTER, NODE4, 47, gre(0x0800, inner_frag, s=9)), 0x0800)),
    "v4_inner6": (0, eth(ipv4(ROUTER, NODE4, 47, gre(0x86DD, inner6)), 0x0800)),
    "v4_inner6_frag": (0, eth(ipv4(ROUTER, NODE4, 47, gre(0x86DD, inner6_frag)), 0x0800)),
    "v6_outer": (0, eth(ipv6(CLIENT6, NODE6, 47, gre(0x86DD, inner6)), 0x86DD)),
    "vlan100": (1, eth(ipv4(ROUTER, NODE4, 47, gre(0x0800, inner_tcp)), 0x0800, vlan=100)),
    "plain_v4_tcp": (2, eth(inner_tcp, 0x0800)),
    "plain_v4_frag": (2, eth(inner_frag, 0x0800)),
    "plain_v6_udp": (2, eth(inner6_udp, 0x86DD)),
    "plain_v6_ns": (2, eth(ns6, 0x86DD)),
    "plain_vlan100": (3, eth(inner_udp, 0x0800, vlan=100)),
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
os.makedirs(out, exist_ok=True)
for name, (selector, frame) in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([selector]) + frame)
print(f"wrote {len(seeds)} seeds to {out}")
