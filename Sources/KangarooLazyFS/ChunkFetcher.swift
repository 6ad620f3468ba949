import Foundation
import KangarooChunks
import KangarooImage
import Logging
import Synchronization

/// How the fetcher talks to its source.
public struct FetchConfiguration: Sendable {
    /// Chunks of one blob whose compressed ranges are at most this many bytes
    /// apart are fetched with one range request (0 = only adjacent chunks).
    public var mergeGap: UInt64 = 0
    /// Upper bound of one merged range request.
    public var maxRange: UInt64 = 8 << 20
    /// A read that cannot get its chunks within this time fails with EIO.
    public var deadline: Duration = .seconds(30)
    /// Attempts after the first failed source read (within the deadline).
    public var retries = 3
    public var backoff: Duration = .milliseconds(100)
    /// Keep the compressed bytes of compressed chunks in the cache too
    /// (`<blob>.packed`), so that a peer can serve them as the registry
    /// would (raw chunks are served from `.data`).
    public var keepCompressed = false

    public init() {}
}

/// One chunk fetch that readers wait on.
final class Completion: @unchecked Sendable {
    private let condition = NSCondition()
    private var result: Result<Void, LazyFSError>?

    func finish(_ value: Result<Void, LazyFSError>) {
        condition.lock()
        result = value
        condition.broadcast()
        condition.unlock()
    }

    /// Nil when `deadline` passed first; a nil deadline waits for the end.
    func wait(until deadline: Date?) -> Result<Void, LazyFSError>? {
        condition.lock()
        defer { condition.unlock() }
        while result == nil {
            if let deadline {
                if !condition.wait(until: deadline) { return result }
            } else {
                condition.wait()
            }
        }
        return result
    }
}

/// Fetches chunks on demand into a `ChunkCache`: merges adjacent chunks into
/// one range request, never fetches a chunk twice at once (in-flight table),
/// verifies every chunk's size and sha256 before it is stored, retries a
/// failing source a bounded number of times and gives up at the deadline.
public final class ChunkFetcher: Sendable {
    public let bootstrap: Bootstrap
    public let cache: ChunkCache
    let source: any ChunkSource
    public let configuration: FetchConfiguration
    let logger: Logger
    let inFlight = Mutex<[Int: Completion]>([:])
    let counters = FetchCounters()

    public init(bootstrap: Bootstrap, source: any ChunkSource, cache: ChunkCache,
                configuration: FetchConfiguration = FetchConfiguration(), logger: Logger) {
        self.bootstrap = bootstrap
        self.source = source
        self.cache = cache
        self.configuration = configuration
        self.logger = logger
        counters.update { $0.chunksTotal = bootstrap.chunks.count }
    }

    /// Counters so far (cached chunks counted now).
    public func stats() -> LazyStats {
        var s = counters.snapshot()
        s.chunksCached = cache.cachedCount()
        s.inFlight = inFlight.withLock { $0.count }
        s.sources = (source as? any SourceReporting)?.sourceStats()
        return s
    }

    /// Blocks until every ToC chunk in `indices` is cached and verified, or
    /// throws (verification failure, source failure, deadline).
    public func ensure(_ indices: [Int], countAccess: Bool = true) throws(LazyFSError) {
        let missing = indices.filter { !cache.isCached($0) }
        if countAccess {
            counters.update {
                $0.cacheHits += UInt64(indices.count - missing.count)
                $0.cacheMisses += UInt64(missing.count)
            }
        }
        if missing.isEmpty { return }
        let deadline = Date().addingTimeInterval(Self.seconds(configuration.deadline))
        let waits = start(missing)
        for (index, completion) in waits {
            guard let result = completion.wait(until: deadline) else {
                counters.update { $0.timeouts += 1; $0.errors += 1 }
                let chunk = bootstrap.chunks[index]
                throw LazyFSError(.timeout, "chunk \(index) of blob sha256:\(bootstrap.blobs[chunk.blob].digestHex) not fetched within \(configuration.deadline)")
            }
            if case .failure(let error) = result { throw error }
        }
    }

