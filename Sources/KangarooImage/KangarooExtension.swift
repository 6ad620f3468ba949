/// How one chunk's bytes are stored in its blob.
public enum ChunkCompression: UInt8, Sendable, Codable, CaseIterable {
    case none = 0
    case zstd = 1
    case lz4 = 2

    public var name: String {
        switch self {
        case .none: "none"
        case .zstd: "zstd"
        case .lz4: "lz4"
        }
    }
}

/// One data blob of an image (blob table entry; see docs/FORMAT.md).
public struct BlobInfo: Sendable, Equatable {
    /// sha256 of the compressed blob file (= its OCI layer digest), 32 raw bytes.
    public var digest: [UInt8]
    public var compressedSize: UInt64
    /// Size of the blob's uncompressed address space, a multiple of 4096.
    public var uncompressedSize: UInt64
    /// The blob's default compression (chunks may still be stored raw).
    public var compression: ChunkCompression

    public init(digest: [UInt8], compressedSize: UInt64, uncompressedSize: UInt64, compression: ChunkCompression) {
        self.digest = digest
        self.compressedSize = compressedSize
        self.uncompressedSize = uncompressedSize
        self.compression = compression
    }

    public var digestHex: String { digest.hexEncoded }
    public var uncompressedBlocks: UInt64 { uncompressedSize / UInt64(EROFS.blockSize) }
}

/// One unique chunk (ToC entry; see docs/FORMAT.md).
public struct ChunkInfo: Sendable, Equatable {
    public var blob: Int
    public var blockAddress: UInt32
    public var uncompressedSize: UInt32
    public var compressedSize: UInt32
    public var compressedOffset: UInt64
    public var compression: ChunkCompression
    /// sha256 of the uncompressed bytes, 32 raw bytes.
    public var digest: [UInt8]

    public init(blob: Int, blockAddress: UInt32, uncompressedSize: UInt32, compressedSize: UInt32,
                compressedOffset: UInt64, compression: ChunkCompression, digest: [UInt8]) {
        self.blob = blob
        self.blockAddress = blockAddress
        self.uncompressedSize = uncompressedSize
        self.compressedSize = compressedSize
        self.compressedOffset = compressedOffset
        self.compression = compression
        self.digest = digest
    }

    public var location: ChunkLocation { ChunkLocation(blob: blob, blockAddress: blockAddress) }
    public var blocks: UInt64 { EROFS.blocks(for: UInt64(uncompressedSize)) }
    public var compressedRange: Range<UInt64> { compressedOffset..<(compressedOffset + UInt64(compressedSize)) }
}

/// The Kangaroo extension region of a bootstrap: blob table, chunk ToC and
/// prefetch list.
public struct KangarooExtension: Sendable, Equatable {
    public var chunkSize: UInt32
    public var blobs: [BlobInfo]
    /// Sorted by (blob, blockAddress), non-overlapping.
    public var chunks: [ChunkInfo]
    /// Paths (relative, no leading '/') in first-access order.
    public var prefetch: [String]

    public init(chunkSize: UInt32, blobs: [BlobInfo], chunks: [ChunkInfo], prefetch: [String]) {
        self.chunkSize = chunkSize
        self.blobs = blobs
        self.chunks = chunks
        self.prefetch = prefetch
    }

    static let magic: [UInt8] = Array("KGROEXT1".utf8)
    static let headerSize = 64
    static let blobEntrySize = 64
    static let chunkEntrySize = 64

    func encode() -> [UInt8] {
        var w = ByteWriter()
        let blobOffset = Self.headerSize
        let chunkOffset = blobOffset + blobs.count * Self.blobEntrySize
        let prefetchOffset = chunkOffset + chunks.count * Self.chunkEntrySize
        var pre = ByteWriter()
        for path in prefetch {
            let bytes = Array(path.utf8.prefix(0xFFFF))
            pre.u16(UInt16(bytes.count))
            pre.append(bytes)
        }
        w.append(Self.magic)
        w.u32(1)
        w.u32(chunkSize)
        w.u32(UInt32(blobs.count))
        w.u32(UInt32(chunks.count))
        w.u32(UInt32(prefetch.count))
        w.u32(0)
        w.u64(UInt64(blobOffset))
        w.u64(UInt64(chunkOffset))
        w.u64(UInt64(prefetchOffset))
        w.u64(UInt64(pre.count))
        w.pad(toLength: Self.headerSize)
        for blob in blobs {
            w.append(blob.digest)
            w.u64(blob.compressedSize)
            w.u64(blob.uncompressedSize)
            w.u8(blob.compression.rawValue)
            w.zeros(15)
        }
        for c in chunks {
            w.u32(UInt32(c.blob))
            w.u32(c.blockAddress)
            w.u32(c.uncompressedSize)
            w.u32(c.compressedSize)
            w.u64(c.compressedOffset)
            w.u8(c.compression.rawValue)
            w.zeros(7)
            w.append(c.digest)
        }
        w.append(pre.bytes)
        return w.bytes
    }

