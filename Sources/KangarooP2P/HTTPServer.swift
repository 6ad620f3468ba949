import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// One HTTP request, body included.
struct HTTPRequest: Sendable {
    var method: HTTPMethod
    var uri: String
    var headers: HTTPHeaders
    var body: [UInt8]

    /// The path without the query.
    var path: String { uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? uri }
}

/// What a request gets: status, headers and body.
struct HTTPAnswer: Sendable {
    var status: HTTPResponseStatus
    var headers: [(String, String)] = []
    var body: [UInt8] = []

    /// An OCI distribution-style error body.
    static func error(_ status: HTTPResponseStatus, _ code: String, _ message: String) -> HTTPAnswer {
        let entry: [String: String] = ["code": code, "message": message]
        let body = (try? JSONSerialization.data(withJSONObject: ["errors": [entry]])) ?? Data()
        return HTTPAnswer(status: status, headers: [("Content-Type", "application/json")], body: Array(body))
    }

    static func json<T: Encodable>(_ value: T) -> HTTPAnswer {
        guard let body = try? JSONEncoder().encode(value) else { return .error(.internalServerError, "UNKNOWN", "encoding failed") }
        return HTTPAnswer(status: .ok, headers: [("Content-Type", "application/json")], body: Array(body))
    }
}

/// A small HTTP/1.1 server on swift-nio for the peer and the tracker: each
/// request is answered by `respond` on a thread pool (it may read the disk),
/// never on the event loop; beyond `maxActive` requests at once the answer
/// is 503 at once; with a bucket, answers wait for their share of the
/// bandwidth. Request bodies above 1 MiB are refused (413).
final class HTTPServer: Sendable {
    let host: String
    let port: Int
    let maxActive: Int
    let bucket: UploadBucket?
    let respond: @Sendable (HTTPRequest) -> HTTPAnswer
    let onBusy: @Sendable () -> Void
    let active = Atomic<Int>(0)
    let channel = Mutex<(any Channel)?>(nil)
    let threads: NIOThreadPool
    static let maxBody = 1 << 20

    init(host: String, port: Int, maxActive: Int, bucket: UploadBucket?, threads: Int = 4,
         onBusy: @escaping @Sendable () -> Void = {}, respond: @escaping @Sendable (HTTPRequest) -> HTTPAnswer) {
        self.host = host
        self.port = port
        self.maxActive = maxActive
        self.bucket = bucket
        self.respond = respond
        self.onBusy = onBusy
        self.threads = NIOThreadPool(numberOfThreads: threads)
    }

    /// Binds and serves; returns the bound port.
    func start() async throws -> Int {
        threads.start()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(HTTPRequestHandler(server: self))
                }
            }
        let bound: any Channel
        do { bound = try await bootstrap.bind(host: host, port: port).get() } catch {
            try? await threads.shutdownGracefully()
            throw error
        }
        channel.withLock { $0 = bound }
        return bound.localAddress?.port ?? port
    }

    func stop() async {
        if let bound = channel.withLock({ $0 }) { try? await bound.close() }
        try? await threads.shutdownGracefully()
    }

    /// The answer to `request`, on the pool, after its bandwidth wait.
    func answer(_ request: HTTPRequest, on loop: any EventLoop) -> EventLoopFuture<HTTPAnswer> {
        guard active.wrappingAdd(1, ordering: .relaxed).newValue <= maxActive else {
            active.wrappingSubtract(1, ordering: .relaxed)
            onBusy()
            return loop.makeSucceededFuture(.error(.serviceUnavailable, "TOOMANYREQUESTS", "busy: serving its maximum of requests"))
        }
        let respond = self.respond, bucket = self.bucket
        return threads.runIfActive(eventLoop: loop) { respond(request) }
            .flatMap { (answer: HTTPAnswer) -> EventLoopFuture<HTTPAnswer> in
                guard let bucket, !answer.body.isEmpty else { return loop.makeSucceededFuture(answer) }
                let wait = bucket.reserve(answer.body.count)
                guard wait > 0 else { return loop.makeSucceededFuture(answer) }
                return loop.scheduleTask(in: .milliseconds(Int64(wait * 1000))) { answer }.futureResult
            }
            .always { [self] _ in active.wrappingSubtract(1, ordering: .relaxed) }
    }
}

/// A token bucket shared by the answers (50 ms of burst).
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

final class HTTPRequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: HTTPServer
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(server: HTTPServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
            body = []
            tooLarge = false
        case .body(let buffer):
            if body.count + buffer.readableBytes > HTTPServer.maxBody { tooLarge = true } else { body.append(contentsOf: buffer.readableBytesView) }
        case .end:
            guard let request = head else { return }
            head = nil
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let answer = tooLarge
                ? loop.makeSucceededFuture(HTTPAnswer.error(.payloadTooLarge, "SIZE_INVALID", "request body over 1 MiB"))
                : server.answer(HTTPRequest(method: request.method, uri: request.uri, headers: request.headers, body: body), on: loop)
            body = []
            answer.whenComplete { result in
                let (this, context) = bound.value
                let answer = (try? result.get()) ?? .error(.internalServerError, "UNKNOWN", "the server failed to answer")
                this.write(answer, head: request, context: context)
            }
        }
    }

    private func write(_ answer: HTTPAnswer, head: HTTPRequestHead, context: ChannelHandlerContext) {
        var headers = HTTPHeaders(answer.headers)
        let body = head.method == .HEAD ? [] : answer.body
        headers.add(name: "Content-Length", value: "\(answer.body.count)")
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: answer.status, headers: headers))), promise: nil)
        if !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !head.isKeepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

/// Constant-time check of `Authorization: Bearer <token>` against a token's digest.
struct ClusterToken: Sendable {
    let digest: [UInt8]

    init(_ token: String) { digest = ClusterToken.hash(token) }

    static func hash(_ text: String) -> [UInt8] { Array(SHA256.hash(data: Array(text.utf8))) }

    func admits(_ header: String?) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let presented = Self.hash(String(header.dropFirst(7)))
        var difference: UInt8 = 0
        for (a, b) in zip(presented, digest) { difference |= a ^ b }
        return difference == 0 && presented.count == digest.count
    }
}
