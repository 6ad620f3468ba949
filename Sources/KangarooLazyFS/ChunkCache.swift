#if canImport(Glibc)
import CKangaroo
import Glibc
#endif
import Foundation
import KangarooChunks
import KangarooImage
import Synchronization

/// The on-disk chunk cache (docs/FORMAT.md section 7): per blob a sparse
/// `<blobhex>.data` file holding verified chunks at their uncompressed block
/// addresses (byte-for-byte what `materialize` writes, so the kernel can mount
/// it) and a `<blobhex>.bitmap` with one bit per 4 KiB block of `.data`.
///
/// Crash-safe order for every store: pwrite the data, fdatasync `.data`, then
/// set the bits, pwrite the changed bitmap bytes and fdatasync `.bitmap`. A
/// set bit therefore always covers durable, verified bytes; a crash can only
/// lose bits (those chunks are fetched again).
///
/// For the peer (`CacheReader`), each blob also gets its chunk table
/// (`.toc`, written once, atomically) and, for stores that carry compressed
/// bytes, `.packed` and `.pmap` in the same order: bytes first, made
/// durable with `.data`, bits after (CacheLayout).
public final class ChunkCache: Sendable {
    final class BlobFile: Sendable {
        let digestHex: String
        let dataPath: String
        let dataFD: Int32
        let bitmapFD: Int32
        let blocks: UInt64
        let bits: Mutex<[UInt8]>
        /// End of the range last hinted to the kernel for readahead.
        let hinted = Atomic<UInt64>(0)
        let directory: String
        let compressedSize: UInt64
        /// `.toc` position of each compressed offset (the `.pmap` bit).
        let tocPositions: [UInt64: Int]
        /// `.packed` and `.pmap`, opened on the first store that keeps compressed bytes.
        let packed = Mutex<(data: Int32, map: Int32, bits: [UInt8])?>(nil)

        init(directory: String, blob: BlobInfo, index: Int, chunks: [ChunkInfo]) throws(LazyFSError) {
            self.directory = directory
            compressedSize = blob.compressedSize
            let toc = BlobTOC(chunks: chunks, blob: index)
            tocPositions = Dictionary(uniqueKeysWithValues: toc.entries.enumerated().map { ($1.compressedOffset, $0) })
            digestHex = blob.digestHex
            blocks = blob.uncompressedSize / 4096
            dataPath = directory + "/" + blob.digestHex + ".data"
            let bitmapPath = directory + "/" + blob.digestHex + ".bitmap"
            let hadData = Sys.exists(dataPath)
            // Root's alone: an image's bytes are no tenant's to read from the
            // host (a cache made before keeps its files, so they are set too).
            let data = try Sys.open(dataPath, O_RDWR | O_CREAT, 0o600)
            let bitmap: Int32
            do { bitmap = try Sys.open(bitmapPath, O_RDWR | O_CREAT, 0o600) } catch {
                Sys.close(data)
                throw error
            }
            fchmod(data, 0o600)
            fchmod(bitmap, 0o600)
            dataFD = data
            bitmapFD = bitmap
            let bitmapBytes = Int((blocks + 7) / 8)
            var loaded = [UInt8](repeating: 0, count: bitmapBytes)
            do {
                let dataSize = try Sys.fileSize(data)
                let bitmapSize = try Sys.fileSize(bitmap)
                // A bitmap is only trusted next to the data file it describes.
                if hadData, dataSize == blob.uncompressedSize, bitmapSize == UInt64(bitmapBytes) {
                    _ = try Sys.preadFull(bitmap, into: &loaded, at: 0, what: bitmapPath)
                } else {
                    // The compressed copies' bits go first: never a set
                    // `.pmap` bit without its `.bitmap` bit.
                    unlink(CacheLayout.packedMapPath(directory, blob.digestHex))
                    try Sys.ftruncate(bitmap, 0, what: bitmapPath)
                    try Sys.ftruncate(bitmap, UInt64(bitmapBytes), what: bitmapPath)
                    try Sys.fdatasync(bitmap, what: bitmapPath)
                    if dataSize != blob.uncompressedSize {
                        try Sys.ftruncate(data, blob.uncompressedSize, what: dataPath)
                    }
                }
                try Self.writeTOC(toc, directory: directory, hex: blob.digestHex)
            } catch {
                Sys.close(data)
                Sys.close(bitmap)
                throw error
            }
            bits = Mutex(loaded)
        }

        deinit {
            Sys.close(dataFD)
            Sys.close(bitmapFD)
            if let p = packed.withLock({ $0 }) {
                Sys.close(p.data)
                Sys.close(p.map)
            }
        }

        /// Writes the chunk table once (a temporary named by pid, renamed).
        static func writeTOC(_ toc: BlobTOC, directory: String, hex: String) throws(LazyFSError) {
            let path = CacheLayout.tocPath(directory, hex)
            if Sys.exists(path) { return }
            let tmp = path + ".tmp.\(getpid())"
            let fd = try Sys.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            do {
                try Sys.pwriteAll(fd, bytes: toc.encoded(), at: 0, what: tmp)
                try Sys.fdatasync(fd, what: tmp)
            } catch {
                Sys.close(fd)
                unlink(tmp)
                throw error
            }
            Sys.close(fd)
            guard rename(tmp, path) == 0 else {
                let error = Sys.errno("renaming \(tmp) to \(path)")
                unlink(tmp)
                throw error
            }
        }

