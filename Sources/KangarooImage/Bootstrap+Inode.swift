/// An inode read from a bootstrap.
public struct ImageInode: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case directory, regular, symlink, characterDevice, blockDevice, fifo, socket
    }

    public var nid: UInt64
    /// Full st_mode.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32
    public var nlink: UInt32
    public var ino: UInt32
    /// EROFS data layout (0 flat plain, 2 flat inline, 4 chunk based).
    public var layout: UInt16
    /// Raw i_u: raw_blkaddr, rdev or chunk format.
    public var iu: UInt32
    /// On-disk inode size (32 or 64) and inline xattr body size.
    public var inodeSize: Int
    public var xattrSize: Int

    public var kind: Kind {
        switch mode & EROFS.sIFMT {
        case EROFS.sIFDIR: .directory
        case EROFS.sIFLNK: .symlink
        case EROFS.sIFCHR: .characterDevice
        case EROFS.sIFBLK: .blockDevice
        case EROFS.sIFIFO: .fifo
        case EROFS.sIFSOCK: .socket
        default: .regular
        }
    }

    public var permissions: UInt32 { mode & 0o7777 }

    /// (major, minor) of a device inode.
    public var device: (major: UInt32, minor: UInt32) { EROFS.decodeDev(iu) }
}

extension Bootstrap {
    /// Reads and validates the inode `nid`.
    public func inode(_ nid: UInt64) throws(ImageError) -> ImageInode {
        let bs = UInt64(EROFS.blockSize)
        let metaBase = UInt64(metaBlockAddress) * bs
        guard nid <= (UInt64(bytes.count) / 32), metaBase <= UInt64(bytes.count) else { throw ImageError.corrupt("nid \(nid) lies outside the bootstrap") }
        let pos = try view.offset(metaBase + nid * 32, length: 32, "inode \(nid)")
        let format = try view.u16(pos)
        guard format & ~UInt16(0x0F) == 0 else { throw ImageError(.unsupported, "inode \(nid) has unknown format bits 0x\(String(format, radix: 16))") }
        let extended = format & 1 == 1
        let layout = (format >> 1) & 0x7
        guard [EROFS.layoutFlatPlain, EROFS.layoutFlatInline, EROFS.layoutChunkBased].contains(layout) else {
            throw ImageError(.unsupported, "inode \(nid) uses EROFS data layout \(layout) (compressed layouts are not used by Kangaroo)")
        }
        let isize = extended ? EROFS.inodeExtendedSize : EROFS.inodeCompactSize
        try view.check(pos, isize, "inode \(nid)")
        let icount = Int(try view.u16(pos + 2))
        let xattrSize = icount == 0 ? 0 : EROFS.xattrHeaderSize + 4 * (icount - 1)
        try view.check(pos + isize, xattrSize, "xattrs of inode \(nid)")
        let mode = UInt32(try view.u16(pos + 4))
        var inode: ImageInode
        if extended {
            inode = ImageInode(nid: nid, mode: mode, uid: try view.u32(pos + 24), gid: try view.u32(pos + 28),
                          size: try view.u64(pos + 8), mtimeSeconds: Int64(bitPattern: try view.u64(pos + 32)),
                          mtimeNanoseconds: try view.u32(pos + 40), nlink: try view.u32(pos + 44), ino: try view.u32(pos + 20),
                          layout: layout, iu: try view.u32(pos + 16), inodeSize: isize, xattrSize: xattrSize)
        } else {
            inode = ImageInode(nid: nid, mode: mode, uid: UInt32(try view.u16(pos + 24)), gid: UInt32(try view.u16(pos + 26)),
                          size: UInt64(try view.u32(pos + 8)), mtimeSeconds: Int64(bitPattern: buildTime),
                          mtimeNanoseconds: buildTimeNanoseconds, nlink: UInt32(try view.u16(pos + 6)), ino: try view.u32(pos + 20),
                          layout: layout, iu: try view.u32(pos + 16), inodeSize: isize, xattrSize: xattrSize)
        }
        switch inode.kind {
        case .regular:
            guard mode & EROFS.sIFMT == EROFS.sIFREG else { throw ImageError.corrupt("inode \(nid) has unknown file type in mode 0o\(String(mode, radix: 8))") }
        case .directory, .symlink:
            guard layout != EROFS.layoutChunkBased else { throw ImageError.corrupt("inode \(nid) is a chunk-based \(inode.kind)") }
        default:
            break
        }
        return inode
    }

    /// Byte offset of the inode's first byte.
    func inodePosition(_ inode: ImageInode) -> Int {
        Int(UInt64(metaBlockAddress) * UInt64(EROFS.blockSize) + inode.nid * 32)
    }

    /// The data of a directory or symlink (flat plain or flat inline), at most `limit` bytes.
    func flatData(_ inode: ImageInode, limit: UInt64 = 1 << 30) throws(ImageError) -> [UInt8] {
        guard inode.layout != EROFS.layoutChunkBased else { throw ImageError(.unsupported, "inode \(inode.nid) is chunk based") }
        guard inode.size <= limit, inode.size <= UInt64(bytes.count) else {
            throw ImageError.corrupt("inode \(inode.nid) size \(inode.size) exceeds the bootstrap")
        }
        let bs = UInt64(EROFS.blockSize)
        let size = inode.size
        if size == 0 { return [] }
        let blockBytes: UInt64
        if inode.layout == EROFS.layoutFlatInline {
            blockBytes = (EROFS.blocks(for: size) - 1) * bs
        } else {
            blockBytes = size
        }
        var out: [UInt8] = []
        out.reserveCapacity(Int(size))
        if blockBytes > 0 {
            let start = try view.offset(UInt64(inode.iu) * bs, length: blockBytes, "data blocks of inode \(inode.nid)")
            out.append(contentsOf: try view.slice(start, Int(blockBytes)))
        }
        if inode.layout == EROFS.layoutFlatInline {
            let tail = Int(size - blockBytes)
            let p = inodePosition(inode) + inode.inodeSize + inode.xattrSize
            guard p % EROFS.blockSize + tail <= EROFS.blockSize else { throw ImageError.corrupt("inline data of inode \(inode.nid) crosses a block boundary") }
            out.append(contentsOf: try view.slice(p, tail))
        }
        return out
    }

