/// Writes a merged tree as an EROFS image (the bootstrap) plus the Kangaroo
/// header at byte 0 and the extension region after the EROFS blocks.
/// Layout and every field are specified in docs/FORMAT.md.
struct BootstrapWriter {
    struct DeviceSlot: Sendable {
        /// Up to 64 bytes; Kangaroo uses the blob's sha256 hex.
        var tag: String
        /// Uncompressed size of the blob in 4 KiB blocks.
        var blocks: UInt32
    }

    /// One inode being laid out.
    private final class Slot {
        let node: TreeNode
        var nid: UInt64 = 0
        var ino: UInt32 = 0
        var nlink: UInt32 = 0
        var parent: Int = 0
        var xattrBody: [UInt8] = []
        var layout: UInt16 = 0
        var dataSize: UInt64 = 0
        var inlineLength = 0
        var plainBlocks: UInt64 = 0
        var rawBlockAddress: UInt32 = 0
        var entries: [(name: [UInt8], index: Int)] = []
        var direntBlocks: [Range<Int>] = []
        init(node: TreeNode) { self.node = node }
    }

    static let headerMagic: [UInt8] = Array("KGRO".utf8)
    static let headerVersion: UInt32 = 1

    /// Builds the bootstrap bytes.
    static func write(root: TreeNode, chunkSizeBits: Int, devices: [DeviceSlot], extensionBytes: [UInt8]) throws(ImageError) -> [UInt8] {
        guard root.isDirectory else { throw ImageError(.invalidArgument, "the root of an image must be a directory") }
        guard (16...24).contains(chunkSizeBits) else { throw ImageError(.invalidArgument, "chunk size 2^\(chunkSizeBits) is outside 64 KiB...16 MiB") }
        guard devices.count < 0xFFFF else { throw ImageError(.unsupported, "too many blobs (\(devices.count))") }
        let chunkSize = UInt64(1) << UInt64(chunkSizeBits)
        let bs = EROFS.blockSize

        // 1. Collect inodes: depth-first pre-order, children sorted byte-wise.
        var slots: [Slot] = []
        var indexOf: [ObjectIdentifier: Int] = [:]
        func collect(_ node: TreeNode, parent: Int) -> Int {
            if let existing = indexOf[ObjectIdentifier(node)] {
                slots[existing].nlink += 1
                return existing
            }
            let slot = Slot(node: node)
            let index = slots.count
            slots.append(slot)
            indexOf[ObjectIdentifier(node)] = index
            slot.nlink = 1
            slot.parent = parent
            if node.isDirectory {
                var subdirs: UInt32 = 0
                var entries: [(name: [UInt8], index: Int)] = []
                for (name, child) in node.children {
                    entries.append((Array(name.utf8), -1))
                    _ = child
                }
                entries.sort { byteLess($0.name, $1.name) }
                for i in entries.indices {
                    guard let child = node.children[String(decoding: entries[i].name, as: UTF8.self)] else { continue }
                    if child.isDirectory { subdirs += 1 }
                    entries[i].index = collect(child, parent: index)
                }
                slot.entries = entries
                slot.nlink = 2 + subdirs
            }
            return index
        }
        _ = collect(root, parent: 0)
        for (i, slot) in slots.enumerated() { slot.ino = UInt32(truncatingIfNeeded: i + 1) }

        // 2. Per-inode sizes: xattrs, data, layouts.
        for slot in slots {
            slot.xattrBody = try encodeXattrs(slot.node.xattrs)
            let head = EROFS.inodeExtendedSize + slot.xattrBody.count
            switch slot.node.kind {
            case .directory:
                var all: [(name: [UInt8], index: Int)] = [(Array(".".utf8), -2), (Array("..".utf8), -3)]
                all.append(contentsOf: slot.entries)
                all.sort { byteLess($0.name, $1.name) }
                slot.entries = all
                let (blocks, size) = packDirents(all.map { $0.name.count })
                slot.direntBlocks = blocks
                slot.dataSize = UInt64(size)
            case .symlink(let target):
                let bytes = target.utf8.count
                guard bytes > 0, bytes < bs else {
                    throw ImageError(.unsupported, "symlink target of \(bytes) bytes (must be 1...\(bs - 1))")
                }
                slot.dataSize = UInt64(bytes)
            case .regular:
                let expected = (slot.node.size + chunkSize - 1) / chunkSize
                guard UInt64(slot.node.chunks.count) == expected else {
                    throw ImageError(.invalidArgument, "file of \(slot.node.size) bytes has \(slot.node.chunks.count) chunks, expected \(expected)")
                }
                slot.layout = EROFS.layoutChunkBased
                slot.dataSize = slot.node.size
                continue
            default:
                continue
            }
            let tail = Int(slot.dataSize % UInt64(bs))
            if tail > 0 && head + tail <= bs {
                slot.layout = EROFS.layoutFlatInline
                slot.inlineLength = tail
                slot.plainBlocks = slot.dataSize / UInt64(bs)
            } else {
                slot.layout = EROFS.layoutFlatPlain
                slot.plainBlocks = EROFS.blocks(for: slot.dataSize)
            }
        }

        // 3. Metadata area (meta_blkaddr = 0): after superblock and device table.
        let devtOffset = EROFS.superOffset + EROFS.superBlockSize
        var cursor = align(devtOffset + devices.count * EROFS.deviceSlotSize, 32)
        var recordSizes: [Int] = []
        for slot in slots {
            let head = EROFS.inodeExtendedSize + slot.xattrBody.count
            let contiguous = head + slot.inlineLength
            var record = contiguous
            if slot.layout == EROFS.layoutChunkBased {
                record = align(head, EROFS.chunkIndexSize) + EROFS.chunkIndexSize * slot.node.chunks.count
            }
            if contiguous <= bs && cursor % bs + contiguous > bs { cursor = align(cursor, bs) }
            slot.nid = UInt64(cursor / 32)
            recordSizes.append(record)
            cursor = align(cursor + record, 32)
        }
        guard let rootSlot = slots.first, rootSlot.nid <= 0xFFFF else {
            throw ImageError(.unsupported, "root inode nid does not fit 16 bits")
        }

        // 4. Data blocks for directories and symlinks that do not inline fully.
        var nextBlock = UInt64(align(cursor, bs) / bs)
        for slot in slots where slot.plainBlocks > 0 {
            guard nextBlock + slot.plainBlocks < UInt64(EROFS.nullAddr) else { throw ImageError(.unsupported, "bootstrap exceeds 2^32 blocks") }
            slot.rawBlockAddress = UInt32(nextBlock)
            nextBlock += slot.plainBlocks
        }
        let erofsBytes = Int(nextBlock) * bs
        let extensionOffset = erofsBytes
        let totalBytes = align(extensionOffset + extensionBytes.count, bs)
        var out = [UInt8](repeating: 0, count: totalBytes)

        // 5. Kangaroo header, superblock, device table.
        out.replaceSubrange(0..<4, with: headerMagic)
        out.putU32(headerVersion, at: 4)
        out.putU64(UInt64(extensionOffset), at: 8)
        out.putU64(UInt64(extensionBytes.count), at: 16)
        writeSuperblock(into: &out, rootNid: UInt16(rootSlot.nid), inodes: UInt64(slots.count),
                        blocks: UInt32(truncatingIfNeeded: totalBytes / bs), devices: devices.count, devtOffset: devtOffset)
        for (i, device) in devices.enumerated() {
            let o = devtOffset + i * EROFS.deviceSlotSize
            let tag = Array(device.tag.utf8.prefix(64))
            out.replaceSubrange(o..<(o + tag.count), with: tag)
            out.putU32(device.blocks, at: o + 64)
            out.putU32(0, at: o + 68)
        }

        // 6. Inodes, xattrs, inline data, chunk indexes, directory blocks.
        for slot in slots {
            let base = Int(slot.nid) * 32
            writeInode(slot, into: &out, at: base, chunkSizeBits: chunkSizeBits)
            var p = base + EROFS.inodeExtendedSize
            out.replaceSubrange(p..<(p + slot.xattrBody.count), with: slot.xattrBody)
            p += slot.xattrBody.count
            switch slot.node.kind {
            case .regular:
                p = align(p, EROFS.chunkIndexSize)
                for chunk in slot.node.chunks {
                    if let chunk {
                        out.putU16(0, at: p)
                        out.putU16(UInt16(chunk.blob + 1), at: p + 2)
                        out.putU32(chunk.blockAddress, at: p + 4)
                    } else {
                        out.putU16(0, at: p)
                        out.putU16(0, at: p + 2)
                        out.putU32(EROFS.nullAddr, at: p + 4)
                    }
                    p += EROFS.chunkIndexSize
                }
            case .symlink(let target):
                let data = Array(target.utf8)
                writeData(data, slot: slot, inlineAt: p, into: &out)
            case .directory:
                let data = direntBytes(slot, slots: slots)
                writeData(data, slot: slot, inlineAt: p, into: &out)
            default:
                break
            }
        }
        out.replaceSubrange(extensionOffset..<(extensionOffset + extensionBytes.count), with: extensionBytes)
        return out
    }

