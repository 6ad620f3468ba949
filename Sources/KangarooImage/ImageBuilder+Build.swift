import Foundation
import KangarooOCI

/// Builds a bootstrap and (at most) one new blob from layers: merge, chunk,
/// dedup, compress, place, write.
public final class ImageBuilder {
    let options: BuildOptions
    let dictionary: ChunkDictionary
    private let merger = TreeMerger()
    private let pipeline: ChunkPipeline
    private var layerCount = 0
    private let progress: ConvertProgress?

    /// - Parameter workDirectory: an existing directory for the chunk spool.
    public init(options: BuildOptions, dictionary: ChunkDictionary = ChunkDictionary(), workDirectory: String,
                progress: ConvertProgress? = nil) throws(ImageError) {
        try options.validate()
        self.options = options
        self.dictionary = dictionary
        self.progress = progress
        pipeline = try ChunkPipeline(spoolPath: workDirectory + "/chunks.spool", compression: options.compression,
                                     level: options.level, known: Set(dictionary.entries.keys), workers: max(1, options.workers))
    }

    /// The merged tree so far.
    public var tree: TreeNode { merger.root }

    /// Merges one layer (lowest first).
    public func addLayer(_ source: LayerEntrySource, name: String) throws(ImageError) {
        merger.beginLayer(layerCount, name: name)
        layerCount += 1
        var entries: Int64 = 0
        while let entry = try source.nextEntry() {
            try merger.apply(entry) { (node: TreeNode) throws(ImageError) in
                try readContent(node, path: entry.path, source: source)
            }
            entries += 1
            if entries % 1024 == 0 { progress?(.readingLayers, entries, 0) }
        }
        progress?(.readingLayers, entries, entries)
    }

    private func readContent(_ node: TreeNode, path: String, source: LayerEntrySource) throws(ImageError) {
        let size = node.size
        let cs = UInt64(options.chunkSize)
        let count = Int((size + cs - 1) / cs)
        var ids: [Int] = []
        ids.reserveCapacity(count)
        var current = -1
        var buffer: [UInt8] = []
        func chunkLength(_ c: Int) -> Int { Int(min(cs, size - UInt64(c) * cs)) }
        func advance(to c: Int) {
            if current >= 0 { ids.append(pipeline.submit(buffer)) }
            while ids.count < c { ids.append(-1) }
            current = c
            buffer = [UInt8](repeating: 0, count: chunkLength(c))
        }
        while let block = try source.nextDataBlock() {
            let (offset, bytes) = block
            guard offset <= size, UInt64(bytes.count) <= size - offset else {
                throw ImageError(.hostileEntry, "entry '\(path)': data at \(offset)+\(bytes.count) exceeds its size \(size)")
            }
            var pos = offset
            var taken = 0
            while taken < bytes.count {
                let c = Int(pos / cs)
                if c != current {
                    guard c > current else { throw ImageError(.hostileEntry, "entry '\(path)': data blocks out of order") }
                    advance(to: c)
                }
                let within = Int(pos - UInt64(c) * cs)
                let n = min(bytes.count - taken, buffer.count - within)
                buffer.withUnsafeMutableBytes { dst in
                    guard let d = dst.baseAddress, let s = bytes.baseAddress else { return }
                    d.advanced(by: within).copyMemory(from: s.advanced(by: taken), byteCount: n)
                }
                taken += n
                pos += UInt64(n)
            }
        }
        if current >= 0 { ids.append(pipeline.submit(buffer)) }
        while ids.count < count { ids.append(-1) }
        node.pendingChunks = ids
    }

