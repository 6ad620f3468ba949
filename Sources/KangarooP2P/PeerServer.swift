import AsyncHTTPClient
import Foundation
import KangarooChunks
import KangarooOCI
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// Serves the chunks of a node's verified cache to other nodes over HTTP
/// in the OCI blob URL form, so that any registry client can read them:
/// `GET /v2/<name>/blobs/<digest>` with `Range: bytes=A-B` answers 206 with
/// the bytes the registry would give for that range, when the range is made
/// of whole chunks this node holds (`CacheReader`), and 404 otherwise (the
/// client moves on to its next host). `GET /v2/` answers 200 (a ping).
///
/// Every request needs `Authorization: Bearer <cluster token>` (401
/// otherwise, with no challenge: there is nothing to log in to). Uploads are
/// capped in number (503 beyond `maxUploads`, the client goes elsewhere) and
/// in bandwidth (a token bucket shared by all uploads). Disk reads run on a
/// thread pool, never on the event loop.
public final class PeerServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// The cluster token; nil serves without authentication (tests, a
        /// trusted network: say so on the command line).
        public var token: String?
        public var maxUploads: Int = 16
        /// Upload bandwidth cap, bytes per second (0: none).
        public var maxUploadBytesPerSecond: UInt64 = 0

        /// Runs a preheat (POST /v1/preheat): fetches an image's chunks into
        /// the cache this peer serves. Nil: this peer does not preheat (501).
        public var preheat: (@Sendable (PreheatRequest) async throws -> PreheatSummary)?

        public init(host: String, port: Int, token: String?) {
            self.host = host
            self.port = port
            self.token = token
        }
    }

    /// Counters (the node exports them).
    public struct Stats: Sendable, Codable, Equatable {
        public var requests: UInt64 = 0
        public var uploads: UInt64 = 0
        public var bytesUploaded: UInt64 = 0
        public var notHeld: UInt64 = 0
        public var unauthorized: UInt64 = 0
        public var busy: UInt64 = 0
    }

    let reader: CacheReader
    public let configuration: Configuration
    let jobs = Mutex<[String: PreheatJob]>([:])
    let bound = Mutex(0)
    /// The port it listens on once started.
    public var boundPort: Int { bound.withLock { $0 } }
    let logger: Logger
    let counters = Mutex(Stats())
    let token: ClusterToken?
    let http = Mutex<HTTPServer?>(nil)

    public init(reader: CacheReader, configuration: Configuration, logger: Logger) {
        self.reader = reader
        self.configuration = configuration
        self.logger = logger
        token = configuration.token.map(ClusterToken.init)
    }

    public func stats() -> Stats { counters.withLock { $0 } }

    /// Binds and starts serving; returns the bound port.
    public func start() async throws -> Int {
        let bucket = configuration.maxUploadBytesPerSecond > 0 ? UploadBucket(bytesPerSecond: configuration.maxUploadBytesPerSecond) : nil
        let server = HTTPServer(host: configuration.host, port: configuration.port, maxActive: configuration.maxUploads, bucket: bucket,
                                onBusy: { [self] in counters.withLock { $0.busy += 1 } },
                                respond: { [self] request in answer(request) })
        let port = try await server.start()
        http.withLock { $0 = server }
        bound.withLock { $0 = port }
        logger.info("peer serving the chunk cache", metadata: ["cache": "\(reader.directory)",
                                                              "listen": "\(configuration.host):\(port)",
                                                              "auth": "\(token == nil ? "none" : "cluster token")"])
        return port
    }

    /// Stops accepting and closes the listener.
    public func stop() async {
        await http.withLock({ $0 })?.stop()
    }

    /// Answers one request (on a pool thread: it may read the disk).
    func answer(_ request: HTTPRequest) -> HTTPAnswer {
        counters.withLock { $0.requests += 1 }
        if let token, !token.admits(request.headers.first(name: "Authorization")) {
            counters.withLock { $0.unauthorized += 1 }
            logger.notice("peer request refused: no valid cluster token", metadata: ["uri": "\(request.uri)"])
            return .error(.unauthorized, "UNAUTHORIZED", "this peer serves members of its cluster only (Authorization: Bearer <cluster token>)")
        }
        let path = request.path
        if path == "/v1/preheat" || path.hasPrefix("/v1/preheat/") { return preheat(request) }
        guard request.method == .GET || request.method == .HEAD else { return .error(.methodNotAllowed, "UNSUPPORTED", "only GET and HEAD") }
        if path == "/v1/stats" { return .json(stats()) }
        if path == "/v2/" || path == "/v2" { return HTTPAnswer(status: .ok, headers: [("Content-Type", "application/json")], body: Array("{}".utf8)) }
        // /v2/<name>/blobs/<digest>
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count >= 4, parts[0] == "v2", parts[parts.count - 2] == "blobs" else {
            return .error(.notFound, "NAME_UNKNOWN", "this peer serves /v2/<name>/blobs/<digest> only")
        }
        let digest: KangarooOCI.Digest
        do { digest = try KangarooOCI.Digest(parsing: String(parts[parts.count - 1])) } catch {
            return .error(.badRequest, "DIGEST_INVALID", "\(error)")
        }
        guard let rangeHeader = request.headers.first(name: "Range") else {
            counters.withLock { $0.notHeld += 1 }
            return .error(.notFound, "BLOB_UNKNOWN", "this peer serves byte ranges of blobs: ask with a Range header")
        }
        guard let range = Self.parseRange(rangeHeader) else {
            return .error(.rangeNotSatisfiable, "RANGE_INVALID", "Range '\(rangeHeader)' is not bytes=START-END")
        }
        let bytes: [UInt8]
        do throws(ChunksError) { bytes = try reader.read(digest, range: range) } catch {
            counters.withLock { $0.notHeld += 1 }
            return .error(error.code == .notFound ? .notFound : .internalServerError, "BLOB_UNKNOWN", error.message)
        }
        counters.withLock {
            $0.uploads += 1
            $0.bytesUploaded += UInt64(bytes.count)
        }
        return HTTPAnswer(status: .partialContent,
                          headers: [("Content-Type", "application/octet-stream"),
                                    ("Content-Range", "bytes \(range.lowerBound)-\(range.upperBound - 1)/*")],
                          body: bytes)
    }

    /// POST /v1/preheat starts a job (202 with the job); GET
    /// /v1/preheat/ID tells how it goes. Jobs of the last hour are kept.
    func preheat(_ request: HTTPRequest) -> HTTPAnswer {
        if request.method == .GET {
            let id = String(request.path.dropFirst("/v1/preheat/".count))
            guard let job = jobs.withLock({ $0[id] }) else { return .error(.notFound, "UNKNOWN_JOB", "no preheat job \(id) here") }
            return .json(job)
        }
        guard request.method == .POST, request.path == "/v1/preheat" else {
            return .error(.methodNotAllowed, "UNSUPPORTED", "POST /v1/preheat or GET /v1/preheat/ID")
        }
        guard let run = configuration.preheat else {
            return .error(.notImplemented, "UNSUPPORTED", "this peer does not preheat (it serves a cache only)")
        }
        guard let body = try? JSONDecoder().decode(PreheatRequest.self, from: Data(request.body)),
              !body.reference.isEmpty, !body.reference.hasPrefix("-"), body.reference.count < 4096 else {
            return .error(.badRequest, "BAD_REQUEST", "a preheat is {\"reference\": \"REGISTRY/NAME:TAG\", \"all\": false}")
        }
        let job = PreheatJob(id: UUID().uuidString.lowercased(), reference: body.reference, state: .running, started: Date())
        jobs.withLock { table in
            table = table.filter { $0.value.state == .running || Date().timeIntervalSince($0.value.started) < 3600 }
            table[job.id] = job
        }
        logger.info("preheat started", metadata: ["reference": "\(body.reference)", "all": "\(body.all)", "job": "\(job.id)"])
        Task { [self] in
            var finished = job
            do {
                finished.summary = try await run(body)
                finished.state = .done
            } catch {
                finished.error = "\(error)"
                finished.state = .failed
                logger.error("preheat failed", metadata: ["reference": "\(body.reference)", "error": "\(error)"])
            }
            jobs.withLock { $0[job.id] = finished }
        }
        var answer = HTTPAnswer.json(job)
        answer.status = .accepted
        return answer
    }

    /// `bytes=A-B` (one range, both ends given) as A..<B+1.
    static func parseRange(_ header: String) -> Range<UInt64>? {
        guard header.hasPrefix("bytes=") else { return nil }
        let ends = header.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false)
        guard ends.count == 2, let a = UInt64(ends[0]), let b = UInt64(ends[1]), b >= a, b - a < 1 << 30 else { return nil }
        return a..<(b + 1)
    }
}

