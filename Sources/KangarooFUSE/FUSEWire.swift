// Byte-level encoding of the FUSE structs (native endianness, the layouts of
// include/uapi/linux/fuse.h). Offsets are spelled out per field; unit tests
// check the sizes against the system's <linux/fuse.h>.

/// Sizes of the wire structs.
enum FUSEWireSize {
    static let inHeader = 40
    static let outHeader = 16
    static let attr = 88
    static let entryOut = 128
    static let attrOut = 104
    static let openOut = 16
    static let initIn = 64
    static let initOut = 64
    static let kstatfs = 80
    static let getxattrOut = 8
    static let readIn = 40
    static let dirent = 24
    static let direntPlus = entryOut + dirent
    static let forgetOne = 16
    static let batchForgetIn = 8
}

extension UnsafeMutableRawBufferPointer {
    @inline(__always)
    func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value, toByteOffset: offset, as: T.self)
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        loadUnaligned(fromByteOffset: offset, as: T.self)
    }
}

/// struct fuse_in_header.
struct FUSEInHeader: Equatable {
    var length: UInt32
    var opcode: UInt32
    var unique: UInt64
    var nodeID: UInt64
    var uid: UInt32
    var gid: UInt32
    var pid: UInt32
    /// Length of extension headers after the payload, in 8-byte units.
    var totalExtensionLength: UInt16

    init(length: UInt32, opcode: UInt32, unique: UInt64, nodeID: UInt64,
         uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 0, totalExtensionLength: UInt16 = 0) {
        self.length = length
        self.opcode = opcode
        self.unique = unique
        self.nodeID = nodeID
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.totalExtensionLength = totalExtensionLength
    }

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= FUSEWireSize.inHeader else { return nil }
        length = bytes.get(UInt32.self, at: 0)
        opcode = bytes.get(UInt32.self, at: 4)
        unique = bytes.get(UInt64.self, at: 8)
        nodeID = bytes.get(UInt64.self, at: 16)
        uid = bytes.get(UInt32.self, at: 24)
        gid = bytes.get(UInt32.self, at: 28)
        pid = bytes.get(UInt32.self, at: 32)
        totalExtensionLength = bytes.get(UInt16.self, at: 36)
    }

    func encode(into buffer: UnsafeMutableRawBufferPointer) {
        buffer.put(length, at: 0)
        buffer.put(opcode, at: 4)
        buffer.put(unique, at: 8)
        buffer.put(nodeID, at: 16)
        buffer.put(uid, at: 24)
        buffer.put(gid, at: 28)
        buffer.put(pid, at: 32)
        buffer.put(totalExtensionLength, at: 36)
        buffer.put(UInt16(0), at: 38)
    }
}

/// struct fuse_out_header: length, -errno, unique.
enum FUSEOutHeader {
    static func encode(into buffer: UnsafeMutableRawBufferPointer, length: Int, error: Int32, unique: UInt64) {
        buffer.put(UInt32(length), at: 0)
        buffer.put(error, at: 4)
        buffer.put(unique, at: 8)
    }
}

/// struct fuse_init_in (the fields we read).
struct FUSEInitIn: Equatable {
    var major: UInt32
    var minor: UInt32
    var maxReadahead: UInt32
    var flags: FUSEInitFlags

    init(major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: FUSEInitFlags) {
        self.major = major
        self.minor = minor
        self.maxReadahead = maxReadahead
        self.flags = flags
    }

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 16 else { return nil }
        major = bytes.get(UInt32.self, at: 0)
        minor = bytes.get(UInt32.self, at: 4)
        maxReadahead = bytes.get(UInt32.self, at: 8)
        var raw = UInt64(bytes.get(UInt32.self, at: 12))
        if raw & FUSEInitFlags.initExt.rawValue != 0, bytes.count >= 20 {
            raw |= UInt64(bytes.get(UInt32.self, at: 16)) << 32
        }
        flags = FUSEInitFlags(rawValue: raw)
    }

    func encode(into buffer: UnsafeMutableRawBufferPointer) {
        for offset in stride(from: 0, to: FUSEWireSize.initIn, by: 4) { buffer.put(UInt32(0), at: offset) }
        buffer.put(major, at: 0)
        buffer.put(minor, at: 4)
        buffer.put(maxReadahead, at: 8)
        buffer.put(UInt32(truncatingIfNeeded: flags.rawValue), at: 12)
        buffer.put(UInt32(truncatingIfNeeded: flags.rawValue >> 32), at: 16)
    }
}

