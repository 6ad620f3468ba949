import Foundation
import Logging
import NIOHTTP1
import Synchronization

/// What the tracker and its clients say to each other (JSON over HTTP).
public enum TrackerProtocol {
    /// POST /v1/lookup: where `node` can get `chunks` (compressed offsets) of `blob`.
    public struct Lookup: Codable, Sendable {
        public var node: String
        public var blob: String
        public var chunks: [UInt64]
        /// Parents this node gave up on (slow, failed, bad bytes).
        public var exclude: [String]?
    }

    public struct Assignment: Codable, Sendable, Equatable {
        public var node: String
        public var chunks: [UInt64]
    }

    public struct LookupAnswer: Codable, Sendable {
        /// Chunks to fetch from a parent that holds them.
        public var parents: [Assignment]
        /// Chunks nobody holds or fetches: this node fetches them from the
        /// registry (it is their seed) and announces them.
        public var seed: [UInt64]
        /// Chunks another node is fetching from the registry: ask again soon.
        public var wait: [Assignment]
    }

    /// POST /v1/announce: `node` now holds `chunks` of `blob`.
    public struct Announce: Codable, Sendable {
        public var node: String
        public var blob: String
        public var chunks: [UInt64]
    }

    /// POST /v1/report: `peer` served bytes of `blob` that failed verification.
    public struct Report: Codable, Sendable {
        public var node: String
        public var peer: String
        public var blob: String
    }

    public struct Stats: Codable, Sendable, Equatable {
        public var blobs = 0
        public var chunks = 0
        public var lookups: UInt64 = 0
        public var seeds: UInt64 = 0
        public var announces: UInt64 = 0
        public var blocked: [String] = []
    }
}

/// Knows which nodes hold which chunks of which blob and picks parents
/// (`kangaroo tracker`). For each chunk a node asks for: a holder other than
/// itself that is not blocked, preferring one already picked for the same
/// request (a range from one parent) and then the one given the fewest
/// chunks in the last second (free upload slots); if nobody holds it, the
/// first asker becomes its seed (it fetches from the registry) and the
/// others wait for it, until it announces the chunk or `seedTimeout`
/// passes. A node reported for bad bytes is handed out to nobody for
/// `blockSeconds`. State is in memory: a restarted tracker knows what is
/// announced after it started (nodes then seed more, nothing breaks).
public final class Tracker: Sendable {
    struct Chunk {
        var holders: [String: Double] = [:]
        var seed: (node: String, since: Double)?
    }

    struct State {
        var blobs: [String: [UInt64: Chunk]] = [:]
        var blocked: [String: Double] = [:]
        /// Chunks handed out per parent in the current one-second window.
        var load: [String: (window: Int, count: Int)] = [:]
        var stats = TrackerProtocol.Stats()
    }

    let state = Mutex(State())
    let token: ClusterToken?
    let logger: Logger
    let http = Mutex<HTTPServer?>(nil)
    let host: String
    let port: Int
    public let seedTimeout: Double
    public static let blockSeconds = 600.0

    public init(host: String, port: Int, token: String?, seedTimeout: Double = 5, logger: Logger) {
        self.host = host
        self.port = port
        self.token = token.map(ClusterToken.init)
        self.seedTimeout = seedTimeout
        self.logger = logger
    }

    public func start() async throws -> Int {
        let server = HTTPServer(host: host, port: port, maxActive: 256, bucket: nil, threads: 2,
                                respond: { [self] request in answer(request) })
        let bound = try await server.start()
        http.withLock { $0 = server }
        logger.info("tracker listening", metadata: ["listen": "\(host):\(bound)", "auth": "\(token == nil ? "none" : "cluster token")"])
        return bound
    }

    public func stop() async {
        await http.withLock({ $0 })?.stop()
    }

