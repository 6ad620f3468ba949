import Foundation
import KangarooOCI

/// A stream of layer entries with their data, as `KangarooOCI.LayerReader`
/// delivers them (see `ImageConverter`); tests feed entries directly.
public protocol LayerEntrySource: AnyObject {
    func nextEntry() throws(ImageError) -> LayerEntry?
    /// Data of the current regular entry; gaps between blocks are holes.
    func nextDataBlock() throws(ImageError) -> (offset: UInt64, bytes: UnsafeRawBufferPointer)?
}

/// Options for building an image.
public struct BuildOptions: Sendable {
    /// Chunk size, a power of two in 64 KiB...16 MiB.
    public var chunkSize: Int = 1 << 20
    public var compression: ChunkCompression = .zstd
    /// zstd level or lz4 HC level (0 = fast lz4). zstd 6 is the default: on a
    /// Debian bookworm + python3 image (one 118.8 MB gzip layer) the blobs
    /// were zstd 3 121.0 MB, 5 118.6 MB, 6 117.4 MB, 7 117.0 MB, lz4 150.6 MB.
    public var level: Int32 = 6
    /// Paths in first-access order; their chunks go first in the new blob.
    public var prefetch: [String] = []
    /// Hash/compress workers (default: one per core).
    public var workers: Int = ProcessInfo.processInfo.activeProcessorCount

    public init(chunkSize: Int = 1 << 20, compression: ChunkCompression = .zstd, level: Int32? = nil, prefetch: [String] = []) {
        self.chunkSize = chunkSize
        self.compression = compression
        self.level = level ?? (compression == .lz4 ? 0 : 6)
        self.prefetch = prefetch
    }

    var chunkSizeBits: Int { chunkSize.trailingZeroBitCount }

    func validate() throws(ImageError) {
        guard chunkSize.nonzeroBitCount == 1, (1 << 16)...(1 << 24) ~= chunkSize else {
            throw ImageError(.invalidArgument, "chunk size \(chunkSize) must be a power of two between 64 KiB and 16 MiB")
        }
    }
}

/// Statistics of a conversion.
public struct ConvertStats: Sendable, Codable, Equatable {
    public var files = 0
    public var directories = 0
    public var symlinks = 0
    public var otherEntries = 0
    /// Sum of regular file sizes (each hard-linked inode once).
    public var bytes: UInt64 = 0
    /// Non-hole chunk references of all files.
    public var chunks = 0
    public var uniqueChunks = 0
    public var dedupRatio: Double = 1
    /// Total compressed size of all blobs the image references.
    public var compressedSize: UInt64 = 0
    /// Compressed bytes of the new blob (0 when every chunk was already known).
    public var newBytesStored: UInt64 = 0
    public var bootstrapSize: UInt64 = 0
}

/// Phases reported to a progress callback.
public enum ConvertPhase: String, Sendable {
    case readingLayers, compressing, assemblingBlob, writingBootstrap, storing
}

/// Progress callback: phase, units done, units total (0 if unknown).
public typealias ConvertProgress = @Sendable (ConvertPhase, Int64, Int64) -> Void

/// Chunks of existing Kangaroo images new images may reference instead of storing again.
public struct ChunkDictionary: Sendable {
    struct Entry: Sendable {
        var blob: BlobInfo
        var chunk: ChunkInfo
    }

    var entries: [[UInt8]: Entry] = [:]
    /// Blobs in first-seen order.
    var blobOrder: [[UInt8]] = []

    public init() {}

    /// Adds every chunk of an image (its bootstrap's blob table and ToC).
    public mutating func add(_ bootstrap: Bootstrap) {
        for chunk in bootstrap.chunks where entries[chunk.digest] == nil {
            let blob = bootstrap.blobs[chunk.blob]
            if !blobOrder.contains(blob.digest) { blobOrder.append(blob.digest) }
            entries[chunk.digest] = Entry(blob: blob, chunk: chunk)
        }
    }

    public var chunkCount: Int { entries.count }
}

/// The output of `ImageBuilder.finish`.
public struct BuildResult: Sendable {
    public var bootstrap: [UInt8]
    /// The blob table of the image (device order).
    public var blobs: [BlobInfo]
    /// Index in `blobs` of the newly written blob, if any chunk was new.
    public var newBlobIndex: Int?
    public var stats: ConvertStats
}
