#if canImport(Glibc)
import Glibc
#endif
import KangarooOCI
import KangarooSystem
import Synchronization

/// Reads blob ranges out of a node's chunk cache as the registry would
/// serve them (compressed, at blob offsets), for the peer: only ranges made
/// of whole chunks whose cache bits are set (verified when they were
/// stored), read from `.data` for raw chunks and `.packed` for compressed
/// ones (CacheLayout). Everything else is "not here".
public final class CacheReader: Sendable {
    final class Blob: Sendable {
        let hex: String
        let toc: BlobTOC
        let data: Int32
        let bitmap: Int32
        let packed: Int32
        let packedMap: Int32

        init(directory: String, hex: String) throws(ChunksError) {
            self.hex = hex
            let tocPath = CacheLayout.tocPath(directory, hex)
            let tocBytes: [UInt8]
            do { tocBytes = try FileSystem.read(tocPath) } catch {
                throw ChunksError(.notFound, "blob sha256:\(hex) is not in the cache")
            }
            toc = try BlobTOC(decoding: tocBytes, what: tocPath)
            func openFile(_ path: String) -> Int32 { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
            data = openFile(CacheLayout.dataPath(directory, hex))
            bitmap = openFile(CacheLayout.bitmapPath(directory, hex))
            packed = openFile(CacheLayout.packedPath(directory, hex))
            packedMap = openFile(CacheLayout.packedMapPath(directory, hex))
            guard data >= 0, bitmap >= 0 else {
                closeAll()
                throw ChunksError(.notFound, "blob sha256:\(hex) has no cached data")
            }
        }

        func closeAll() {
            for fd in [data, bitmap, packed, packedMap] where fd >= 0 { _ = Glibc.close(fd) }
        }

        deinit { closeAll() }

        /// Whether every bit in `bits` (bit positions) of the bitmap file `fd` is set.
        static func allSet(_ fd: Int32, _ positions: [UInt64]) throws(ChunksError) -> Bool {
            guard fd >= 0, let low = positions.min(), let high = positions.max() else { return positions.isEmpty }
            let first = low / 8
            let bytes: [UInt8]
            do { bytes = try FileSystem.pread(fd, count: Int(high / 8 - first + 1), at: first) } catch {
                throw ChunksError(.unavailable, "reading a cache bitmap failed: \(error)")
            }
            for p in positions {
                let i = Int(p / 8 - first)
                guard i < bytes.count, bytes[i] & (1 << UInt8(p % 8)) != 0 else { return false }
            }
            return true
        }
    }

    public let directory: String
    /// An OCI layout whose whole blobs (bootstraps, configs, pulled
    /// verified by digest) are served too, at any range.
    public let store: String?
    private let blobs = Mutex<[String: Blob]>([:])
    static let openLimit = 256

    public init(directory: String, store: String? = nil) {
        self.directory = directory
        self.store = store
    }

    /// Bytes `range` of a whole blob of the store, if it has the blob.
    func readStore(_ digest: Digest, range: Range<UInt64>) throws(ChunksError) -> [UInt8]? {
        guard let store, digest.algorithm == "sha256" else { return nil }
        let fd = Glibc.open(store + "/blobs/sha256/" + digest.encoded, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc.close(fd) }
        let bytes: [UInt8]
        do { bytes = try FileSystem.pread(fd, count: range.count, at: range.lowerBound) } catch {
            throw ChunksError(.unavailable, "reading blob \(digest) of the store failed: \(error)")
        }
        guard bytes.count == range.count else { throw ChunksError(.notFound, "bytes \(range) are beyond the end of \(digest)") }
        return bytes
    }

    func blob(_ hex: String) throws(ChunksError) -> Blob {
        if let open = blobs.withLock({ $0[hex] }) { return open }
        let blob = try Blob(directory: directory, hex: hex)
        return blobs.withLock { table in
            if table.count >= Self.openLimit { table.removeAll() }
            if let raced = table[hex] { return raced }
            table[hex] = blob
            return blob
        }
    }

    /// Forgets open files (a blob whose files were replaced, e.g. a reset cache).
    public func forget(_ digest: Digest) { _ = blobs.withLock { $0.removeValue(forKey: digest.encoded) } }

    /// The bytes `range` of blob `digest`, if the cache holds every chunk
    /// they are part of, or the store holds the whole blob.
    public func read(_ digest: Digest, range: Range<UInt64>) throws(ChunksError) -> [UInt8] {
        do throws(ChunksError) { return try readCache(digest, range: range) } catch {
            guard error.code == .notFound, let bytes = try readStore(digest, range: range) else { throw error }
            return bytes
        }
    }

    func readCache(_ digest: Digest, range: Range<UInt64>) throws(ChunksError) -> [UInt8] {
        var blob = try self.blob(digest.encoded)
        guard let covering = blob.toc.covering(range) else {
            throw ChunksError(.notFound, "bytes \(range) of \(digest) are not whole chunks of the blob")
        }
        let entries = blob.toc.entries[covering]
        var blocks: [UInt64] = []
        var packedBits: [UInt64] = []
        for (position, e) in zip(covering, entries) {
            blocks.append(contentsOf: e.blocks)
            if e.compression != .none { packedBits.append(UInt64(position)) }
        }
        if !packedBits.isEmpty, blob.packed < 0 || blob.packedMap < 0 {
            // Opened before the node kept any compressed chunk of the blob:
            // the files may be there now.
            forget(digest)
            blob = try self.blob(digest.encoded)
        }
        guard try Blob.allSet(blob.bitmap, blocks), try Blob.allSet(blob.packedMap, packedBits),
              packedBits.isEmpty || blob.packed >= 0 else {
            throw ChunksError(.notFound, "bytes \(range) of \(digest) are not all cached here")
        }
        var out: [UInt8] = []
        out.reserveCapacity(Int(entries.last!.compressedEnd - entries.first!.compressedOffset))
        for e in entries {
            let part: [UInt8]
            do {
                part = e.compression == .none
                    ? try FileSystem.pread(blob.data, count: Int(e.compressedSize), at: UInt64(e.blockAddress) * 4096)
                    : try FileSystem.pread(blob.packed, count: Int(e.compressedSize), at: e.compressedOffset)
            } catch {
                throw ChunksError(.unavailable, "reading cached bytes of \(digest) failed: \(error)")
            }
            guard part.count == Int(e.compressedSize) else {
                throw ChunksError(.unavailable, "the cache files of \(digest) are shorter than its chunk table")
            }
            out.append(contentsOf: part)
        }
        let start = Int(range.lowerBound - entries.first!.compressedOffset)
        return Array(out[start..<(start + range.count)])
    }
}
