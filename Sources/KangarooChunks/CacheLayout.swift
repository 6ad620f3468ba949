import KangarooImage

/// The files of one blob in a node's chunk cache directory (docs/FORMAT.md
/// section 7, docs/P2P.md):
///
/// - `<hex>.data`: verified chunks, uncompressed, at their block addresses
///   (what the kernel mounts once complete);
/// - `<hex>.bitmap`: one bit per 4 KiB block of `.data`, set once the block's
///   chunk is durable and verified;
/// - `<hex>.toc`: the blob's chunks by compressed offset (`BlobTOC`), so
///   that a peer can answer a range of the blob as the registry would;
/// - `<hex>.packed` and `<hex>.pmap`: with `keepCompressed`, the compressed
///   bytes of compressed chunks at their blob offsets, and one bit per
///   `.toc` entry set once they are durable (raw chunks are served from
///   `.data`, their compressed and uncompressed bytes being the same).
public enum CacheLayout {
    public static func dataPath(_ directory: String, _ hex: String) -> String { directory + "/" + hex + ".data" }
    public static func bitmapPath(_ directory: String, _ hex: String) -> String { directory + "/" + hex + ".bitmap" }
    public static func tocPath(_ directory: String, _ hex: String) -> String { directory + "/" + hex + ".toc" }
    public static func packedPath(_ directory: String, _ hex: String) -> String { directory + "/" + hex + ".packed" }
    public static func packedMapPath(_ directory: String, _ hex: String) -> String { directory + "/" + hex + ".pmap" }
}

/// The chunks of one blob ordered by compressed offset, one entry per
/// distinct compressed range.
public struct BlobTOC: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var compressedOffset: UInt64
        public var compressedSize: UInt32
        public var uncompressedSize: UInt32
        public var blockAddress: UInt32
        public var compression: ChunkCompression

        public var compressedEnd: UInt64 { compressedOffset + UInt64(compressedSize) }
        /// The `.data` blocks the chunk covers.
        public var blocks: Range<UInt64> {
            UInt64(blockAddress)..<(UInt64(blockAddress) + max(1, (UInt64(uncompressedSize) + 4095) / 4096))
        }
    }

    public let entries: [Entry]
    static let magic: [UInt8] = Array("KGTOC1\n\0".utf8)
    static let entrySize = 8 + 4 + 4 + 4 + 1

    /// The entries of blob `blob` among a bootstrap's chunks.
    public init(chunks: [ChunkInfo], blob: Int) {
        var seen: Set<UInt64> = []
        var list: [Entry] = []
        for c in chunks where c.blob == blob && seen.insert(c.compressedOffset).inserted {
            list.append(Entry(compressedOffset: c.compressedOffset, compressedSize: c.compressedSize,
                              uncompressedSize: c.uncompressedSize, blockAddress: c.blockAddress, compression: c.compression))
        }
        entries = list.sorted { $0.compressedOffset < $1.compressedOffset }
    }

    init(entries: [Entry]) { self.entries = entries }

    /// The `.toc` file: magic, count (u64 LE), then the entries (LE).
    public func encoded() -> [UInt8] {
        var out = Self.magic
        out.reserveCapacity(out.count + 8 + entries.count * Self.entrySize)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(UInt64(entries.count))
        for e in entries {
            put(e.compressedOffset)
            put(e.compressedSize)
            put(e.uncompressedSize)
            put(e.blockAddress)
            out.append(e.compression.rawValue)
        }
        return out
    }

    public init(decoding bytes: [UInt8], what: String) throws(ChunksError) {
        func bad(_ why: String) -> ChunksError { ChunksError(.invalidArgument, "\(what) is not a chunk table: \(why)") }
        guard bytes.count >= Self.magic.count + 8, Array(bytes[0..<Self.magic.count]) == Self.magic else { throw bad("bad magic") }
        var position = Self.magic.count
        func get<T: FixedWidthInteger>(_: T.Type) -> T {
            var v: T = 0
            for i in 0..<MemoryLayout<T>.size { v |= T(bytes[position + i]) << (8 * i) }
            position += MemoryLayout<T>.size
            return v
        }
        let count = get(UInt64.self)
        guard count <= UInt64((bytes.count - position) / Self.entrySize),
              bytes.count == position + Int(count) * Self.entrySize else { throw bad("\(count) entries do not fit its size") }
        var list: [Entry] = []
        list.reserveCapacity(Int(count))
        var end: UInt64 = 0
        for _ in 0..<count {
            let offset = get(UInt64.self), csize = get(UInt32.self), usize = get(UInt32.self), block = get(UInt32.self)
            guard let compression = ChunkCompression(rawValue: bytes[position]) else { throw bad("unknown compression") }
            position += 1
            guard offset >= end else { throw bad("entries overlap or are out of order") }
            end = offset + UInt64(csize)
            list.append(Entry(compressedOffset: offset, compressedSize: csize, uncompressedSize: usize,
                              blockAddress: block, compression: compression))
        }
        entries = list
    }

    /// The entries that together cover `range` exactly (each overlapping
    /// it, no gap between them and none at the ends), or nil.
    public func covering(_ range: Range<UInt64>) -> Range<Int>? {
        guard !range.isEmpty else { return nil }
        // First entry whose end is past range.lowerBound.
        var low = 0, high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].compressedEnd <= range.lowerBound { low = mid + 1 } else { high = mid }
        }
        guard low < entries.count, entries[low].compressedOffset <= range.lowerBound else { return nil }
        var index = low
        var end = entries[low].compressedEnd
        while end < range.upperBound {
            index += 1
            guard index < entries.count, entries[index].compressedOffset == end else { return nil }
            end = entries[index].compressedEnd
        }
        return low..<(index + 1)
    }
}