/// struct fuse_init_out.
struct FUSEInitOut: Equatable {
    var major: UInt32
    var minor: UInt32
    var maxReadahead: UInt32
    var flags: FUSEInitFlags
    var maxBackground: UInt16
    var congestionThreshold: UInt16
    var maxWrite: UInt32
    var timeGranularity: UInt32
    var maxPages: UInt16

    func encode(into buffer: UnsafeMutableRawBufferPointer) {
        for offset in stride(from: 0, to: FUSEWireSize.initOut, by: 4) { buffer.put(UInt32(0), at: offset) }
        buffer.put(major, at: 0)
        buffer.put(minor, at: 4)
        buffer.put(maxReadahead, at: 8)
        buffer.put(UInt32(truncatingIfNeeded: flags.rawValue), at: 12)
        buffer.put(maxBackground, at: 16)
        buffer.put(congestionThreshold, at: 18)
        buffer.put(maxWrite, at: 20)
        buffer.put(timeGranularity, at: 24)
        buffer.put(maxPages, at: 28)
        buffer.put(UInt16(0), at: 30)  // map_alignment
        buffer.put(UInt32(truncatingIfNeeded: flags.rawValue >> 32), at: 32)
    }

    init(major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: FUSEInitFlags, maxBackground: UInt16,
         congestionThreshold: UInt16, maxWrite: UInt32, timeGranularity: UInt32, maxPages: UInt16) {
        self.major = major
        self.minor = minor
        self.maxReadahead = maxReadahead
        self.flags = flags
        self.maxBackground = maxBackground
        self.congestionThreshold = congestionThreshold
        self.maxWrite = maxWrite
        self.timeGranularity = timeGranularity
        self.maxPages = maxPages
    }

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= FUSEWireSize.initOut else { return nil }
        major = bytes.get(UInt32.self, at: 0)
        minor = bytes.get(UInt32.self, at: 4)
        maxReadahead = bytes.get(UInt32.self, at: 8)
        flags = FUSEInitFlags(rawValue: UInt64(bytes.get(UInt32.self, at: 12))
            | UInt64(bytes.get(UInt32.self, at: 32)) << 32)
        maxBackground = bytes.get(UInt16.self, at: 16)
        congestionThreshold = bytes.get(UInt16.self, at: 18)
        maxWrite = bytes.get(UInt32.self, at: 20)
        timeGranularity = bytes.get(UInt32.self, at: 24)
        maxPages = bytes.get(UInt16.self, at: 28)
    }
}

extension Duration {
    /// (seconds, nanoseconds) as FUSE timeouts carry them; negative is zero.
    var fuseTimeout: (UInt64, UInt32) {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return (0, 0) }
        return (UInt64(seconds), UInt32(attoseconds / 1_000_000_000))
    }
}

extension FUSEAttributes {
    /// struct fuse_attr (88 bytes).
    func encode(into buffer: UnsafeMutableRawBufferPointer, at base: Int) {
        buffer.put(inode, at: base + 0)
        buffer.put(size, at: base + 8)
        buffer.put(blocks, at: base + 16)
        buffer.put(accessTime.seconds, at: base + 24)
        buffer.put(modificationTime.seconds, at: base + 32)
        buffer.put(changeTime.seconds, at: base + 40)
        buffer.put(accessTime.nanoseconds, at: base + 48)
        buffer.put(modificationTime.nanoseconds, at: base + 52)
        buffer.put(changeTime.nanoseconds, at: base + 56)
        buffer.put(mode, at: base + 60)
        buffer.put(linkCount, at: base + 64)
        buffer.put(uid, at: base + 68)
        buffer.put(gid, at: base + 72)
        buffer.put(rdev, at: base + 76)
        buffer.put(blockSize, at: base + 80)
        buffer.put(UInt32(0), at: base + 84)  // flags
    }

