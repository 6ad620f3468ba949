import AsyncHTTPClient
import Crypto
import Dispatch
import Foundation
import KangarooChunks
import KangarooOCI
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// Blobs mapped to trackers by consistent hashing (64 points per tracker on
/// a ring of SHA-256 values): a blob's primary is the first tracker at or
/// after the blob digest's position, its replica the next other tracker.
/// Adding or removing a tracker moves only the blobs next to its points.
public struct TrackerRing: Sendable {
    let points: [(UInt64, String)]
    public let trackers: [String]

    public init(_ trackers: [String]) {
        self.trackers = trackers
        var points: [(UInt64, String)] = []
        for tracker in Set(trackers) {
            for i in 0..<64 { points.append((Self.position(Array("\(tracker)#\(i)".utf8)), tracker)) }
        }
        self.points = points.sorted { $0.0 < $1.0 }
    }

    static func position(_ bytes: [UInt8]) -> UInt64 {
        Array(SHA256.hash(data: bytes)).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The primary and the replica of `digest` (fewer with fewer trackers).
    public func trackers(for digest: KangarooOCI.Digest) -> [String] {
        guard !points.isEmpty else { return [] }
        let key = Self.position(digest.bytes)
        var low = 0, high = points.count
        while low < high {
            let mid = (low + high) / 2
            if points[mid].0 < key { low = mid + 1 } else { high = mid }
        }
        var out: [String] = []
        for step in 0..<points.count {
            let tracker = points[(low + step) % points.count].1
            if !out.contains(tracker) { out.append(tracker) }
            if out.count == 2 { break }
        }
        return out
    }
}

/// Chunks from other nodes, found through the trackers (docs/P2P.md): for
/// a range of whole chunks (this node's chunk table, `.toc` in its cache),
/// the blob's tracker names a parent per chunk, or makes this node the
/// seed (then it throws "not found" and the next host, the registry, is
/// asked; the chunks are announced once stored), or says who is fetching
/// them (then it asks again until `wait` has passed, then gives up the same
/// way). Bytes from a parent are checked with `accept` before anything else
/// sees them: a parent whose bytes fail is reported to the tracker, never
/// asked again by this node, and the next parent (or the registry) is
/// asked. With no tracker answering it fails as unavailable (the caller's
/// circuit breaker then skips it: the registry within a second).
public final class PeerBlobSource: BlobSource, SelfVerifyingBlobSource, Sendable {
    public struct Configuration: Sendable {
        public var trackers: [String]
        /// Where other nodes reach this node's peer (HOST:PORT).
        public var selfAddress: String
        public var token: String
        /// This node's chunk cache (its chunk tables and, for the peer, its chunks).
        public var cacheDirectory: String
        /// How long a read waits for a seed or a parent before the registry.
        public var wait: Duration = .seconds(2)
        /// How long one tracker request may take.
        public var trackerTimeout: Duration = .milliseconds(300)

        public init(trackers: [String], selfAddress: String, token: String, cacheDirectory: String) {
            self.trackers = trackers
            self.selfAddress = selfAddress
            self.token = token
            self.cacheDirectory = cacheDirectory
        }
    }

    let configuration: Configuration
    public let ring: TrackerRing
    let http: HTTPClient
    let logger: Logger
    let tocs = Mutex<[String: BlobTOC]>([:])
    let parents = Mutex<[String: RegistryClient]>([:])
    /// Parents this node will not ask again (bytes that failed verification).
    let blocked = Mutex<Set<String>>([])

    public init(_ configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.ring = TrackerRing(configuration.trackers)
        self.logger = logger
        var config = HTTPClient.Configuration(timeout: .init(connect: .milliseconds(Self.milliseconds(configuration.trackerTimeout)),
                                                             read: .milliseconds(Self.milliseconds(configuration.trackerTimeout))))
        config.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: config)
    }

    public func shutdown() async {
        try? await http.shutdown()
        for client in parents.withLock({ Array($0.values) }) { await client.shutdown() }
    }

    static func milliseconds(_ d: Duration) -> Int64 {
        let (s, atto) = d.components
        return s * 1000 + atto / 1_000_000_000_000_000
    }

    static func seconds(_ d: Duration) -> Double { Double(milliseconds(d)) / 1000 }

    func toc(_ digest: KangarooOCI.Digest) -> BlobTOC? {
        if let known = tocs.withLock({ $0[digest.encoded] }) { return known }
        let path = CacheLayout.tocPath(configuration.cacheDirectory, digest.encoded)
        guard let bytes = FileManager.default.contents(atPath: path),
              let toc = try? BlobTOC(decoding: Array(bytes), what: path) else { return nil }
        tocs.withLock { $0[digest.encoded] = toc }
        return toc
    }