        /// `.packed` (sized like the blob, sparse) and `.pmap`, opened once.
        func openPacked() throws(LazyFSError) -> (data: Int32, map: Int32) {
            try packed.withLock { (p) throws(LazyFSError) -> (data: Int32, map: Int32) in
                if let p { return (p.data, p.map) }
                let dataPath = CacheLayout.packedPath(directory, digestHex)
                let mapPath = CacheLayout.packedMapPath(directory, digestHex)
                let data = try Sys.open(dataPath, O_RDWR | O_CREAT, 0o600)
                let map: Int32
                do throws(LazyFSError) { map = try Sys.open(mapPath, O_RDWR | O_CREAT, 0o600) } catch {
                    Sys.close(data)
                    throw error
                }
                let mapBytes = (tocPositions.count + 7) / 8
                var bits = [UInt8](repeating: 0, count: mapBytes)
                do {
                    if try Sys.fileSize(data) == compressedSize, try Sys.fileSize(map) == UInt64(mapBytes) {
                        _ = try Sys.preadFull(map, into: &bits, at: 0, what: mapPath)
                    } else {
                        try Sys.ftruncate(map, 0, what: mapPath)
                        try Sys.ftruncate(map, UInt64(mapBytes), what: mapPath)
                        try Sys.fdatasync(map, what: mapPath)
                        try Sys.ftruncate(data, compressedSize, what: dataPath)
                    }
                } catch let error as LazyFSError {
                    Sys.close(data)
                    Sys.close(map)
                    throw error
                } catch {
                    Sys.close(data)
                    Sys.close(map)
                    throw LazyFSError(.cache, "opening \(dataPath) failed", underlying: LazyFSErrorBox(error))
                }
                p = (data, map, bits)
                return (data, map)
            }
        }

        func isSet(_ range: Range<UInt64>) -> Bool {
            bits.withLock { bits in
                for block in range where bits[Int(block / 8)] & (1 << UInt8(block % 8)) == 0 { return false }
                return true
            }
        }

        /// How many blocks from `start` on (at most `limit`) are set.
        func setRun(from start: UInt64, limit: UInt64) -> UInt64 {
            bits.withLock { bits in
                var n: UInt64 = 0
                while n < limit, Int((start + n) / 8) < bits.count, bits[Int((start + n) / 8)] & (1 << UInt8((start + n) % 8)) != 0 { n += 1 }
                return n
            }
        }
    }

    public let directory: String
    let files: [BlobFile]
    let chunks: [ChunkInfo]

    /// Opens (creating as needed) the cache entries of every blob of `bootstrap`.
    public init(directory: String, bootstrap: Bootstrap) throws(LazyFSError) {
        try Sys.mkdirs(directory)
        chmod(directory, 0o700)
        self.directory = directory
        Self.removeStaleTemporaries(directory)
        var files: [BlobFile] = []
        for (index, blob) in bootstrap.blobs.enumerated() {
            files.append(try BlobFile(directory: directory, blob: blob, index: index, chunks: bootstrap.chunks))
        }
        self.files = files
        self.chunks = bootstrap.chunks
    }

    /// Chunk tables a killed writer left (`<hex>.toc.tmp.<pid>` of a dead pid).
    static func removeStaleTemporaries(_ directory: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names {
            guard let range = name.range(of: ".toc.tmp."), let pid = Int32(name[range.upperBound...]),
                  kill(pid, 0) != 0 && errno == ESRCH else { continue }
            unlink(directory + "/" + name)
        }
    }

    /// The `.data` file of blob `index` (a `device=` for the kernel mount).
    public func dataPath(blob index: Int) -> String { files[index].dataPath }

    static func blockRange(_ chunk: ChunkInfo) -> Range<UInt64> {
        UInt64(chunk.blockAddress)..<(UInt64(chunk.blockAddress) + max(1, chunk.blocks))
    }

    /// True when ToC chunk `index` is present and verified.
    public func isCached(_ index: Int) -> Bool {
        let chunk = chunks[index]
        return files[chunk.blob].isSet(Self.blockRange(chunk))
    }

    /// How many ToC chunks are cached.
    public func cachedCount() -> Int { chunks.indices.reduce(0) { $0 + (isCached($1) ? 1 : 0) } }

    /// True when every chunk of the image is cached (kernel handoff possible).
    public var isComplete: Bool { chunks.indices.allSatisfy(isCached) }