    /// Starts fetching `indices` (those not cached and not in flight) without
    /// waiting; returns what to wait on.
    @discardableResult
    func start(_ indices: [Int]) -> [(Int, Completion)] {
        var waits: [(Int, Completion)] = []
        var claimed: [Int] = []
        inFlight.withLock { table in
            for index in Set(indices).sorted() {
                if let existing = table[index] {
                    waits.append((index, existing))
                } else if !cache.isCached(index) {
                    let completion = Completion()
                    table[index] = completion
                    waits.append((index, completion))
                    claimed.append(index)
                }
            }
        }
        let byIndex = Dictionary(waits, uniquingKeysWith: { first, _ in first })
        for group in mergeRanges(claimed) {
            let completions = group.compactMap { byIndex[$0] }
            // A thread of its own, never a Dispatch queue: fetches block (on
            // the source, on retries), and blocked Dispatch workers starve
            // the Swift concurrency pool that the HTTP client's body stream
            // needs until libdispatch's monitor adds threads (about 1 s).
            // Fetching threads are bounded by the readers waiting on them.
            Thread.detachNewThread { self.fetch(group, completions: completions) }
        }
        return waits
    }

    /// Starts fetching and waits for `indices` without a deadline-driven
    /// error count (prefetch); returns false if any failed.
    func prefetch(_ indices: [Int]) -> Bool {
        let waits = start(indices)
        var ok = true
        for (_, completion) in waits {
            if case .failure = completion.wait(until: nil) { ok = false }
        }
        return ok
    }

    /// Groups chunk indices into runs that one range request can serve.
    func mergeRanges(_ indices: [Int]) -> [[Int]] {
        let chunks = bootstrap.chunks
        let sorted = indices.sorted {
            (chunks[$0].blob, chunks[$0].compressedOffset) < (chunks[$1].blob, chunks[$1].compressedOffset)
        }
        var groups: [[Int]] = []
        var current: [Int] = []
        var start: UInt64 = 0, end: UInt64 = 0
        for index in sorted {
            let c = chunks[index]
            if let first = current.first, chunks[first].blob == c.blob, c.compressedOffset >= end,
               c.compressedOffset - end <= configuration.mergeGap,
               c.compressedRange.upperBound - start <= configuration.maxRange {
                current.append(index)
                end = max(end, c.compressedRange.upperBound)
                continue
            }
            if !current.isEmpty { groups.append(current) }
            current = [index]
            start = c.compressedOffset
            end = c.compressedRange.upperBound
        }
        if !current.isEmpty { groups.append(current) }
        return groups
    }

    private func fetch(_ group: [Int], completions: [Completion]) {
        let result = fetchAndStore(group)
        inFlight.withLock { table in for index in group { table.removeValue(forKey: index) } }
        for (index, completion) in zip(group, completions) {
            completion.finish(result[index] ?? .failure(LazyFSError(.fetch, "chunk \(index) was not fetched")))
        }
    }