    func answer(_ request: HTTPRequest) -> HTTPAnswer {
        if let token, !token.admits(request.headers.first(name: "Authorization")) {
            logger.notice("tracker request refused: no valid cluster token", metadata: ["uri": "\(request.uri)"])
            return .error(.unauthorized, "UNAUTHORIZED", "this tracker serves members of its cluster only (Authorization: Bearer <cluster token>)")
        }
        let decoder = JSONDecoder()
        func decode<T: Decodable>(_ type: T.Type) -> T? { try? decoder.decode(type, from: Data(request.body)) }
        switch (request.method, request.path) {
        case (.POST, "/v1/lookup"):
            guard let lookup = decode(TrackerProtocol.Lookup.self) else { return .error(.badRequest, "BAD_REQUEST", "not a lookup") }
            return .json(self.lookup(lookup, now: Self.now()))
        case (.POST, "/v1/announce"):
            guard let announce = decode(TrackerProtocol.Announce.self) else { return .error(.badRequest, "BAD_REQUEST", "not an announce") }
            self.announce(announce, now: Self.now())
            return .json([String: String]())
        case (.POST, "/v1/report"):
            guard let report = decode(TrackerProtocol.Report.self) else { return .error(.badRequest, "BAD_REQUEST", "not a report") }
            self.report(report, now: Self.now())
            return .json([String: String]())
        case (.GET, "/v1/stats"):
            return .json(stats())
        default:
            return .error(.notFound, "UNSUPPORTED", "no \(request.method) \(request.path) here")
        }
    }

    public func stats() -> TrackerProtocol.Stats {
        state.withLock { s in
            var out = s.stats
            out.blobs = s.blobs.count
            out.chunks = s.blobs.values.reduce(0) { $0 + $1.count }
            let now = Self.now()
            out.blocked = s.blocked.filter { $0.value > now }.map(\.key).sorted()
            return out
        }
    }

    func lookup(_ request: TrackerProtocol.Lookup, now: Double) -> TrackerProtocol.LookupAnswer {
        let exclude = Set(request.exclude ?? [])
        let window = Int(now)
        return state.withLock { s in
            s.stats.lookups += 1
            var parents: [String: [UInt64]] = [:]
            var order: [String] = []
            var seed: [UInt64] = []
            var wait: [String: [UInt64]] = [:]
            var chunks = s.blobs[request.blob] ?? [:]
            for offset in request.chunks {
                var chunk = chunks[offset] ?? Chunk()
                let holders = chunk.holders.keys.filter { node in
                    node != request.node && !exclude.contains(node) && (s.blocked[node] ?? 0) <= now
                }
                if !holders.isEmpty {
                    let picked = order.last.flatMap { holders.contains($0) ? $0 : nil } ?? holders.min { a, b in
                        let la = s.load[a].map { $0.window == window ? $0.count : 0 } ?? 0
                        let lb = s.load[b].map { $0.window == window ? $0.count : 0 } ?? 0
                        return (la, a) < (lb, b)
                    }!
                    if parents[picked] == nil { order.append(picked) }
                    parents[picked, default: []].append(offset)
                    let load = s.load[picked].map { $0.window == window ? $0.count : 0 } ?? 0
                    s.load[picked] = (window, load + 1)
                } else if let current = chunk.seed, current.node != request.node, now - current.since < seedTimeout,
                          !exclude.contains(current.node) {
                    wait[current.node, default: []].append(offset)
                } else {
                    chunk.seed = (request.node, now)
                    chunks[offset] = chunk
                    seed.append(offset)
                    s.stats.seeds += 1
                }
            }
            s.blobs[request.blob] = chunks
            return TrackerProtocol.LookupAnswer(
                parents: order.map { TrackerProtocol.Assignment(node: $0, chunks: parents[$0]!) },
                seed: seed,
                wait: wait.keys.sorted().map { TrackerProtocol.Assignment(node: $0, chunks: wait[$0]!) })
        }
    }

    func announce(_ request: TrackerProtocol.Announce, now: Double) {
        state.withLock { s in
            s.stats.announces += 1
            var chunks = s.blobs[request.blob] ?? [:]
            for offset in request.chunks {
                var chunk = chunks[offset] ?? Chunk()
                chunk.holders[request.node] = now
                if chunk.seed?.node == request.node { chunk.seed = nil }
                chunks[offset] = chunk
            }
            s.blobs[request.blob] = chunks
        }
    }

    func report(_ request: TrackerProtocol.Report, now: Double) {
        state.withLock { s in s.blocked[request.peer] = now + Self.blockSeconds }
        logger.warning("peer reported for bytes that failed verification: handed out to nobody for \(Int(Self.blockSeconds)) s",
                       metadata: ["peer": "\(request.peer)", "by": "\(request.node)", "blob": "\(request.blob)"])
    }

    static func now() -> Double { ProcessInfo.processInfo.systemUptime }
}