/// POST /v1/preheat: fetch `reference`'s prefetch list (or all of it) into this node's cache.
public struct PreheatRequest: Codable, Sendable {
    public var reference: String
    public var all: Bool

    public init(reference: String, all: Bool) {
        self.reference = reference
        self.all = all
    }
}

/// A preheat a peer runs, as GET /v1/preheat/ID reports it.
public struct PreheatJob: Codable, Sendable {
    public enum State: String, Codable, Sendable { case running, done, failed }
    public var id: String
    public var reference: String
    public var state: State
    public var started: Date
    public var summary: PreheatSummary?
    public var error: String?
}

/// What a preheat fetched (`kangaroo image preheat --json` prints it).
public struct PreheatSummary: Codable, Sendable {
    public var reference: String
    /// Chunks of the prefetch list (or of the image), all cached now.
    public var chunks: Int
    /// Compressed bytes fetched from the registry (and its mirrors) and from other nodes.
    public var bytesFromRegistry: UInt64
    public var bytesFromPeers: UInt64
    public var seconds: Double

    public init(reference: String, chunks: Int, bytesFromRegistry: UInt64, bytesFromPeers: UInt64, seconds: Double) {
        self.reference = reference
        self.chunks = chunks
        self.bytesFromRegistry = bytesFromRegistry
        self.bytesFromPeers = bytesFromPeers
        self.seconds = seconds
    }
}

