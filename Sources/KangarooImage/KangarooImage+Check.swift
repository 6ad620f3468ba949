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
    /// chunk's digest and every blob's digest.
    public func check(source: any ChunkSource) -> CheckReport {
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
        for (i, c) in b.chunks.enumerated() {
            report.chunksChecked += 1
            do { _ = try b.readChunk(i, source: source) } catch {
                report.problems.append(CheckProblem(message: "chunk is unreadable or corrupt: \(error)", blobDigest: "sha256:" + b.blobs[c.blob].digestHex,
                                                    chunkIndex: i, compressedOffset: c.compressedOffset, paths: users[i] ?? []))
            }
        }
        for (i, blob) in b.blobs.enumerated() {
            report.blobsChecked += 1
            var hasher = DigestHasher()
            var offset: UInt64 = 0
            do {
                while offset < blob.compressedSize {
                    let n = min(UInt64(4 << 20), blob.compressedSize - offset)
                    let bytes = try source.read(blob: i, range: offset..<(offset + n))
                    hasher.update(bytes)
                    offset += n
                }
                if hasher.finalize().bytes != blob.digest {
                    report.problems.append(CheckProblem(message: "blob content does not match its digest", blobDigest: "sha256:" + blob.digestHex, paths: []))
                }
            } catch {
                report.problems.append(CheckProblem(message: "blob unreadable at offset \(offset): \(error)", blobDigest: "sha256:" + blob.digestHex,
                                                    compressedOffset: offset, paths: []))
            }
        }
        return report
    }
}