    private static func align(_ v: Int, _ a: Int) -> Int { (v + a - 1) / a * a }

    private static func writeSuperblock(into out: inout [UInt8], rootNid: UInt16, inodes: UInt64, blocks: UInt32, devices: Int, devtOffset: Int) {
        let s = EROFS.superOffset
        out.putU32(EROFS.magic, at: s)
        out.putU32(0, at: s + 4)                      // checksum (feature off)
        out.putU32(0, at: s + 8)                      // feature_compat
        out[s + 12] = EROFS.blockBits                 // blkszbits
        out[s + 13] = 0                               // sb_extslots
        out.putU16(rootNid, at: s + 14)
        out.putU64(inodes, at: s + 16)                // inos
        out.putU64(0, at: s + 24)                     // build_time
        out.putU32(0, at: s + 32)                     // build_time_nsec
        out.putU32(blocks, at: s + 36)
        out.putU32(0, at: s + 40)                     // meta_blkaddr
        out.putU32(0, at: s + 44)                     // xattr_blkaddr
        // uuid (48..63) and volume_name (64..79) stay zero.
        var incompat = EROFS.featureIncompatChunkedFile
        if devices > 0 { incompat |= EROFS.featureIncompatDeviceTable }
        out.putU32(incompat, at: s + 80)
        out.putU16(0, at: s + 84)
        out.putU16(UInt16(devices), at: s + 86)       // extra_devices
        out.putU16(UInt16(devtOffset / EROFS.deviceSlotSize), at: s + 88)
    }