    public func read(_ digest: KangarooOCI.Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws(ChunksError) -> [UInt8] {
        guard let toc = toc(digest), let covering = toc.covering(range) else {
            throw ChunksError(.notFound, "bytes \(range) of \(digest) are not whole chunks this node knows")
        }
        let entries = Array(toc.entries[covering])
        let offsets = entries.map(\.compressedOffset)
        let deadline = Self.now() + Self.seconds(configuration.wait)
        var exclude = blocked.withLock { Array($0) }
        while true {
            let answer = try lookup(digest, offsets, exclude: exclude)
            if !answer.seed.isEmpty {
                throw ChunksError(.notFound, "this node is the seed of \(answer.seed.count) chunks of \(digest): from the registry")
            }
            if answer.wait.isEmpty, !answer.parents.isEmpty {
                var failed: String?
                do throws(ChunksError) {
                    let bytes = try fetch(digest, entries: entries, from: answer.parents, range: range, failed: &failed)
                    if accept(bytes) { return bytes }
                    let culprits = answer.parents.map(\.node)
                    logger.error("peer bytes of \(digest) failed verification: parents reported and not asked again",
                                 metadata: ["parents": "\(culprits)"])
                    blocked.withLock { $0.formUnion(culprits) }
                    exclude += culprits
                    for culprit in culprits { report(digest, peer: culprit) }
                } catch {
                    logger.notice("peer fetch of \(digest) failed; trying other parents", metadata: ["error": "\(error)"])
                    if let failed { exclude.append(failed) }
                }
            }
            guard Self.now() < deadline else {
                throw ChunksError(.notFound, "no parent delivered bytes \(range) of \(digest) within \(configuration.wait)")
            }
            usleep(answer.wait.isEmpty ? 10_000 : 25_000)
        }
    }

    /// The range from its parents, one request per parent run, concatenated.
    func fetch(_ digest: KangarooOCI.Digest, entries: [BlobTOC.Entry], from assignments: [TrackerProtocol.Assignment],
               range: Range<UInt64>, failed: inout String?) throws(ChunksError) -> [UInt8] {
        var parentOf: [UInt64: String] = [:]
        for a in assignments { for c in a.chunks { parentOf[c] = a.node } }
        var runs: [(String, Range<UInt64>)] = []
        for e in entries {
            guard let node = parentOf[e.compressedOffset] else { throw ChunksError(.notFound, "no parent for a chunk") }
            if let last = runs.last, last.0 == node, last.1.upperBound == e.compressedOffset {
                runs[runs.count - 1].1 = last.1.lowerBound..<e.compressedEnd
            } else {
                runs.append((node, e.compressedOffset..<e.compressedEnd))
            }
        }
        var bytes: [UInt8] = []
        for (node, run) in runs {
            let client = parent(node)
            do {
                bytes += try RegistryBlobSource(client: client, repository: "kangaroo", timeout: configuration.wait).read(digest, range: run)
            } catch {
                failed = node
                throw error
            }
        }
        let start = Int(range.lowerBound - entries[0].compressedOffset)
        return Array(bytes[start..<(start + range.count)])
    }

    func parent(_ node: String) -> RegistryClient {
        parents.withLock { table in
            if let client = table[node] { return client }
            let client = RegistryClient(host: node, plainHTTP: true, credentials: nil, timeout: configuration.wait, retries: 0,
                                        headers: [("Authorization", "Bearer \(configuration.token)")], logger: logger)
            table[node] = client
            return client
        }
    }

    public func stored(_ digest: KangarooOCI.Digest, range: Range<UInt64>) {
        guard let toc = toc(digest), let covering = toc.covering(range) else { return }
        let body = TrackerProtocol.Announce(node: configuration.selfAddress, blob: digest.description,
                                            chunks: toc.entries[covering].map(\.compressedOffset))
        // To the primary and the replica, without waiting.
        for tracker in ring.trackers(for: digest) {
            Thread.detachNewThread { [self] in _ = try? post(tracker, "/v1/announce", body) }
        }
    }

    func report(_ digest: KangarooOCI.Digest, peer: String) {
        let body = TrackerProtocol.Report(node: configuration.selfAddress, peer: peer, blob: digest.description)
        for tracker in ring.trackers(for: digest) { _ = try? post(tracker, "/v1/report", body) }
    }

    func lookup(_ digest: KangarooOCI.Digest, _ offsets: [UInt64], exclude: [String]) throws(ChunksError) -> TrackerProtocol.LookupAnswer {
        let body = TrackerProtocol.Lookup(node: configuration.selfAddress, blob: digest.description, chunks: offsets,
                                          exclude: exclude.isEmpty ? nil : exclude)
        var failures: [String] = []
        for tracker in ring.trackers(for: digest) {
            do {
                let data = try post(tracker, "/v1/lookup", body)
                return try JSONDecoder().decode(TrackerProtocol.LookupAnswer.self, from: Data(data))
            } catch {
                failures.append("\(tracker): \(error)")
            }
        }
        throw ChunksError(.unavailable, "no tracker answers for \(digest): \(failures.joined(separator: "; "))")
    }

    /// A blocking POST of JSON to a tracker.
    func post<T: Encodable>(_ tracker: String, _ path: String, _ value: T) throws -> [UInt8] {
        var request = HTTPClientRequest(url: "http://\(tracker)\(path)")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(configuration.token)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(value)))
        let result = Mutex<Result<[UInt8], any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let http = self.http, timeout = configuration.trackerTimeout, request_ = request
        let task = Task {
            do {
                let response = try await http.execute(request_, timeout: .milliseconds(Self.milliseconds(timeout)))
                let body = try await response.body.collect(upTo: 16 << 20)
                guard response.status == .ok else {
                    throw ChunksError(.unavailable, "tracker \(tracker) answered \(response.status.code) to \(path)")
                }
                result.withLock { $0 = .success(Array(body.readableBytesView)) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
            done.signal()
        }
        if done.wait(timeout: .now() + Self.seconds(timeout) + 0.05) == .timedOut {
            task.cancel()
            throw ChunksError(.timeout, "tracker \(tracker) did not answer \(path) within \(timeout)")
        }
        switch result.withLock({ $0 }) {
        case .success(let bytes)?: return bytes
        case .failure(let error)?: throw error
        case nil: throw ChunksError(.unavailable, "tracker \(tracker): no result")
        }
    }

    static func now() -> Double { ProcessInfo.processInfo.systemUptime }
}