    /// Places chunks, writes the new blob to `blobPath` (only if some chunk is
    /// new) and returns the bootstrap.
    public func finish(blobPath: String) throws(ImageError) -> BuildResult {
        progress?(.compressing, 0, 0)
        let (results, spool) = try pipeline.finish()
        let root = merger.root

        // Regular files: prefetch list first, then merged-tree path order.
        var files: [TreeNode] = []
        var seen: Set<ObjectIdentifier> = []
        var prefetch: [String] = []
        var stats = ConvertStats()
        for path in options.prefetch {
            guard let node = try? merger.lookup(path) else { continue }
            prefetch.append(path.split(separator: "/").joined(separator: "/"))
            if node.kind == .regular, seen.insert(ObjectIdentifier(node)).inserted { files.append(node) }
        }
        var counted: Set<ObjectIdentifier> = []
        root.walk { _, node in
            if counted.insert(ObjectIdentifier(node)).inserted {
                switch node.kind {
                case .regular: stats.files += 1; stats.bytes += node.size
                case .directory: stats.directories += 1
                case .symlink: stats.symlinks += 1
                default: stats.otherEntries += 1
                }
            }
            if node.kind == .regular, seen.insert(ObjectIdentifier(node)).inserted { files.append(node) }
        }

        // Pass 1: which dictionary blobs are referenced, is anything new?
        var usedDictBlobs: Set<[UInt8]> = []
        var anyNew = false
        for file in files {
            for id in file.pendingChunks where id >= 0 {
                guard let digest = results[id] else { continue }
                stats.chunks += 1
                if spool[digest] != nil { anyNew = true } else if let e = dictionary.entries[digest] { usedDictBlobs.insert(e.blob.digest) }
            }
        }
        var blobs: [BlobInfo] = []
        var blobIndex: [[UInt8]: Int] = [:]
        for digest in dictionary.blobOrder where usedDictBlobs.contains(digest) {
            guard let info = dictionary.entries.values.first(where: { $0.blob.digest == digest })?.blob else { continue }
            blobIndex[digest] = blobs.count
            blobs.append(info)
        }
        let newIndex: Int? = anyNew ? blobs.count : nil

        // Pass 2: place chunks; write the new blob.
        var toc: [ChunkInfo] = []
        var placed: [[UInt8]: ChunkLocation] = [:]
        var nextBlock: UInt64 = 0
        var compressedEnd: UInt64 = 0
        var hasher = DigestHasher()
        var blobFD: Int32 = -1
        if anyNew { blobFD = try POSIX.open(blobPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644) }
        defer { if blobFD >= 0 { POSIX.close(blobFD) } }
        var done: Int64 = 0
        for file in files {
            var chunks: [ChunkLocation?] = []
            chunks.reserveCapacity(file.pendingChunks.count)
            for id in file.pendingChunks {
                guard id >= 0, let digest = results[id] else { chunks.append(nil); continue }
                if let location = placed[digest] { chunks.append(location); continue }
                let location: ChunkLocation
                if let entry = spool[digest], let newIndex {
                    guard nextBlock < UInt64(EROFS.nullAddr) else { throw ImageError(.unsupported, "blob exceeds 2^32 blocks") }
                    location = ChunkLocation(blob: newIndex, blockAddress: UInt32(nextBlock))
                    let bytes = try pipeline.readSpool(entry)
                    try POSIX.pwriteAll(blobFD, bytes, at: compressedEnd)
                    hasher.update(bytes)
                    toc.append(ChunkInfo(blob: newIndex, blockAddress: location.blockAddress, uncompressedSize: entry.uncompressedSize,
                                         compressedSize: entry.compressedSize, compressedOffset: compressedEnd,
                                         compression: entry.compression, digest: digest))
                    compressedEnd += UInt64(entry.compressedSize)
                    nextBlock += EROFS.blocks(for: UInt64(entry.uncompressedSize))
                    done += 1
                    if done % 256 == 0 { progress?(.assemblingBlob, done, Int64(spool.count)) }
                } else if let entry = dictionary.entries[digest], let b = blobIndex[entry.blob.digest] {
                    var info = entry.chunk
                    info.blob = b
                    location = info.location
                    toc.append(info)
                } else {
                    throw ImageError(.io, "chunk \(digest.hexEncoded) was neither compressed nor found in the dictionary")
                }
                placed[digest] = location
                chunks.append(location)
            }
            file.chunks = chunks
        }
        if let newIndex {
            try POSIX.fsync(blobFD)
            blobs.append(BlobInfo(digest: hasher.finalize().bytes, compressedSize: compressedEnd,
                                  uncompressedSize: nextBlock * UInt64(EROFS.blockSize), compression: options.compression))
            stats.newBytesStored = compressedEnd
            _ = newIndex
        }
        toc.sort { $0.location < $1.location }

        progress?(.writingBootstrap, 0, 1)
        let ext = KangarooExtension(chunkSize: UInt32(options.chunkSize), blobs: blobs, chunks: toc, prefetch: prefetch)
        let devices = blobs.map { BootstrapWriter.DeviceSlot(tag: $0.digestHex, blocks: UInt32($0.uncompressedBlocks)) }
        let bootstrap = try BootstrapWriter.write(root: root, chunkSizeBits: options.chunkSizeBits, devices: devices, extensionBytes: ext.encode())
        progress?(.writingBootstrap, 1, 1)
        stats.uniqueChunks = toc.count
        stats.dedupRatio = toc.isEmpty ? 1 : Double(stats.chunks) / Double(toc.count)
        stats.compressedSize = blobs.reduce(0) { $0 + $1.compressedSize }
        stats.bootstrapSize = UInt64(bootstrap.count)
        return BuildResult(bootstrap: bootstrap, blobs: blobs, newBlobIndex: newIndex, stats: stats)
    }
}
