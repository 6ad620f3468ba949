import Crypto
import Foundation
import KangarooChunks
import KangarooOCI
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
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

        public init(host: String, port: Int, token: String?) {
            self.host = host
            self.port = port
            self.token = token
        }
    }

    /// Counters (`kangaroo peer` logs them; the node exports them).
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
    let logger: Logger
    let active = Atomic<Int>(0)
    let counters = Mutex(Stats())
    let bucket: UploadBucket?
    let tokenDigest: [UInt8]?
    let channel = Mutex<(any Channel)?>(nil)
    let threads = NIOThreadPool(numberOfThreads: 4)

    public init(reader: CacheReader, configuration: Configuration, logger: Logger) {
        self.reader = reader
        self.configuration = configuration
        self.logger = logger
        bucket = configuration.maxUploadBytesPerSecond > 0 ? UploadBucket(bytesPerSecond: configuration.maxUploadBytesPerSecond) : nil
        tokenDigest = configuration.token.map { Array(SHA256.hash(data: Array($0.utf8))) }
    }

    public func stats() -> Stats { counters.withLock { $0 } }

    /// Binds and starts serving; returns the bound port.
    public func start() async throws -> Int {
        threads.start()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(PeerRequestHandler(server: self))
                }
            }
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
        let bound = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        channel.withLock { $0 = bound }
        let port = bound.localAddress?.port ?? configuration.port
        logger.info("peer serving the chunk cache", metadata: ["cache": "\(reader.directory)",
                                                              "listen": "\(configuration.host):\(port)",
                                                              "auth": "\(configuration.token == nil ? "none" : "cluster token")"])
        return port
    }

    /// Stops accepting and closes the listener.
    public func stop() async {
        if let bound = channel.withLock({ $0 }) { try? await bound.close() }
        try? await threads.shutdownGracefully()
    }

    /// Waits until the listener closes.
    public func wait() async {
        guard let bound = channel.withLock({ $0 }) else { return }
        try? await bound.closeFuture.get()
    }

    /// Constant-time comparison of the presented token's digest.
    func authorized(_ header: String?) -> Bool {
        guard let tokenDigest else { return true }
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let presented = Array(SHA256.hash(data: Array(header.dropFirst(7).utf8)))
        var difference: UInt8 = 0
        for (a, b) in zip(presented, tokenDigest) { difference |= a ^ b }
        return difference == 0
    }

    /// What a request gets: status, headers and body.
    struct Answer {
        var status: HTTPResponseStatus
        var headers: [(String, String)] = []
        var body: [UInt8] = []
        static func text(_ status: HTTPResponseStatus, _ message: String) -> Answer {
            let json = "{\"errors\":[{\"code\":\"\(status.code == 404 ? "BLOB_UNKNOWN" : "UNSUPPORTED")\",\"message\":\"\(message.replacingOccurrences(of: "\"", with: "'"))\"}]}"
            return Answer(status: status, headers: [("Content-Type", "application/json")], body: Array(json.utf8))
        }
    }

    /// Answers one request (on a pool thread: it may read the disk).
    func answer(method: HTTPMethod, uri: String, headers: HTTPHeaders) -> Answer {
        counters.withLock { $0.requests += 1 }
        guard authorized(headers.first(name: "Authorization")) else {
            counters.withLock { $0.unauthorized += 1 }
            logger.notice("peer request refused: no valid cluster token", metadata: ["uri": "\(uri)"])
            return .text(.unauthorized, "this peer serves members of its cluster only (Authorization: Bearer <cluster token>)")
        }
        guard method == .GET || method == .HEAD else { return .text(.methodNotAllowed, "only GET and HEAD") }
        let path = uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri
        if path == "/v2/" || path == "/v2" { return Answer(status: .ok, headers: [("Content-Type", "application/json")], body: Array("{}".utf8)) }
        // /v2/<name>/blobs/<digest>
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count >= 4, parts[0] == "v2", parts[parts.count - 2] == "blobs" else {
            return .text(.notFound, "this peer serves /v2/<name>/blobs/<digest> only")
        }
        let digest: KangarooOCI.Digest
        do { digest = try KangarooOCI.Digest(parsing: String(parts[parts.count - 1])) } catch {
            return .text(.badRequest, "\(error)")
        }
        guard let rangeHeader = headers.first(name: "Range") else {
            counters.withLock { $0.notHeld += 1 }
            return .text(.notFound, "this peer serves byte ranges of blobs: ask with a Range header")
        }
        guard let range = Self.parseRange(rangeHeader) else {
            return .text(.rangeNotSatisfiable, "Range '\(rangeHeader)' is not bytes=START-END")
        }
        let bytes: [UInt8]
        do throws(ChunksError) { bytes = try reader.read(digest, range: range) } catch {
            counters.withLock { $0.notHeld += 1 }
            return .text(error.code == .notFound ? .notFound : .internalServerError, error.message)
        }
        counters.withLock {
            $0.uploads += 1
            $0.bytesUploaded += UInt64(bytes.count)
        }
        return Answer(status: .partialContent,
                      headers: [("Content-Type", "application/octet-stream"),
                                ("Content-Range", "bytes \(range.lowerBound)-\(range.upperBound - 1)/*")],
                      body: method == .HEAD ? [] : bytes)
    }

    /// `bytes=A-B` (one range, both ends given) as A..<B+1.
    static func parseRange(_ header: String) -> Range<UInt64>? {
        guard header.hasPrefix("bytes=") else { return nil }
        let spec = header.dropFirst(6)
        let ends = spec.split(separator: "-", omittingEmptySubsequences: false)
        guard ends.count == 2, let a = UInt64(ends[0]), let b = UInt64(ends[1]), b >= a, b - a < 1 << 30 else { return nil }
        return a..<(b + 1)
    }
}

