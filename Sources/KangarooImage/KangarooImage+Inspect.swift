import KangarooOCI

/// A summary of an image, for `kangaroo image inspect`.
public struct ImageSummary: Codable, Sendable, Equatable {
    public struct Blob: Codable, Sendable, Equatable {
        public var digest: String
        public var compressedSize: UInt64
        public var uncompressedSize: UInt64
        public var compression: String
        public var chunks: Int
    }

    public var bootstrapDigest: String
    public var bootstrapSize: UInt64
    public var files = 0
    public var directories = 0
    public var symlinks = 0
    public var otherEntries = 0
    public var hardlinks = 0
    public var bytes: UInt64 = 0
    /// Non-hole chunk references of all files.
    public var chunks = 0
    public var uniqueChunks = 0
    public var dedupRatio: Double = 1
    public var compressedSize: UInt64 = 0
    public var uncompressedChunkBytes: UInt64 = 0
    public var blobs: [Blob] = []
    public var prefetchCount = 0
    public var chunkSize: UInt32 = 0
    public var compression: String = "none"
}

extension Bootstrap {
    /// Counts entries, bytes and chunks of the tree and ToC.
    public func summary() throws(ImageError) -> ImageSummary {
        var s = ImageSummary(bootstrapDigest: Digest.sha256(of: bytes).description, bootstrapSize: UInt64(bytes.count))
        var seen: Set<UInt64> = []
        try walk { (_, inode) throws(ImageError) in
            guard seen.insert(inode.nid).inserted else { s.hardlinks += 1; return }
            switch inode.kind {
            case .regular:
                s.files += 1
                s.bytes += inode.size
                s.chunks += try chunkMap(inode).reduce(0) { $0 + ($1 == nil ? 0 : 1) }
            case .directory: s.directories += 1
            case .symlink: s.symlinks += 1
            default: s.otherEntries += 1
            }
        }
        s.uniqueChunks = chunks.count
        s.dedupRatio = chunks.isEmpty ? 1 : Double(s.chunks) / Double(chunks.count)
        s.compressedSize = blobs.reduce(0) { $0 + $1.compressedSize }
        s.uncompressedChunkBytes = chunks.reduce(0) { $0 + UInt64($1.uncompressedSize) }
        s.blobs = blobs.enumerated().map { i, b in
            ImageSummary.Blob(digest: "sha256:" + b.digestHex, compressedSize: b.compressedSize, uncompressedSize: b.uncompressedSize,
                              compression: b.compression.name, chunks: chunks.reduce(0) { $0 + ($1.blob == i ? 1 : 0) })
        }
        s.prefetchCount = prefetch.count
        s.chunkSize = chunkSize
        let names = Set(blobs.map(\.compression.name))
        s.compression = names.count <= 1 ? (names.first ?? "none") : "mixed"
        return s
    }
}

extension KangarooImage {
    /// `kangaroo image inspect`.
    public func inspect() throws(ImageError) -> ImageSummary { try bootstrap.summary() }
}
