#!/usr/bin/python3
"""Writes the seed corpus of fuzz_virtio_net (tests/fuzz/corpus/virtio_net/): well-formed rings the
fuzzer mutates from. Input layout: see tests/fuzz/fuzz_virtio_net.c."""
import os
import struct

GPA = 0x400000
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "virtio_net")
CSUM, GUEST_CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN, MRG, GUEST_TSO4, EVENT_IDX = (1 << i for i in range(8))
NEXT, WRITE, INDIRECT = 1, 2, 4


class Ram:
    def __init__(self):
        self.b = bytearray(0x4000)

    def put(self, off, data):
        self.b[off:off + len(data)] = data

    def desc(self, table, i, addr, length, flags, nxt=0):
        self.put(table + 16 * i, struct.pack("<QIHH", GPA + addr, length, flags, nxt))

    def avail(self, base, heads):
        self.put(base + 0x400, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads))


def hdr(flags=0, gso=0, hdr_len=0, gso_size=0, cs=0, co=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, cs, co, 0)


def seed(name, feats, qsz, rx_len, rx_hdr, ram):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes([feats, qsz]) + struct.pack("<H", rx_len) + rx_hdr + bytes(ram.b))


def main():
    os.makedirs(OUT, exist_ok=True)
    tx, rx = 0x0, 0x800
    # 1: checksum-offloaded TX packet with the header in its own descriptor; RX into mergeable buffers
    r = Ram()
    r.put(0x1000, hdr(1, 0, 0, 0, 34, 16))
    r.put(0x1100, bytes(range(256)) * 2)
    r.desc(tx, 0, 0x1000, 12, NEXT, 1)
    r.desc(tx, 1, 0x1100, 400, 0)
    r.avail(tx, [0])
    for i in range(3):
        r.desc(rx, i, 0x2000 + 0x400 * i, 0x400, WRITE)
    r.avail(rx, [0, 1, 2])
    seed("csum_mrg", CSUM | GUEST_CSUM | MRG | EVENT_IDX, 0x22, 2000, hdr(2), r)
    # 2: TSO4 packet through an indirect table; RX header asks for TSO4
    r = Ram()
    r.put(0x1000, hdr(1, 1, 54, 1448, 34, 16))
    r.desc(0x1800, 0, 0x1000, 12, NEXT, 1)
    r.desc(0x1800, 1, 0x1100, 0x800, 0)
    r.desc(tx, 0, 0x1800, 32, INDIRECT)
    r.avail(tx, [0])
    r.desc(rx, 0, 0x2000, 0x2000, WRITE)
    r.avail(rx, [0])
    seed("tso4_indirect", CSUM | GUEST_CSUM | HOST_TSO4 | GUEST_TSO4 | MRG, 0x44, 3000, hdr(1, 1, 54, 1448, 34, 16), r)
    # 3: no offloads, no mergeable buffers: one small RX buffer, two TX packets
    r = Ram()
    r.put(0x1000, hdr())
    r.desc(tx, 0, 0x1000, 12 + 60, 0)
    r.desc(tx, 1, 0x1000, 12 + 1500, 0)
    r.avail(tx, [0, 1])
    r.desc(rx, 0, 0x2000, 11, WRITE | NEXT, 1)
    r.desc(rx, 1, 0x2100, 200, WRITE)
    r.avail(rx, [0])
    seed("plain_small", 0, 0x22, 100, hdr(), r)


if __name__ == "__main__":
    main()