    private static func writeInode(_ slot: Slot, into out: inout [UInt8], at o: Int, chunkSizeBits: Int) {
        let node = slot.node
        out.putU16(1 | (slot.layout << 1), at: o)
        let icount: UInt16 = slot.xattrBody.isEmpty ? 0 : UInt16((slot.xattrBody.count - EROFS.xattrHeaderSize) / 4 + 1)
        out.putU16(icount, at: o + 2)
        out.putU16(UInt16(truncatingIfNeeded: node.fullMode), at: o + 4)
        out.putU64(slot.dataSize, at: o + 8)
        let iu: UInt32
        switch node.kind {
        case .regular: iu = UInt32(EROFS.chunkFormatIndexes | UInt16(chunkSizeBits - Int(EROFS.blockBits)))
        case .characterDevice(let major, let minor), .blockDevice(let major, let minor): iu = EROFS.encodeDev(major: major, minor: minor)
        case .directory, .symlink: iu = slot.plainBlocks > 0 ? slot.rawBlockAddress : 0
        case .fifo, .socket: iu = 0
        }
        out.putU32(iu, at: o + 16)
        out.putU32(slot.ino, at: o + 20)
        out.putU32(node.uid, at: o + 24)
        out.putU32(node.gid, at: o + 28)
        out.putU64(UInt64(bitPattern: node.mtimeSeconds), at: o + 32)
        out.putU32(node.mtimeNanoseconds, at: o + 40)
        out.putU32(slot.nlink, at: o + 44)
    }

