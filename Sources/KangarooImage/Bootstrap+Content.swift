import KangarooOCI

extension Bootstrap {
    /// Fetches, decompresses and verifies ToC chunk `index`.
    public func readChunk(_ index: Int, source: any ChunkSource) throws -> [UInt8] {
        guard chunks.indices.contains(index) else { throw ImageError(.invalidArgument, "chunk \(index) out of range") }
        let info = chunks[index]
        return try verifyChunk(index, compressed: try source.read(blob: info.blob, range: info.compressedRange))
    }

    /// Decompresses chunk `index` from its compressed bytes and verifies it
    /// against its ToC digest.
    public func verifyChunk(_ index: Int, compressed: [UInt8]) throws -> [UInt8] {
        let info = chunks[index]
        guard compressed.count == Int(info.compressedSize) else {
            throw ImageError(.digestMismatch, "chunk \(index) of blob \(blobs[info.blob].digestHex): got \(compressed.count) bytes, expected \(info.compressedSize)")
        }
        let data = try ChunkCodec.decompress(compressed, compression: info.compression, size: Int(info.uncompressedSize))
        guard Digest.sha256(of: data).bytes == info.digest else {
            throw ImageError(.digestMismatch, "chunk \(index) of blob sha256:\(blobs[info.blob].digestHex) at compressed offset \(info.compressedOffset) does not match its digest")
        }
        return data
    }

    /// Reads `length` bytes at `offset` of a regular file (short at EOF).
    public func readFile(_ inode: ImageInode, offset: UInt64, length: Int, source: any ChunkSource) throws -> [UInt8] {
        guard offset < inode.size, length > 0 else { return [] }
        let end = min(inode.size, offset + UInt64(length))
        let map = try chunkMap(inode)
        let cs = UInt64(chunkSize)
        var out: [UInt8] = []
        out.reserveCapacity(Int(end - offset))
        var pos = offset
        while pos < end {
            let c = Int(pos / cs)
            let chunkStart = UInt64(c) * cs
            let chunkLen = min(cs, inode.size - chunkStart)
            let take = Int(min(end, chunkStart + chunkLen) - pos)
            let within = Int(pos - chunkStart)
            if let location = map[c] {
                guard let index = extensionRegion.chunkIndex(at: location) else {
                    throw ImageError(.corruptBootstrap, "file \(inode.nid) chunk \(c) points at blob \(location.blob) block \(location.blockAddress), which is not in the ToC")
                }
                let data = try readChunk(index, source: source)
                guard UInt64(data.count) >= chunkLen else {
                    throw ImageError(.corruptBootstrap, "file \(inode.nid) chunk \(c) needs \(chunkLen) bytes, ToC chunk \(index) has \(data.count)")
                }
                out.append(contentsOf: data[within..<(within + take)])
            } else {
                out.append(contentsOf: repeatElement(0, count: take))
            }
            pos += UInt64(take)
        }
        return out
    }
}