    /// Fetches one merged range, verifies each chunk and stores the good ones.
    private func fetchAndStore(_ group: [Int]) -> [Int: Result<Void, LazyFSError>] {
        let chunks = bootstrap.chunks
        let blob = chunks[group[0]].blob
        let low = group.map { chunks[$0].compressedOffset }.min() ?? 0
        let high = group.map { chunks[$0].compressedRange.upperBound }.max() ?? 0
        let blobName = "sha256:" + bootstrap.blobs[blob].digestHex
        var bytes: [UInt8] = []
        // Verification runs inside the source's `accept`, so that a source
        // with several hosts (mirrors, peers) moves on from one whose bytes
        // are wrong; the outcome of the last bytes checked is kept.
        var results: [Int: Result<Void, LazyFSError>] = [:]
        var verified: [(index: Int, data: [UInt8], compressed: ArraySlice<UInt8>?)] = []
        var failed: [(index: Int, error: any Error)] = []
        var checked = false
        func check(_ candidate: [UInt8]) -> Bool {
            checked = true
            verified = []
            failed = []
            let slice = SliceSource(base: low, bytes: candidate)
            for index in group {
                do {
                    let data = try bootstrap.readChunk(index, source: slice)
                    let c = chunks[index]
                    let packed = configuration.keepCompressed && c.compression != .none
                        ? candidate[Int(c.compressedOffset - low)..<Int(c.compressedRange.upperBound - low)] : nil
                    verified.append((index, data, packed))
                } catch {
                    failed.append((index, error))
                }
            }
            return failed.isEmpty
        }
        let started = Sys.monotonicSeconds()
        var attempt = 0
        while true {
            let t0 = Sys.monotonicSeconds()
            do {
                checked = false
                bytes = try source.read(blob: blob, range: low..<high, accept: check)
                counters.recordLatency(milliseconds: (Sys.monotonicSeconds() - t0) * 1000)
                counters.update {
                    $0.bytesFetched += UInt64(bytes.count)
                    $0.rangeRequests += 1
                }
                break
            } catch {
                attempt += 1
                let elapsed = Sys.monotonicSeconds() - started
                let pause = Self.seconds(configuration.backoff) * Double(1 << min(attempt - 1, 6))
                if attempt > configuration.retries || elapsed + pause >= Self.seconds(configuration.deadline) {
                    logger.error("lazyfs: fetching bytes \(low)..<\(high) of blob \(blobName) failed after \(attempt) attempts: \(error)")
                    counters.update { $0.errors += 1 }
                    let failure = LazyFSError(.fetch, "fetching bytes \(low)..<\(high) of blob \(blobName) failed",
                                              underlying: LazyFSErrorBox(error))
                    return Dictionary(uniqueKeysWithValues: group.map { ($0, .failure(failure)) })
                }
                logger.warning("lazyfs: fetching bytes \(low)..<\(high) of blob \(blobName) failed (attempt \(attempt)), retrying: \(error)")
                Thread.sleep(forTimeInterval: pause)
            }
        }
        if !checked { _ = check(bytes) }
        for (index, error) in failed {
            let c = chunks[index]
            logger.error("lazyfs: chunk \(index) (blob \(blobName), compressed bytes \(c.compressedOffset)..<\(c.compressedRange.upperBound), block \(c.blockAddress)) failed verification and is not served: \(error)")
            counters.update { $0.verificationFailures += 1; $0.errors += 1 }
            results[index] = .failure(LazyFSError(.verification, "chunk \(index) of blob \(blobName) failed verification",
                                                  underlying: LazyFSErrorBox(error)))
        }
        do {
            try cache.store(verified)
            counters.update { $0.chunksFetched += UInt64(verified.count) }
            for item in verified { results[item.index] = .success(()) }
            if failed.isEmpty { source.stored(blob: blob, range: low..<high) }
        } catch {
            logger.error("lazyfs: storing \(verified.count) chunks of blob \(blobName) in the cache failed: \(error)")
            counters.update { $0.errors += 1 }
            for item in verified { results[item.index] = .failure(error) }
        }
        return results
    }

    static func seconds(_ d: Duration) -> Double {
        let (s, atto) = d.components
        return Double(s) + Double(atto) / 1e18
    }
}

/// Serves chunk reads out of one fetched range.
struct SliceSource: ChunkSource {
    let base: UInt64
    let bytes: [UInt8]
    func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        guard range.lowerBound >= base else { return [] }
        let from = Int(range.lowerBound - base)
        let to = min(bytes.count, from + range.count)
        guard from <= to else { return [] }
        return Array(bytes[from..<to])
    }
}

/// Wraps a non-Sendable-typed error for `LazyFSError.underlying`.
struct LazyFSErrorBox: Error, Sendable, CustomStringConvertible {
    let description: String
    init(_ error: any Error) { description = String(describing: error) }
}