    /// Places full blocks at raw_blkaddr and the tail inline (FLAT_INLINE) or in the last block (FLAT_PLAIN).
    private static func writeData(_ data: [UInt8], slot: Slot, inlineAt p: Int, into out: inout [UInt8]) {
        let bs = EROFS.blockSize
        let blockPart = slot.layout == EROFS.layoutFlatInline ? data.count - slot.inlineLength : data.count
        if blockPart > 0 {
            let start = Int(slot.rawBlockAddress) * bs
            out.replaceSubrange(start..<(start + blockPart), with: data[0..<blockPart])
        }
        if slot.layout == EROFS.layoutFlatInline {
            out.replaceSubrange(p..<(p + slot.inlineLength), with: data[blockPart...])
        }
    }

    /// Groups dirents into 4 KiB blocks; returns the index ranges and the directory size.
    static func packDirents(_ nameLengths: [Int]) -> ([Range<Int>], Int) {
        let bs = EROFS.blockSize
        var blocks: [Range<Int>] = []
        var start = 0
        var used = 0
        for (i, len) in nameLengths.enumerated() {
            if used + EROFS.direntSize + len > bs {
                blocks.append(start..<i)
                start = i
                used = 0
            }
            used += EROFS.direntSize + len
        }
        blocks.append(start..<nameLengths.count)
        return (blocks, (blocks.count - 1) * bs + used)
    }

    private static func direntBytes(_ slot: Slot, slots: [Slot]) -> [UInt8] {
        let bs = EROFS.blockSize
        var out = ByteWriter(capacity: Int(slot.dataSize))
        for (b, range) in slot.direntBlocks.enumerated() {
            let blockStart = b * bs
            var nameOff = EROFS.direntSize * range.count
            for i in range {
                let entry = slot.entries[i]
                let nid: UInt64
                let type: UInt8
                switch entry.index {
                case -2: nid = slot.nid; type = EROFS.ftDirectory
                case -3: nid = slots[slot.parent].nid; type = EROFS.ftDirectory
                default: nid = slots[entry.index].nid; type = slots[entry.index].node.fileType
                }
                out.u64(nid)
                out.u16(UInt16(nameOff))
                out.u8(type)
                out.u8(0)
                nameOff += entry.name.count
            }
            for i in range { out.append(slot.entries[i].name) }
            if b < slot.direntBlocks.count - 1 { out.pad(toLength: blockStart + bs) }
        }
        return out.bytes
    }

    /// Inline xattr body: erofs_xattr_ibody_header + entries, sorted by full name.
    static func encodeXattrs(_ xattrs: [String: [UInt8]]) throws(ImageError) -> [UInt8] {
        if xattrs.isEmpty { return [] }
        var out = ByteWriter()
        out.u32(0)            // h_name_filter (filter feature off)
        out.u8(0)             // h_shared_count
        out.zeros(7)
        for (name, value) in xattrs.sorted(by: { byteLess(Array($0.key.utf8), Array($1.key.utf8)) }) {
            guard let (index, suffix) = EROFS.splitXattrName(name) else {
                throw ImageError(.unsupported, "xattr '\(name)' has no EROFS name prefix (user., trusted., security., system.posix_acl_*)")
            }
            guard suffix.count <= 255, value.count <= 0xFFFF else {
                throw ImageError(.unsupported, "xattr '\(name)' is too large (name \(suffix.count) bytes, value \(value.count) bytes)")
            }
            out.u8(UInt8(suffix.count))
            out.u8(index)
            out.u16(UInt16(value.count))
            out.append(suffix)
            out.append(value)
            out.pad(to: 4)
        }
        guard out.count <= EROFS.xattrHeaderSize + 4 * 0xFFFE else { throw ImageError(.unsupported, "xattrs of one inode exceed 256 KiB") }
        return out.bytes
    }
}
