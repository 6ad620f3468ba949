import KangarooImage
import KangarooOCI

/// Compressed bytes of blobs by digest: a registry, a mirror, a peer. The
/// same source serves every image that references a blob (images share
/// blobs; the chunk cache keeps them per blob digest). Blocking: chunk
/// fetches run on threads of their own.
public protocol BlobSource: Sendable {
    /// Exactly `range.count` bytes at `range` of blob `digest`, or an error.
    /// A source with several hosts gives bytes `accept` rejects to no one
    /// (see `ChunkSource.read(blob:range:accept:)`).
    func read(_ digest: Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws(ChunksError) -> [UInt8]
    /// Told once the chunks of `range` are in this node's cache (a P2P
    /// source announces them); a requirement, so that calls through an
    /// existential reach the conforming type's version.
    func stored(_ digest: Digest, range: Range<UInt64>)
}

extension BlobSource {
    public func read(_ digest: Digest, range: Range<UInt64>) throws(ChunksError) -> [UInt8] {
        try read(digest, range: range, accept: { _ in true })
    }

    /// Told once the chunks of `range` are in this node's cache; nothing by default.
    public func stored(_ digest: Digest, range: Range<UInt64>) {}
}

/// A source that gets parts of a range itself and the rest from `origin`
/// (the hosts after it: mirrors and the registry), checks the whole with
/// `accept` and returns only bytes `accept` took (a P2P source: peers hold
/// some chunks of a range, the registry the others; it knows which parent
/// to blame). `own` is how many of the bytes it delivered itself (its
/// stats row); `origin` counts the rest in its own.
public protocol PlanningBlobSource: BlobSource {
    func read(_ digest: Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool,
              origin: any BlobSource) throws(ChunksError) -> (bytes: [UInt8], own: UInt64)
}

/// What one host has delivered so far (`kangaroo image stats`, metrics).
public struct SourceStats: Codable, Sendable, Equatable {
    /// The host's URL.
    public var name: String
    /// `origin` (the registry itself) or `mirror`.
    public var role: String
    public var bytes: UInt64 = 0
    public var requests: UInt64 = 0
    public var failures: UInt64 = 0
    /// Answers that failed verification (the host is then blocked).
    public var rejected: UInt64 = 0
    /// `up`, `down` while failures keep it out of use, `blocked` after
    /// it served bytes that failed verification.
    public var state: String = "up"

    public init(name: String, role: String) {
        self.name = name
        self.role = role
    }
}

/// A source that can say where its bytes came from.
public protocol SourceReporting: Sendable {
    func sourceStats() -> [SourceStats]
}

/// An image's `ChunkSource` (blob table index) over a `BlobSource` (digest).
public final class BlobChunkSource: ChunkSource, SourceReporting {
    public let source: any BlobSource
    let digests: [Digest]

    public init(_ source: any BlobSource, image: KangarooImage) {
        self.source = source
        self.digests = image.blobDescriptors.map(\.digest)
    }

    public func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        try read(blob: blob, range: range, accept: { _ in true })
    }

    public func read(blob: Int, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws -> [UInt8] {
        guard digests.indices.contains(blob) else {
            throw ChunksError(.invalidArgument, "blob index \(blob) is not in the image's blob table (\(digests.count) blobs)")
        }
        return try source.read(digests[blob], range: range, accept: accept)
    }

    public func stored(blob: Int, range: Range<UInt64>) {
        guard digests.indices.contains(blob) else { return }
        source.stored(digests[blob], range: range)
    }

    public func sourceStats() -> [SourceStats] {
        (source as? any SourceReporting)?.sourceStats() ?? []
    }
}
