import KangarooOCI

/// One problem found by `check`.
public struct CheckProblem: Codable, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var blobDigest: String?
    public var chunkIndex: Int?
    public var compressedOffset: UInt64?
    /// Some file paths that use the chunk.
    public var paths: [String]

    public var description: String {
        var parts = [message]
        if let blobDigest { parts.append("blob \(blobDigest)") }
        if let chunkIndex { parts.append("chunk \(chunkIndex)") }
        if let compressedOffset { parts.append("compressed offset \(compressedOffset)") }
        if !paths.isEmpty { parts.append("used by /\(paths.joined(separator: ", /"))") }
        return parts.joined(separator: "; ")
    }
}

/// The result of `check`.
public struct CheckReport: Codable, Sendable {
    public var chunksChecked = 0
    public var blobsChecked = 0
    public var problems: [CheckProblem] = []
    public var ok: Bool { problems.isEmpty }
}

extension KangarooImage {
    /// `kangaroo image check`: bootstrap digest, ToC consistency, every
    /// chunk's digest and every blob's digest, reading each blob once from
    /// `source` in `window`-sized ranges; `progress` gets (bytes read, total).
    public func check(source: any ChunkSource, window: UInt64 = 4 << 20,
                      progress: ((UInt64, UInt64) -> Void)? = nil) -> CheckReport {
        var report = CheckReport()
        let b = bootstrap
        let actual = Digest.sha256(of: b.bytes)
        if actual != bootstrapDescriptor.digest {
            report.problems.append(CheckProblem(message: "bootstrap hashes to \(actual), manifest says \(bootstrapDescriptor.digest)", paths: []))
        }
        // Reverse map ToC chunk -> paths; files pointing outside the ToC.
        var users: [Int: [String]] = [:]
        do {
            try b.walk { (path, inode) throws(ImageError) in
                guard inode.kind == .regular else { return }
                for (c, location) in try b.chunkMap(inode).enumerated() {
                    guard let location else { continue }
                    guard let index = b.extensionRegion.chunkIndex(at: location) else {
                        report.problems.append(CheckProblem(message: "file chunk \(c) points at blob \(location.blob) block \(location.blockAddress), which is not in the ToC",
                                                            blobDigest: "sha256:" + b.blobs[location.blob].digestHex, paths: [path]))
                        continue
                    }
                    if users[index, default: []].count < 3 { users[index, default: []].append(path) }
                }
            }
        } catch {
            report.problems.append(CheckProblem(message: "tree walk failed: \(error)", paths: []))
        }
        // Compressed ranges must not overlap within a blob.
        var byBlob: [Int: [(Range<UInt64>, Int)]] = [:]
        for (i, c) in b.chunks.enumerated() { byBlob[c.blob, default: []].append((c.compressedRange, i)) }
        for (blob, ranges) in byBlob {
            let sorted = ranges.sorted { $0.0.lowerBound < $1.0.lowerBound }
            for (prev, next) in zip(sorted, sorted.dropFirst()) where prev.0.upperBound > next.0.lowerBound {
                report.problems.append(CheckProblem(message: "compressed range of chunk \(next.1) overlaps chunk \(prev.1)",
                                                    blobDigest: "sha256:" + b.blobs[blob].digestHex, chunkIndex: next.1,
                                                    compressedOffset: next.0.lowerBound, paths: users[next.1] ?? []))
            }
        }
        // One sequential pass over each blob: its bytes feed the blob digest,
        // and every chunk is verified from them as the stream passes its
        // compressed range, so a registry serves each blob once.
        let chunksOfBlob = Dictionary(grouping: b.chunks.indices, by: { b.chunks[$0].blob })
        let total = b.blobs.reduce(UInt64(0)) { $0 + $1.compressedSize }
        var streamed: UInt64 = 0
        for (i, blob) in b.blobs.enumerated() {
            report.blobsChecked += 1
            let order = (chunksOfBlob[i] ?? []).sorted { b.chunks[$0].compressedOffset < b.chunks[$1].compressedOffset }
            var next = 0                 // index into `order`
            var hasher = DigestHasher()
            var buffer: [UInt8] = []     // bytes [bufferStart, offset) of the blob
            var bufferStart: UInt64 = 0
            var offset: UInt64 = 0
            func verifyCovered() {
                while next < order.count {
                    let index = order[next]
                    let range = b.chunks[index].compressedRange
                    guard range.upperBound <= offset else { break }
                    next += 1
                    report.chunksChecked += 1
                    guard range.lowerBound >= bufferStart else { continue }  // overlap, reported above
                    let lo = Int(range.lowerBound - bufferStart), hi = Int(range.upperBound - bufferStart)
                    do { _ = try b.verifyChunk(index, compressed: Array(buffer[lo..<hi])) } catch {
                        report.problems.append(CheckProblem(message: "chunk is unreadable or corrupt: \(error)", blobDigest: "sha256:" + blob.digestHex,
                                                            chunkIndex: index, compressedOffset: range.lowerBound, paths: users[index] ?? []))
                    }
                }
                // Keep only what the next chunk still needs.
                let keepFrom = next < order.count ? min(b.chunks[order[next]].compressedOffset, offset) : offset
                if keepFrom > bufferStart {
                    buffer.removeFirst(Int(keepFrom - bufferStart))
                    bufferStart = keepFrom
                }
            }
            do {
                while offset < blob.compressedSize {
                    let n = min(window, blob.compressedSize - offset)
                    let bytes = try source.read(blob: i, range: offset..<(offset + n))
                    guard bytes.count == Int(n) else {
                        throw ImageError(.digestMismatch, "short read: \(bytes.count) of \(n) bytes")
                    }
                    hasher.update(bytes)
                    buffer.append(contentsOf: bytes)
                    offset += n
                    streamed += n
                    progress?(streamed, total)
                    verifyCovered()
                }
                if hasher.finalize().bytes != blob.digest {
                    report.problems.append(CheckProblem(message: "blob content does not match its digest", blobDigest: "sha256:" + blob.digestHex, paths: []))
                }
            } catch {
                report.problems.append(CheckProblem(message: "blob unreadable at offset \(offset): \(error)", blobDigest: "sha256:" + blob.digestHex,
                                                    compressedOffset: offset, paths: []))
                // Chunks the stream never reached are unchecked: each is a problem.
                for index in order[next...] {
                    report.chunksChecked += 1
                    report.problems.append(CheckProblem(message: "chunk not verified: its blob could not be read", blobDigest: "sha256:" + blob.digestHex,
                                                        chunkIndex: index, compressedOffset: b.chunks[index].compressedOffset, paths: users[index] ?? []))
                }
            }
        }
        return report
    }
}