    /// Parses and validates the region `[offset, offset+size)` of `view`.
    static func decode(_ view: ByteView, offset: Int, size: Int) throws(ImageError) -> KangarooExtension {
        try view.check(offset, size, "Kangaroo extension")
        guard size >= headerSize else { throw ImageError.corrupt("extension region of \(size) bytes is shorter than its header") }
        guard Array(try view.slice(offset, 8)) == magic else { throw ImageError.corrupt("extension magic is not KGROEXT1") }
        let version = try view.u32(offset + 8)
        guard version == 1 else { throw ImageError(.unsupported, "Kangaroo extension version \(version) is not supported (expected 1)") }
        let chunkSize = try view.u32(offset + 12)
        guard chunkSize.nonzeroBitCount == 1, (1 << 16)...(1 << 24) ~= chunkSize else {
            throw ImageError.corrupt("chunk size \(chunkSize) is not a power of two in 64 KiB...16 MiB")
        }
        let blobCount = Int(try view.u32(offset + 16))
        let chunkCount = Int(try view.u32(offset + 20))
        let prefetchCount = Int(try view.u32(offset + 24))
        let blobOff = try view.u64(offset + 32), chunkOff = try view.u64(offset + 40)
        let preOff = try view.u64(offset + 48), preSize = try view.u64(offset + 56)
        let region = ByteView(Array(try view.slice(offset, size)))
        let bt = try region.offset(blobOff, length: UInt64(blobCount) * UInt64(blobEntrySize), "blob table")
        let ct = try region.offset(chunkOff, length: UInt64(chunkCount) * UInt64(chunkEntrySize), "chunk table")
        let pt = try region.offset(preOff, length: preSize, "prefetch list")

        var blobs: [BlobInfo] = []
        blobs.reserveCapacity(blobCount)
        for i in 0..<blobCount {
            let o = bt + i * blobEntrySize
            guard let comp = ChunkCompression(rawValue: try region.u8(o + 48)) else { throw ImageError.corrupt("blob \(i) has unknown compression") }
            let blob = BlobInfo(digest: Array(try region.slice(o, 32)), compressedSize: try region.u64(o + 32),
                                uncompressedSize: try region.u64(o + 40), compression: comp)
            guard blob.uncompressedSize % UInt64(EROFS.blockSize) == 0, blob.uncompressedBlocks < UInt64(EROFS.nullAddr) else {
                throw ImageError.corrupt("blob \(i) uncompressed size \(blob.uncompressedSize) is not a block multiple below 2^32 blocks")
            }
            blobs.append(blob)
        }
        var chunks: [ChunkInfo] = []
        chunks.reserveCapacity(chunkCount)
        for i in 0..<chunkCount {
            let o = ct + i * chunkEntrySize
            guard let comp = ChunkCompression(rawValue: try region.u8(o + 24)) else { throw ImageError.corrupt("chunk \(i) has unknown compression") }
            let c = ChunkInfo(blob: Int(try region.u32(o)), blockAddress: try region.u32(o + 4),
                              uncompressedSize: try region.u32(o + 8), compressedSize: try region.u32(o + 12),
                              compressedOffset: try region.u64(o + 16), compression: comp, digest: Array(try region.slice(o + 32, 32)))
            guard c.blob < blobCount else { throw ImageError.corrupt("chunk \(i) refers to blob \(c.blob) of \(blobCount)") }
            let blob = blobs[c.blob]
            guard c.uncompressedSize > 0, c.uncompressedSize <= chunkSize else {
                throw ImageError.corrupt("chunk \(i) uncompressed size \(c.uncompressedSize) is outside 1...\(chunkSize)")
            }
            guard UInt64(c.blockAddress) + c.blocks <= blob.uncompressedBlocks else {
                throw ImageError.corrupt("chunk \(i) blocks \(c.blockAddress)+\(c.blocks) exceed blob \(c.blob) (\(blob.uncompressedBlocks) blocks)")
            }
            guard c.compressedOffset <= blob.compressedSize, UInt64(c.compressedSize) <= blob.compressedSize - c.compressedOffset else {
                throw ImageError.corrupt("chunk \(i) compressed range \(c.compressedOffset)+\(c.compressedSize) exceeds blob \(c.blob) (\(blob.compressedSize) bytes)")
            }
            guard c.compression != .none || c.compressedSize == c.uncompressedSize else {
                throw ImageError.corrupt("uncompressed chunk \(i) has compressed size \(c.compressedSize) != \(c.uncompressedSize)")
            }
            if let prev = chunks.last {
                guard prev.blob < c.blob || (prev.blob == c.blob && UInt64(prev.blockAddress) + prev.blocks <= UInt64(c.blockAddress)) else {
                    throw ImageError.corrupt("chunk \(i) is out of order or overlaps chunk \(i - 1)")
                }
            }
            chunks.append(c)
        }
        var prefetch: [String] = []
        var p = pt
        let end = pt + Int(preSize)
        for i in 0..<prefetchCount {
            guard p + 2 <= end else { throw ImageError.corrupt("prefetch entry \(i) lies outside the prefetch list") }
            let len = Int(try region.u16(p))
            guard p + 2 + len <= end else { throw ImageError.corrupt("prefetch entry \(i) lies outside the prefetch list") }
            prefetch.append(String(decoding: try region.slice(p + 2, len), as: UTF8.self))
            p += 2 + len
        }
        return KangarooExtension(chunkSize: chunkSize, blobs: blobs, chunks: chunks, prefetch: prefetch)
    }

    /// Index of the chunk at `location`, by binary search.
    public func chunkIndex(at location: ChunkLocation) -> Int? {
        var lo = 0, hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let c = chunks[mid]
            if c.location == location { return mid }
            if c.location < location { lo = mid + 1 } else { hi = mid }
        }
        return nil
    }
}

extension Sequence where Element == UInt8 {
    var hexEncoded: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in self {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
