/// EROFS on-disk constants (Linux fs/erofs/erofs_fs.h) used by the Kangaroo
/// bootstrap. See docs/FORMAT.md.
enum EROFS {
    static let superOffset = 1024
    static let magic: UInt32 = 0xE0F5_E1E2
    static let blockBits: UInt8 = 12
    static let blockSize = 4096
    static let superBlockSize = 128
    static let deviceSlotSize = 128
    static let inodeExtendedSize = 64
    static let inodeCompactSize = 32
    static let direntSize = 12
    static let chunkIndexSize = 8
    static let xattrHeaderSize = 12
    static let nameMax = 255
    static let nullAddr: UInt32 = 0xFFFF_FFFF

    static let featureIncompatChunkedFile: UInt32 = 0x4
    static let featureIncompatDeviceTable: UInt32 = 0x8
    static let featureCompatSbChecksum: UInt32 = 0x1

    // i_format datalayouts
    static let layoutFlatPlain: UInt16 = 0
    static let layoutFlatInline: UInt16 = 2
    static let layoutChunkBased: UInt16 = 4

    static let chunkFormatBlkbitsMask: UInt16 = 0x1F
    static let chunkFormatIndexes: UInt16 = 0x20

    // dirent file types (FT_*)
    static let ftUnknown: UInt8 = 0
    static let ftRegular: UInt8 = 1
    static let ftDirectory: UInt8 = 2
    static let ftCharDevice: UInt8 = 3
    static let ftBlockDevice: UInt8 = 4
    static let ftFifo: UInt8 = 5
    static let ftSocket: UInt8 = 6
    static let ftSymlink: UInt8 = 7

    // S_IF* file type bits of i_mode
    static let sIFMT: UInt32 = 0o170000
    static let sIFSOCK: UInt32 = 0o140000
    static let sIFLNK: UInt32 = 0o120000
    static let sIFREG: UInt32 = 0o100000
    static let sIFBLK: UInt32 = 0o060000
    static let sIFDIR: UInt32 = 0o040000
    static let sIFCHR: UInt32 = 0o020000
    static let sIFIFO: UInt32 = 0o010000

    /// Short xattr name prefixes and their e_name_index.
    static let xattrPrefixes: [(prefix: String, index: UInt8)] = [
        ("system.posix_acl_access", 2),
        ("system.posix_acl_default", 3),
        ("user.", 1),
        ("trusted.", 4),
        ("security.", 6),
    ]

    static func xattrPrefix(index: UInt8) -> String? {
        xattrPrefixes.first { $0.index == index }?.prefix
    }

    /// Splits a full xattr name into (index, suffix); nil if EROFS cannot store it.
    static func splitXattrName(_ name: String) -> (UInt8, [UInt8])? {
        for (prefix, index) in xattrPrefixes {
            if index == 2 || index == 3 {
                if name == prefix { return (index, []) }
            } else if name.hasPrefix(prefix), name.utf8.count > prefix.utf8.count {
                return (index, Array(name.utf8.dropFirst(prefix.utf8.count)))
            }
        }
        return nil
    }

    /// Linux new_encode_dev.
    static func encodeDev(major: UInt32, minor: UInt32) -> UInt32 {
        (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    }

    /// Linux new_decode_dev.
    static func decodeDev(_ dev: UInt32) -> (major: UInt32, minor: UInt32) {
        ((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))
    }

    static func blocks(for bytes: UInt64) -> UInt64 { (bytes + UInt64(blockSize) - 1) / UInt64(blockSize) }
}

/// Byte-wise lexicographic comparison (EROFS sorts dirents with memcmp).
@inline(__always)
func byteLess(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    let n = min(a.count, b.count)
    var i = 0
    while i < n {
        if a[i] != b[i] { return a[i] < b[i] }
        i += 1
    }
    return a.count < b.count
}
