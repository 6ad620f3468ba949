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
/// chunk's seed (it fetches the chunk from the registry and announces it
/// once stored), or says who is fetching it (this node asks again until
/// the seed has it or `wait` has passed, then fetches it from the
/// registry). A range is assembled chunk by chunk from parents and the
/// registry, so a node fetches from the registry only the chunks nobody
/// else fetches. Bytes are checked with `accept` before anything else sees
/// them: a parent whose bytes fail is reported to the tracker and never
/// asked again by this node. With no tracker answering it fails as
/// unavailable (the caller's circuit breaker then skips it: the registry
/// within a second).
public final class PeerBlobSource: PlanningBlobSource, Sendable {
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
    /// Parents that failed a request (refused, timed out): not asked again
    /// until the time given (monotonic seconds).
    let shunned = Mutex<[String: Double]>([:])
    static let shunSeconds = 30.0

    /// Parents not to ask now: blocked and shunned ones.
    func avoided() -> [String] {
        let now = Self.now()
        let shunnedNow = shunned.withLock { table in
            table = table.filter { $0.value > now }
            return Array(table.keys)
        }
        return blocked.withLock { Array($0) } + shunnedNow
    }

    /// Parents whose bytes of `digest` failed verification: never asked
    /// again by this node, reported to the trackers.
    func blame(_ culprits: Set<String>, _ digest: KangarooOCI.Digest) {
        logger.error("peer bytes of \(digest) failed verification: parents reported and not asked again",
                     metadata: ["parents": "\(culprits.sorted())"])
        blocked.withLock { $0.formUnion(culprits) }
        for culprit in culprits { report(digest, peer: culprit) }
    }

    func shun(_ node: String) {
        shunned.withLock { $0[node] = Self.now() + Self.shunSeconds }
    }

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

    /// The key of "the whole blob" in tracker requests (chunk keys are
    /// compressed offsets, below it): bootstraps are traded whole.
    public static let wholeBlob = UInt64.max

    /// The whole blob `digest` (`size` bytes, a bootstrap) from a node
    /// that holds it, checked against its digest; nil when this node is to
    /// fetch it from the registry itself: it is the seed, no holder
    /// delivered it within `wait`, or no tracker answers. Call
    /// `storedWhole` once the blob is in the store the peer serves.
    public func wholeBlob(_ digest: KangarooOCI.Digest, size: Int64) -> [UInt8]? {
        guard size > 0, size < 1 << 30, digest.algorithm == "sha256" else { return nil }
        let deadline = Self.now() + Self.seconds(configuration.wait)
        var exclude = avoided()
        while Self.now() < deadline {
            guard let answer = try? lookup(digest, [Self.wholeBlob], exclude: exclude), answer.seed.isEmpty else { return nil }
            if let node = answer.parents.first?.node {
                let bytes = try? RegistryBlobSource(client: parent(node), repository: "kangaroo", timeout: configuration.wait)
                    .read(digest, range: 0..<UInt64(size))
                if let bytes {
                    if Array(SHA256.hash(data: bytes)) == digest.bytes { return bytes }
                    blame([node], digest)
                } else {
                    shun(node)
                }
                exclude.append(node)
                continue
            }
            usleep(25_000)
        }
        return nil
    }

    /// The whole blob `digest` is in the store this node's peer serves.
    public func storedWhole(_ digest: KangarooOCI.Digest) {
        let body = TrackerProtocol.Announce(node: configuration.selfAddress, blob: digest.description, chunks: [Self.wholeBlob])
        for tracker in ring.trackers(for: digest) { _ = try? post(tracker, "/v1/announce", body) }
    }