/// A token bucket shared by the uploads (50 ms of burst).
final class UploadBucket: Sendable {
    let bytesPerSecond: Double
    private let nextFree = Mutex<Double>(0)

    init(bytesPerSecond: UInt64) { self.bytesPerSecond = Double(max(1, bytesPerSecond)) }

    /// Seconds to wait before sending `bytes`.
    func reserve(_ bytes: Int) -> Double {
        let now = ProcessInfo.processInfo.systemUptime
        let done = nextFree.withLock { next in
            next = max(next, now - 0.05) + Double(bytes) / bytesPerSecond
            return next
        }
        return max(0, done - now)
    }
}

final class PeerRequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: PeerServer
    private var head: HTTPRequestHead?

    init(server: PeerServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request): head = request
        case .body: break
        case .end:
            guard let request = head else { return }
            head = nil
            respond(context: context, request: request)
        }
    }

    private func respond(context: ChannelHandlerContext, request: HTTPRequestHead) {
        let server = self.server
        let loop = context.eventLoop
        let keepAlive = request.isKeepAlive
        let handler = NIOLoopBound((self, context), eventLoop: loop)
        // Admission first: a busy peer says so at once.
        let admitted = server.active.wrappingAdd(1, ordering: .relaxed).newValue <= server.configuration.maxUploads
        let answer: EventLoopFuture<PeerServer.Answer>
        if !admitted {
            server.counters.withLock { $0.busy += 1 }
            answer = loop.makeSucceededFuture(.text(.serviceUnavailable, "this peer is serving its maximum of uploads"))
        } else {
            answer = server.threads.runIfActive(eventLoop: loop) {
                server.answer(method: request.method, uri: request.uri, headers: request.headers)
            }
        }
        answer.flatMap { (answer: PeerServer.Answer) -> EventLoopFuture<PeerServer.Answer> in
            guard let bucket = server.bucket, !answer.body.isEmpty else { return loop.makeSucceededFuture(answer) }
            let wait = bucket.reserve(answer.body.count)
            guard wait > 0 else { return loop.makeSucceededFuture(answer) }
            return loop.scheduleTask(in: .milliseconds(Int64(wait * 1000))) { answer }.futureResult
        }.whenComplete { result in
            server.active.wrappingSubtract(1, ordering: .relaxed)
            let (this, context) = handler.value
            let answer = (try? result.get()) ?? .text(.internalServerError, "the peer failed to answer")
            this.write(answer, keepAlive: keepAlive, context: context, version: request.version)
        }
    }

    private func write(_ answer: PeerServer.Answer, keepAlive: Bool, context: ChannelHandlerContext, version: HTTPVersion) {
        var headers = HTTPHeaders(answer.headers)
        headers.add(name: "Content-Length", value: "\(answer.body.count)")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: answer.status, headers: headers))), promise: nil)
        if !answer.body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: answer.body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
