#!/usr/bin/env python3
"""Zero the CUDA cubins of every GPU architecture but one in a shared library.

ONNX Runtime's CUDA provider (`libonnxruntime_providers_cuda.so`, 284 MB in
the onnxruntime-gpu 1.31.1 wheel) carries its kernels for sm_75, 80, 86, 89,
90 and 120. The accelerator machine takes at most 64 MiB per call, so for a
benchmark run on an H200 (sm_90) we keep only sm_90's cubins: the others'
payloads are overwritten with zeros, headers untouched, so the file keeps its
layout and compresses from 185 MB (zstd -19) to 52 MB (xz -6). The CUDA
runtime only ever reads the entry that matches the device.

Usage: strip_fatbin.py IN OUT [ARCH]   (ARCH defaults to 90)
Prints the bytes per (kind, arch) it found and how much it zeroed.
"""
import collections
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50


def section(data, wanted):
    """(offset, size) of the ELF64 section named `wanted`."""
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
    def header(i):
        return struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize)
    names_off = header(shstrndx)[4]
    for i in range(shnum):
        name_idx, _, _, _, off, size, *_ = header(i)
        end = data.index(b'\0', names_off + name_idx)
        if data[names_off + name_idx:end].decode() == wanted:
            return off, size
    raise SystemExit(f'no section {wanted}')


def main():
    src, dst = sys.argv[1], sys.argv[2]
    keep = int(sys.argv[3]) if len(sys.argv) > 3 else 90
    data = bytearray(open(src, 'rb').read())
    start, size = section(data, '.nv_fatbin')
    pos, end = start, start + size
    found, zeroed = collections.Counter(), 0
    while pos < end:
        magic, _version, header_size, fat_size = struct.unpack_from('<IHHQ', data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # entries are 8-byte aligned; padding between fatbins
            continue
        entry, fat_end = pos + header_size, pos + header_size + fat_size
        while entry < fat_end:
            kind, _ver, entry_header = struct.unpack_from('<HHI', data, entry)
            payload, = struct.unpack_from('<Q', data, entry + 8)
            arch, = struct.unpack_from('<I', data, entry + 28)
            found[('ptx' if kind == 1 else 'cubin', arch)] += payload
            if arch != keep:
                body = entry + entry_header
                data[body:body + payload] = bytes(payload)
                zeroed += payload
            entry += entry_header + payload
        pos = fat_end
    for (kind, arch), total in sorted(found.items()):
        print(f'{kind} sm_{arch}: {total / 2**20:.1f} MiB')
    print(f'zeroed {zeroed / 2**20:.1f} MiB, kept sm_{keep}')
    open(dst, 'wb').write(data)


if __name__ == '__main__':
    main()