    /// Without an origin: chunks this node would seed, or wait for past
    /// `wait`, make the read fail as "not found".
    public func read(_ digest: KangarooOCI.Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws(ChunksError) -> [UInt8] {
        try read(digest, range: range, accept: accept, origin: NoOrigin()).bytes
    }

    /// The range chunk by chunk: those a parent holds from that parent,
    /// those nobody holds or fetches (this node is their seed) from
    /// `origin`, those another node is fetching once it has them (asking
    /// again every 25 ms), or from `origin` when `wait` has passed. When
    /// the whole range is this node's to seed, "not found" (the next host
    /// then fetches it in one request). Bytes that fail `accept` are
    /// fetched again from `origin`; the parents whose runs differ from the
    /// origin's are reported and never asked again.
    public func read(_ digest: KangarooOCI.Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool,
                     origin: any BlobSource) throws(ChunksError) -> (bytes: [UInt8], own: UInt64) {
        guard let toc = toc(digest), let covering = toc.covering(range) else {
            throw ChunksError(.notFound, "bytes \(range) of \(digest) are not whole chunks this node knows")
        }
        let entries = Array(toc.entries[covering])
        let deadline = Self.now() + Self.seconds(configuration.wait)
        var exclude = avoided()
        var got: [UInt64: [UInt8]] = [:]   // chunk offset: its compressed bytes
        var fromParents: [(node: String, run: Range<UInt64>)] = []
        var pending = entries
        var first = true
        while !pending.isEmpty {
            let answer = try lookup(digest, pending.map(\.compressedOffset), exclude: exclude)
            if first, answer.seed.count == entries.count {
                throw ChunksError(.notFound, "this node is the seed of bytes \(range) of \(digest): from the registry")
            }
            first = false
            let seed = Set(answer.seed)
            var parentOf: [UInt64: String] = [:]
            for a in answer.parents { for c in a.chunks { parentOf[c] = a.node } }
            // Parents' runs, then the seed's runs from the origin.
            for (node, run, chunks) in Self.runs(pending, { parentOf[$0.compressedOffset] }) {
                do {
                    let bytes = try RegistryBlobSource(client: parent(node), repository: "kangaroo", timeout: configuration.wait)
                        .read(digest, range: run)
                    Self.split(bytes, run: run, chunks: chunks, into: &got)
                    fromParents.append((node, run))
                } catch {
                    logger.notice("peer fetch of \(digest) failed; not asking that parent for \(Int(Self.shunSeconds)) s",
                                  metadata: ["parent": "\(node)", "error": "\(error)"])
                    shun(node)
                    exclude.append(node)
                }
            }
            let late = Self.now() >= deadline
            for (_, run, chunks) in Self.runs(pending, { seed.contains($0.compressedOffset) || (late && got[$0.compressedOffset] == nil) ? "" : nil }) {
                Self.split(try fromOrigin(origin, digest, run), run: run, chunks: chunks, into: &got)
            }
            pending.removeAll { got[$0.compressedOffset] != nil }
            if !pending.isEmpty { usleep(answer.wait.isEmpty ? 10_000 : 25_000) }
        }
        var whole: [UInt8] = []
        for e in entries { whole += got[e.compressedOffset]! }
        let start = Int(range.lowerBound - entries[0].compressedOffset)
        let bytes = Array(whole[start..<(start + range.count)])
        let own = fromParents.reduce(UInt64(0)) { $0 + UInt64($1.run.count) }
        if accept(bytes) { return (bytes, own) }
        // Which parent lied: the origin's bytes tell.
        let truth = try fromOrigin(origin, digest, entries[0].compressedOffset..<entries[entries.count - 1].compressedEnd)
        let base = entries[0].compressedOffset
        var culprits = Set(fromParents.filter { p in
            truth[Int(p.run.lowerBound - base)..<Int(p.run.upperBound - base)].elementsEqual(whole[Int(p.run.lowerBound - base)..<Int(p.run.upperBound - base)]) == false
        }.map(\.node))
        if culprits.isEmpty { culprits = Set(fromParents.map(\.node)) }
        blame(culprits, digest)
        let corrected = Array(truth[start..<(start + range.count)])
        guard accept(corrected) else {
            throw ChunksError(.notFound, "bytes \(range) of \(digest) fail verification from the registry too")
        }
        return (corrected, 0)
    }

    /// Consecutive chunks with the same key as one byte run each.
    static func runs(_ entries: [BlobTOC.Entry], _ key: (BlobTOC.Entry) -> String?) -> [(String, Range<UInt64>, [BlobTOC.Entry])] {
        var out: [(String, Range<UInt64>, [BlobTOC.Entry])] = []
        for e in entries {
            guard let k = key(e) else { continue }
            if let last = out.last, last.0 == k, last.1.upperBound == e.compressedOffset {
                out[out.count - 1].1 = last.1.lowerBound..<e.compressedEnd
                out[out.count - 1].2.append(e)
            } else {
                out.append((k, e.compressedOffset..<e.compressedEnd, [e]))
            }
        }
        return out
    }

    static func split(_ bytes: [UInt8], run: Range<UInt64>, chunks: [BlobTOC.Entry], into got: inout [UInt64: [UInt8]]) {
        for c in chunks {
            let at = Int(c.compressedOffset - run.lowerBound)
            got[c.compressedOffset] = Array(bytes[at..<(at + Int(c.compressedSize))])
        }
    }

    /// Bytes from the hosts after this source; their failure is "not found"
    /// here (the peers did not fail), so the caller asks those hosts itself.
    func fromOrigin(_ origin: any BlobSource, _ digest: KangarooOCI.Digest, _ run: Range<UInt64>) throws(ChunksError) -> [UInt8] {
        do {
            return try origin.read(digest, range: run)
        } catch {
            throw ChunksError(.notFound, "bytes \(run) of \(digest) for this node to seed: \(error.message)")
        }
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

/// No hosts after a peer source: everything it would fetch there is "not found".
struct NoOrigin: BlobSource {
    func read(_ digest: KangarooOCI.Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws(ChunksError) -> [UInt8] {
        throw ChunksError(.notFound, "no registry behind this peer source")
    }
}