    /// The target of a symlink.
    public func readlink(_ inode: ImageInode) throws(ImageError) -> String {
        guard inode.kind == .symlink else { throw ImageError(.invalidArgument, "inode \(inode.nid) is not a symlink") }
        guard inode.size > 0, inode.size < UInt64(EROFS.blockSize) else { throw ImageError.corrupt("symlink \(inode.nid) has length \(inode.size)") }
        let data = try flatData(inode)
        guard !data.contains(0) else { throw ImageError.corrupt("symlink \(inode.nid) target contains NUL") }
        return String(decoding: data, as: UTF8.self)
    }

    /// Extended attributes (inline and shared), sorted by full name.
    public func xattrs(_ inode: ImageInode) throws(ImageError) -> [(name: String, value: [UInt8])] {
        guard inode.xattrSize > 0 else { return [] }
        let base = inodePosition(inode) + inode.inodeSize
        let end = base + inode.xattrSize
        let shared = Int(try view.u8(base + 4))
        var result: [(name: String, value: [UInt8])] = []
        var p = base + EROFS.xattrHeaderSize
        for i in 0..<shared {
            guard p + 4 <= end else { throw ImageError.corrupt("shared xattr ids of inode \(inode.nid) overflow its xattr body") }
            let id = UInt64(try view.u32(p))
            let at = try view.offset(UInt64(xattrBlockAddress) * UInt64(EROFS.blockSize) + id * 4, length: 4, "shared xattr \(i) of inode \(inode.nid)")
            if let entry = try xattrEntry(at: at, limit: bytes.count, nid: inode.nid).entry { result.append(entry) }
            p += 4
        }
        while p < end {
            let (entry, size) = try xattrEntry(at: p, limit: end, nid: inode.nid)
            if let entry { result.append(entry) }
            p += size
        }
        return result.sorted { byteLess(Array($0.name.utf8), Array($1.name.utf8)) }
    }

    private func xattrEntry(at p: Int, limit: Int, nid: UInt64) throws(ImageError) -> (entry: (name: String, value: [UInt8])?, size: Int) {
        guard p + 4 <= limit else { throw ImageError.corrupt("xattr entry of inode \(nid) is truncated") }
        let nameLen = Int(try view.u8(p)), index = try view.u8(p + 1), valueLen = Int(try view.u16(p + 2))
        let size = (4 + nameLen + valueLen + 3) / 4 * 4
        guard p + 4 + nameLen + valueLen <= limit else { throw ImageError.corrupt("xattr entry of inode \(nid) overflows its body") }
        guard let prefix = EROFS.xattrPrefix(index: index) else { return (nil, size) }
        let name = prefix + String(decoding: try view.slice(p + 4, nameLen), as: UTF8.self)
        return ((name, Array(try view.slice(p + 4 + nameLen, valueLen))), size)
    }

    /// The chunk map of a regular file: one entry per chunk, nil for holes.
    public func chunkMap(_ inode: ImageInode) throws(ImageError) -> [ChunkLocation?] {
        guard inode.kind == .regular else { throw ImageError(.invalidArgument, "inode \(inode.nid) is not a regular file") }
        if inode.size == 0 { return [] }
        guard inode.layout == EROFS.layoutChunkBased else {
            throw ImageError(.unsupported, "regular file \(inode.nid) is not chunk based (layout \(inode.layout))")
        }
        let format = UInt16(truncatingIfNeeded: inode.iu)
        guard format & EROFS.chunkFormatIndexes != 0, format & ~(EROFS.chunkFormatIndexes | EROFS.chunkFormatBlkbitsMask) == 0 else {
            throw ImageError(.unsupported, "file \(inode.nid) has chunk format 0x\(String(format, radix: 16)) (only chunk indexes are supported)")
        }
        let bits = UInt64(EROFS.blockBits) + UInt64(format & EROFS.chunkFormatBlkbitsMask)
        guard bits == UInt64(chunkSize.trailingZeroBitCount) else {
            throw ImageError.corrupt("file \(inode.nid) uses chunk size 2^\(bits), the image 2^\(chunkSize.trailingZeroBitCount)")
        }
        let count = (inode.size >> bits) + (inode.size & ((1 << bits) - 1) == 0 ? 0 : 1)
        let start = (inodePosition(inode) + inode.inodeSize + inode.xattrSize + 7) / 8 * 8
        guard count <= UInt64(bytes.count) / 8 else { throw ImageError.corrupt("file \(inode.nid) of \(inode.size) bytes has more chunk indexes than the bootstrap holds") }
        let p0 = try view.offset(UInt64(start), length: count * 8, "chunk indexes of inode \(inode.nid)")
        var out: [ChunkLocation?] = []
        out.reserveCapacity(Int(count))
        for i in 0..<Int(count) {
            let p = p0 + i * 8
            let device = try view.u16(p + 2), blk = try view.u32(p + 4)
            if blk == EROFS.nullAddr { out.append(nil); continue }
            guard device >= 1, Int(device) <= devices.count else {
                throw ImageError.corrupt("chunk \(i) of inode \(inode.nid) refers to device \(device) of \(devices.count)")
            }
            out.append(ChunkLocation(blob: Int(device) - 1, blockAddress: blk))
        }
        return out
    }
}