    static func decode(_ bytes: UnsafeRawBufferPointer, at base: Int) -> FUSEAttributes {
        FUSEAttributes(
            inode: bytes.get(UInt64.self, at: base),
            mode: bytes.get(UInt32.self, at: base + 60),
            size: bytes.get(UInt64.self, at: base + 8),
            blocks: bytes.get(UInt64.self, at: base + 16),
            linkCount: bytes.get(UInt32.self, at: base + 64),
            uid: bytes.get(UInt32.self, at: base + 68),
            gid: bytes.get(UInt32.self, at: base + 72),
            rdev: bytes.get(UInt32.self, at: base + 76),
            accessTime: FUSETime(seconds: bytes.get(UInt64.self, at: base + 24), nanoseconds: bytes.get(UInt32.self, at: base + 48)),
            modificationTime: FUSETime(seconds: bytes.get(UInt64.self, at: base + 32), nanoseconds: bytes.get(UInt32.self, at: base + 52)),
            changeTime: FUSETime(seconds: bytes.get(UInt64.self, at: base + 40), nanoseconds: bytes.get(UInt32.self, at: base + 56)),
            blockSize: bytes.get(UInt32.self, at: base + 80))
    }
}

extension FUSEEntry {
    /// struct fuse_entry_out (128 bytes).
    func encode(into buffer: UnsafeMutableRawBufferPointer, at base: Int) {
        let entry = entryTimeout.fuseTimeout
        let attr = attributeTimeout.fuseTimeout
        buffer.put(nodeID, at: base + 0)
        buffer.put(generation, at: base + 8)
        buffer.put(entry.0, at: base + 16)
        buffer.put(attr.0, at: base + 24)
        buffer.put(entry.1, at: base + 32)
        buffer.put(attr.1, at: base + 36)
        attributes.encode(into: buffer, at: base + 40)
    }

    /// A negative entry (nodeid 0): the kernel caches "no such name" for `timeout`.
    static func encodeNegative(into buffer: UnsafeMutableRawBufferPointer, at base: Int, timeout: Duration) {
        let (seconds, nanoseconds) = timeout.fuseTimeout
        for offset in stride(from: 0, to: FUSEWireSize.entryOut, by: 8) { buffer.put(UInt64(0), at: base + offset) }
        buffer.put(seconds, at: base + 16)
        buffer.put(nanoseconds, at: base + 32)
    }
}

extension FUSEStatfs {
    /// struct fuse_kstatfs (80 bytes).
    func encode(into buffer: UnsafeMutableRawBufferPointer, at base: Int) {
        for offset in stride(from: 0, to: FUSEWireSize.kstatfs, by: 8) { buffer.put(UInt64(0), at: base + offset) }
        buffer.put(blocks, at: base + 0)
        buffer.put(blocksFree, at: base + 8)
        buffer.put(blocksAvailable, at: base + 16)
        buffer.put(files, at: base + 24)
        buffer.put(filesFree, at: base + 32)
        buffer.put(blockSize, at: base + 40)
        buffer.put(nameMax, at: base + 44)
        buffer.put(fragmentSize, at: base + 48)
    }
}

extension FUSEOpenReply {
    /// struct fuse_open_out (16 bytes).
    func encode(into buffer: UnsafeMutableRawBufferPointer, at base: Int) {
        buffer.put(handle, at: base + 0)
        buffer.put(flags.rawValue, at: base + 8)
        buffer.put(Int32(0), at: base + 12)  // backing_id
    }
}
