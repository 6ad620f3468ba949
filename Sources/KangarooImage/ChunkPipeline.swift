import Dispatch
import Foundation
import KangarooOCI
import Synchronization

/// Hashes and compresses chunks on a pool of workers (one per core) while the
/// caller keeps reading layers. Compressed chunks are spooled to a temp file;
/// the blob is assembled later in a deterministic order, so the output does
/// not depend on scheduling.
final class ChunkPipeline: @unchecked Sendable {
    struct SpoolEntry: Sendable {
        var offset: UInt64
        var compressedSize: UInt32
        var uncompressedSize: UInt32
        var compression: ChunkCompression
    }

    private struct State {
        /// Per submitted chunk id: nil = all zeros, else sha256 of its bytes.
        var results: [Int: [UInt8]?] = [:]
        /// Unique chunks already compressed (or being compressed) by digest.
        var spool: [[UInt8]: SpoolEntry] = [:]
        var claimed: Set<[UInt8]> = []
        var spoolEnd: UInt64 = 0
        var error: ImageError?
    }

    private let compression: ChunkCompression
    private let level: Int32
    private let known: Set<[UInt8]>
    private let spoolFD: Int32
    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "kangaroo.image.chunks", attributes: .concurrent)
    private let group = DispatchGroup()
    private let slots: DispatchSemaphore
    private var nextID = 0

    /// - Parameter known: digests available from the chunk dictionary (not compressed again).
    init(spoolPath: String, compression: ChunkCompression, level: Int32, known: Set<[UInt8]>, workers: Int) throws(ImageError) {
        self.compression = compression
        self.level = level
        self.known = known
        spoolFD = try POSIX.open(spoolPath, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        slots = DispatchSemaphore(value: max(2, workers * 2))
    }

    deinit { POSIX.close(spoolFD) }

    /// Queues one chunk; returns its id.
    func submit(_ chunk: [UInt8]) -> Int {
        let id = nextID
        nextID += 1
        slots.wait()
        group.enter()
        queue.async { [self] in
            defer {
                slots.signal()
                group.leave()
            }
            do throws(ImageError) {
                let digest = try process(chunk)
                state.withLock { $0.results[id] = .some(digest) }
            } catch {
                state.withLock { if $0.error == nil { $0.error = error } }
            }
        }
        return id
    }

    private func process(_ chunk: [UInt8]) throws(ImageError) -> [UInt8]? {
        if chunk.allSatisfy({ $0 == 0 }) { return nil }
        let digest = Digest.sha256(of: chunk).bytes
        if known.contains(digest) { return digest }
        let mine = state.withLock { $0.claimed.insert(digest).inserted }
        if !mine { return digest }
        let outcome = chunk.withUnsafeBytes { raw in
            Result { () throws(ImageError) -> [UInt8]? in try ChunkCodec.compress(raw, with: compression, level: level) }
        }
        let compressed = try outcome.get()
        let stored = compressed ?? chunk
        let offset = state.withLock { s in
            let o = s.spoolEnd
            s.spoolEnd += UInt64(stored.count)
            return o
        }
        try POSIX.pwriteAll(spoolFD, stored, at: offset)
        let entry = SpoolEntry(offset: offset, compressedSize: UInt32(stored.count), uncompressedSize: UInt32(chunk.count),
                               compression: compressed == nil ? .none : compression)
        state.withLock { $0.spool[digest] = entry }
        return digest
    }

    /// Waits for all chunks; returns per-id digests (nil = zero chunk) and the spool index.
    func finish() throws(ImageError) -> (results: [[UInt8]?], spool: [[UInt8]: SpoolEntry]) {
        group.wait()
        let s = state.withLock { $0 }
        if let error = s.error { throw error }
        var results: [[UInt8]?] = []
        results.reserveCapacity(nextID)
        for id in 0..<nextID {
            guard let r = s.results[id] else { throw ImageError(.io, "chunk \(id) was not processed") }
            results.append(r)
        }
        return (results, s.spool)
    }

    func readSpool(_ entry: SpoolEntry) throws(ImageError) -> [UInt8] {
        try POSIX.preadExact(spoolFD, count: Int(entry.compressedSize), at: entry.offset)
    }
}