    /// Copies cached bytes of chunk `index` from `offset` within the chunk.
    public func read(_ index: Int, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(LazyFSError) -> Int {
        let chunk = chunks[index]
        let file = files[chunk.blob]
        let count = min(buffer.count, max(0, Int(chunk.uncompressedSize) - offset))
        guard count > 0 else { return 0 }
        let at = UInt64(chunk.blockAddress) * 4096 + UInt64(offset)
        Self.readAhead(file, from: at + UInt64(count))
        return try Sys.preadFull(file.dataFD, UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]), at: at, what: file.dataPath)
    }

    /// Reads come one FUSE request at a time, a few KiB each for small
    /// files, from worker threads sharing one descriptor, so the kernel's
    /// sequential readahead on the cache file rarely kicks in and every
    /// cold read waits for the disk. Files of a directory sit next to each
    /// other in the blob: when a read gets near the end of the last hinted
    /// window, ask the kernel (WILLNEED, asynchronous) for what is cached
    /// of the next 1 MiB (holes are not: the kernel would zero-fill pages
    /// for them, costing CPU and page cache for nothing while a cold
    /// mount's cache is mostly holes).
    static let readAheadWindow: UInt64 = 1 << 20

    static func readAhead(_ file: BlobFile, from end: UInt64) {
        let hinted = file.hinted.load(ordering: .relaxed)
        guard end + readAheadWindow / 2 > hinted || end + 2 * readAheadWindow < hinted else { return }
        file.hinted.store(end + readAheadWindow, ordering: .relaxed)
        let start = end & ~4095
        let cached = file.setRun(from: start / 4096, limit: readAheadWindow / 4096) * 4096
        guard cached > end - start else { return }
        _ = posix_fadvise(file.dataFD, off_t(end), off_t(cached - (end - start)), POSIX_FADV_WILLNEED)
    }

    /// Persists verified chunks (ToC index, uncompressed bytes) in the
    /// crash-safe order described above.
    public func store(_ items: [(index: Int, data: [UInt8])]) throws(LazyFSError) {
        try store(items.map { ($0.index, $0.data, nil) })
    }

    /// The same, keeping the compressed bytes of the items that carry them
    /// (for the peer).
    public func store(_ items: [(index: Int, data: [UInt8], compressed: ArraySlice<UInt8>?)]) throws(LazyFSError) {
        var byBlob: [Int: [(index: Int, data: [UInt8], compressed: ArraySlice<UInt8>?)]] = [:]
        for item in items { byBlob[chunks[item.index].blob, default: []].append(item) }
        for (blob, group) in byBlob {
            let file = files[blob]
            var packedFD: Int32 = -1
            do {
                for item in group {
                    let chunk = chunks[item.index]
                    try Sys.pwriteAll(file.dataFD, bytes: item.data, at: UInt64(chunk.blockAddress) * 4096, what: file.dataPath)
                }
                if group.contains(where: { $0.compressed != nil }) {
                    packedFD = try file.openPacked().data
                    for item in group {
                        guard let compressed = item.compressed else { continue }
                        try Sys.pwriteAll(packedFD, bytes: Array(compressed), at: chunks[item.index].compressedOffset,
                                          what: file.digestHex + ".packed")
                    }
                    try Sys.fdatasync(packedFD, what: file.digestHex + ".packed")
                }
                try Sys.fdatasync(file.dataFD, what: file.dataPath)
            } catch {
                // Disk full or failing: give back the blocks the partial
                // writes took (the chunks are not marked, so nothing cached
                // is lost), so a full cache still takes smaller chunks.
                for item in group where !isCached(item.index) {
                    let chunk = chunks[item.index]
                    let range = Self.blockRange(chunk)
                    _ = ckg_punch_hole(file.dataFD, Int64(range.lowerBound * 4096), Int64(UInt64(range.count) * 4096))
                }
                throw error
            }
            try file.bits.withLock { (bits) throws(LazyFSError) in
                var low = Int.max, high = -1
                for item in group {
                    for block in Self.blockRange(chunks[item.index]) {
                        let byte = Int(block / 8)
                        bits[byte] |= 1 << UInt8(block % 8)
                        low = min(low, byte)
                        high = max(high, byte)
                    }
                }
                guard high >= low else { return }
                // Written under the lock so the on-disk bytes only ever gain bits.
                try Sys.pwriteAll(file.bitmapFD, bytes: Array(bits[low...high]), at: UInt64(low), what: file.digestHex + ".bitmap")
            }
            try Sys.fdatasync(file.bitmapFD, what: file.digestHex + ".bitmap")
            if packedFD >= 0 { try markPacked(file, group.filter { $0.compressed != nil }.map(\.index)) }
        }
    }

    /// Sets the `.pmap` bits of chunks whose compressed bytes are durable.
    private func markPacked(_ file: BlobFile, _ indices: [Int]) throws(LazyFSError) {
        try file.packed.withLock { (p) throws(LazyFSError) in
            guard var state = p else { return }
            var low = Int.max, high = -1
            for index in indices {
                guard let position = file.tocPositions[chunks[index].compressedOffset] else { continue }
                state.bits[position / 8] |= 1 << UInt8(position % 8)
                low = min(low, position / 8)
                high = max(high, position / 8)
            }
            p = state
            guard high >= low else { return }
            try Sys.pwriteAll(state.map, bytes: Array(state.bits[low...high]), at: UInt64(low), what: file.digestHex + ".pmap")
            try Sys.fdatasync(state.map, what: file.digestHex + ".pmap")
        }
    }
}