/// Starts preheats on peers and follows them (`kangaroo image preheat --nodes`).
public final class PreheatClient: Sendable {
    let http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup)
    let token: String

    public init(token: String) { self.token = token }

    public func shutdown() { try? http.syncShutdown() }

    public func start(_ node: String, _ request: PreheatRequest) async throws(ChunksError) -> PreheatJob {
        let body: [UInt8]
        do { body = Array(try JSONEncoder().encode(request)) } catch { throw ChunksError(.invalidArgument, "preheat request: \(error)") }
        return try await call(node, .POST, "/v1/preheat", body)
    }

    public func job(_ node: String, _ id: String) async throws(ChunksError) -> PreheatJob {
        try await call(node, .GET, "/v1/preheat/\(id)", nil)
    }

    func call(_ node: String, _ method: HTTPMethod, _ path: String, _ body: [UInt8]?) async throws(ChunksError) -> PreheatJob {
        var request = HTTPClientRequest(url: "http://\(node)\(path)")
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response: HTTPClientResponse
        let data: ByteBuffer
        do {
            response = try await http.execute(request, timeout: .seconds(10))
            data = try await response.body.collect(upTo: 1 << 20)
        } catch {
            throw ChunksError(.unavailable, "node \(node): its peer does not answer", underlying: ErrorText(error))
        }
        guard response.status == .ok || response.status == .accepted else {
            throw ChunksError(.unavailable, "node \(node) answered \(response.status.code): \(String(buffer: data).prefix(500))")
        }
        do { return try JSONDecoder().decode(PreheatJob.self, from: Data(data.readableBytesView)) } catch {
            throw ChunksError(.unavailable, "node \(node): its answer is not a preheat job: \(error)")
        }
    }
}
