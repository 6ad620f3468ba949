import ContainerdAPI
import Foundation
import KangarooSystem
import Logging
import NIOCore
import NIOPosix
import SwiftProtobuf
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a request carries besides its payload: the ttrpc metadata
/// (containerd sends its namespace as "containerd-namespace-ttrpc").
public struct TTRPCRequestContext: Sendable {
    public var metadata: [(key: String, value: String)]
    /// A request a previous daemon had read and died before answering:
    /// part of its work may be done (a service makes such a request
    /// idempotent where it can).
    public var replayed: Bool
    /// Run once the response is written to the connection (or could not
    /// be): nil when no connection carries the answer (a direct call).
    public var responseWritten: TTRPCResponseWritten?
    public init(metadata: [(key: String, value: String)] = [], replayed: Bool = false, responseWritten: TTRPCResponseWritten? = nil) {
        self.metadata = metadata
        self.replayed = replayed
        self.responseWritten = responseWritten
    }
    public func value(_ key: String) -> String? { metadata.first { $0.key == key }?.value }
}

/// What a handler wants done once its response is on the wire: a service
/// orders what it sends elsewhere after it (the Task service holds a
/// process's exit event until the Kill or Start that caused it is
/// answered: containerd deletes a task on its exit event and closes the
/// connection, failing an answer still to come with "ttrpc: closed").
public final class TTRPCResponseWritten: Sendable {
    private let actions = Mutex<[@Sendable () -> Void]?>([])

    public init() {}

    /// Runs `action` once the response is written (now if it already is).
    public func add(_ action: @escaping @Sendable () -> Void) {
        let late = actions.withLock { a -> Bool in
            guard a != nil else { return true }
            a!.append(action)
            return false
        }
        if late { action() }
    }

    /// The response is written (or the connection is gone).
    public func fire() {
        for action in actions.withLock({ a in defer { a = nil }; return a ?? [] }) { action() }
    }
}

/// One ttrpc service: its full name ("containerd.task.v2.Task") and a handler
/// for each method's serialized request, returning the serialized response.
public protocol TTRPCService: Sendable {
    var serviceName: String { get }
    func handle(method: String, payload: [UInt8], context: TTRPCRequestContext) async throws -> [UInt8]
}

extension TTRPCService {
    /// Decodes the request, runs `body`, encodes its response: the shape of
    /// every unary method.
    public func unary<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ payload: [UInt8], _ type: Request.Type, _ body: (Request) async throws -> Response
    ) async throws -> [UInt8] {
        let request: Request
        do { request = try Request(serializedBytes: payload) } catch {
            throw ShimError(.invalidArgument, "malformed \(Request.protoMessageName) request", underlying: error)
        }
        return try await body(request).serializedBytes()
    }
}

/// A ttrpc server on a unix socket (containerd/ttrpc PROTOCOL.md): unary
/// requests only, each handled in its own task, answered on its stream.
/// Requests and responses are the ttrpc envelope messages (`Ttrpc_Request`,
/// `Ttrpc_Response`); handler errors become a status with the gRPC code of
/// their `ShimError` (other errors: Internal).
public final class TTRPCServer: Sendable {
    public let path: String
    let dispatcher: TTRPCDispatcher
    var logger: Logger { dispatcher.logger }
    private let channel = Mutex<(any Channel)?>(nil)

    /// How a supervised server (see `serve(listening:...)`) tells its
    /// supervisor about connections and keeps requests across its death.
    public struct Supervision: Sendable {
        /// Called with each accepted connection's descriptor and id before
        /// it is served (the supervisor keeps a copy).
        public var accepted: @Sendable (Int32, String) -> Void
        /// Called when a connection is closed here.
        public var closed: @Sendable (String) -> Void
        /// Requests being handled, one file each, replayed by the next
        /// server on the connection they came on.
        public var journal: String
        /// Unique across servers: connection ids are "<generation>-<n>".
        public var generation: Int
        public init(accepted: @escaping @Sendable (Int32, String) -> Void, closed: @escaping @Sendable (String) -> Void,
                    journal: String, generation: Int) {
            self.accepted = accepted
            self.closed = closed
            self.journal = journal
            self.generation = generation
        }
    }
    private let listening = Mutex<Int32>(-1)

    public init(path: String, services: [any TTRPCService], logger: Logger, requests: TTRPCRequestStats = TTRPCRequestStats()) {
        self.path = path
        dispatcher = TTRPCDispatcher(services: Dictionary(services.map { ($0.serviceName, $0) }, uniquingKeysWith: { a, _ in a }),
                                     logger: logger, stats: requests)
    }

    /// Binds the socket (replacing a stale socket file of a dead server).
    public func start(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        if access(path, F_OK) == 0 { unlink(path) }
        let dispatcher = self.dispatcher
        let bound = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
                    try child.pipeline.syncOperations.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
                    try child.pipeline.syncOperations.addHandler(TTRPCServerHandler(dispatcher: dispatcher))
                }
            }
            .bind(unixDomainSocketPath: path).get()
        channel.withLock { $0 = bound }
    }

    /// Serves the listening socket `listener` (its supervisor's, which
    /// keeps it across this server's death), first taking over
    /// `connections` (id → descriptor) a previous server had, with the
    /// requests it had not answered (from the journal).
    public func serve(listening listener: Int32, connections: [(id: String, fd: Int32)], supervision: Supervision,
                      group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        try FileSystem.makeDirectories(supervision.journal, mode: 0o700)
        let kept = Set(connections.map(\.id))
        for name in (try? FileManager.default.contentsOfDirectory(atPath: supervision.journal)) ?? [] {
            if !kept.contains(String(name.prefix { $0 != "." })) { unlink(supervision.journal + "/" + name) }
        }
        for c in connections {
            // Requests the previous server journaled: answered here, and not
            // again when read (one it journaled but did not consume is
            // still in the socket).
            let replayed = journaled(c.id, journal: supervision.journal)
            let connection = JournaledConnection(fd: c.fd, id: c.id, dispatcher: dispatcher, supervision: supervision,
                                                 replayedUpTo: replayed.map(\.stream).max() ?? 0)
            connection.start()
            replay(replayed, on: connection)
        }
        listening.withLock { $0 = listener }
        Thread.detachNewThread { [self] in
            var n = 0
            while true {
                let fd = accept(listener, nil, nil)
                if fd < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    if listening.withLock({ $0 }) < 0 { return }
                    logger.error("ttrpc: accept failed", metadata: ["error": "\(String(cString: strerror(errno)))"])
                    usleep(100_000)
                    continue
                }
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                n += 1
                let id = "\(supervision.generation)-\(n)"
                supervision.accepted(fd, id)
                JournaledConnection(fd: fd, id: id, dispatcher: dispatcher, supervision: supervision, replayedUpTo: 0).start()
            }
        }
    }

    /// The requests of connection `id` a previous server had read and not
    /// answered (its journal files), by stream.
    func journaled(_ id: String, journal directory: String) -> [(stream: UInt32, path: String, data: [UInt8])] {
        let prefix = id + "."
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).compactMap { name in
            guard name.hasPrefix(prefix), let stream = UInt32(name.dropFirst(prefix.count)),
                  let data = FileManager.default.contents(atPath: directory + "/" + name) else { return nil }
            return (stream, directory + "/" + name, [UInt8](data))
        }.sorted { $0.stream < $1.stream }
    }

    /// Answers the requests a previous server had read on `connection`.
    func replay(_ requests: [(stream: UInt32, path: String, data: [UInt8])], on connection: JournaledConnection) {
        for r in requests {
            let method = (try? Ttrpc_Request(serializedBytes: r.data)).map { $0.service + "/" + $0.method } ?? "?"
            logger.info("ttrpc: answering a request the previous daemon had read",
                        metadata: ["connection": "\(connection.id)", "stream": "\(r.stream)", "method": "\(method)"])
            connection.dispatch(r.stream, r.data, replayed: true)
        }
    }

    /// Stops accepting; open connections close as their peers go.
    public func close() async {
        let c = channel.withLock { c in defer { c = nil }; return c }
        try? await c?.close()
        // A supervised server's listening socket is the supervisor's: it
        // stays open (for the next daemon); only this one stops accepting.
        listening.withLock { $0 = -1 }
        if c != nil { unlink(path) }
    }
}

/// Requests of one connection being handled: a file per stream id, so
/// that the next daemon answers those this one read and did not (it died).
final class TTRPCJournal: Sendable {
    let directory: String
    let connection: String
    let closed: @Sendable (String) -> Void

    init(directory: String, connection: String, closed: @escaping @Sendable (String) -> Void) {
        self.directory = directory
        self.connection = connection
        self.closed = closed
    }

    func path(_ stream: UInt32) -> String { directory + "/" + connection + "." + String(stream) }

    func record(_ stream: UInt32, _ data: [UInt8]) {
        let tmp = path(stream) + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
        rename(tmp, path(stream))
    }

    func remove(_ stream: UInt32) { unlink(path(stream)) }

    /// The connection ended: its requests need no answer.
    func connectionClosed() {
        let prefix = connection + "."
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(prefix) {
            unlink(directory + "/" + name)
        }
        closed(connection)
    }
}

/// A connection of a supervised server, crash-safe: each request frame is
/// peeked, written to the journal, and only then consumed from the socket,
/// so that a daemon killed at any instant leaves every request either in
/// the socket or in the journal (an event loop reads first and would lose
/// what it read and had not yet journaled: containerd then waits forever
/// for that answer). One thread reads; answers are written whole, one at a
/// time, under a lock that also guards the descriptor's closing.
final class JournaledConnection: Sendable {
    let fd: Int32
    let id: String
    let dispatcher: TTRPCDispatcher
    let journal: TTRPCJournal
    /// Streams at or below this were journaled by the previous server.
    let replayedUpTo: UInt32
    private let open = Mutex(true)

    init(fd: Int32, id: String, dispatcher: TTRPCDispatcher, supervision: TTRPCServer.Supervision, replayedUpTo: UInt32) {
        self.fd = fd
        self.id = id
        self.dispatcher = dispatcher
        self.journal = TTRPCJournal(directory: supervision.journal, connection: id, closed: supervision.closed)
        self.replayedUpTo = replayedUpTo
        UnixSocket.setBlocking(fd)
    }

    func start() { Thread.detachNewThread { [self] in read() } }

    private func read() {
        var header = [UInt8](repeating: 0, count: TTRPCFrame.headerLength)
        var frame = [UInt8](repeating: 0, count: 4096)
        do {
            while true {
                guard try header.withUnsafeMutableBytes({ b in try UnixSocket.peek(fd, into: b, count: b.count) }) else { break }
                let length = Int(header[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                let stream = header[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                guard length <= TTRPCFrame.maxDataLength else {
                    dispatcher.logger.warning("ttrpc: frame of \(length) bytes exceeds the protocol's 4 MiB limit; closing the connection",
                                              metadata: ["connection": "\(id)"])
                    break
                }
                let total = TTRPCFrame.headerLength + length
                if frame.count < total { frame = [UInt8](repeating: 0, count: total) }
                guard try frame.withUnsafeMutableBytes({ b in try UnixSocket.peek(fd, into: b, count: total) }) else { break }
                let data = Array(frame[TTRPCFrame.headerLength..<total])
                // Streams are not used by containerd's shim or event APIs.
                let request = header[8] == TTRPCFrame.Kind.request.rawValue && stream > replayedUpTo
                if request { journal.record(stream, data) }
                try frame.withUnsafeMutableBytes { b in try UnixSocket.receive(fd, into: b, count: total) }
                if request { dispatch(stream, data, replayed: false) }
            }
        } catch {
            dispatcher.logger.debug("ttrpc connection closed", metadata: ["connection": "\(id)", "error": "\(error)"])
        }
        open.withLock { o in
            o = false
            Glibc.close(fd)
        }
        journal.connectionClosed()
    }

    /// Answers request `data` of `stream` (its journal file goes once the
    /// answer is written).
    func dispatch(_ stream: UInt32, _ data: [UInt8], replayed: Bool) {
        Task(executorPreference: TTRPCServerHandler.executor) { [self] in
            let written = TTRPCResponseWritten()
            defer { written.fire() }
            let response = await dispatcher.respond(to: data, replayed: replayed, written: written)
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            TTRPCFrame(streamID: stream, kind: .response, data: (try? response.serializedBytes()) ?? []).write(to: &buffer)
            let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
            let sent: Bool = open.withLock { o in
                guard o else { return false }
                do { try UnixSocket.sendAll(fd, bytes); return true } catch { return false }
            }
            if !sent { dispatcher.logger.debug("ttrpc: an answer found its connection closed", metadata: ["connection": "\(id)", "stream": "\(stream)"]) }
            journal.remove(stream)
        }
    }
}

/// A connection of an unsupervised server (an event loop's): a crash
/// closes it anyway, so nothing is journaled.
final class TTRPCServerHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = TTRPCFrame
    typealias OutboundOut = TTRPCFrame

    let dispatcher: TTRPCDispatcher

    static let executor = DispatchTaskExecutor(label: "kangaroo.ttrpc")

    init(dispatcher: TTRPCDispatcher) {
        self.dispatcher = dispatcher
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        // Streams are not used by containerd's shim or event APIs.
        guard frame.kind == TTRPCFrame.Kind.request.rawValue else { return }
        let channel = context.channel
        let dispatcher = self.dispatcher
        Task(executorPreference: Self.executor) {
            let written = TTRPCResponseWritten()
            defer { written.fire() }
            let response = await dispatcher.respond(to: frame.data, written: written)
            let bytes: [UInt8] = (try? response.serializedBytes()) ?? []
            try? await channel.writeAndFlush(TTRPCFrame(streamID: frame.streamID, kind: .response, data: bytes))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        dispatcher.logger.debug("ttrpc connection closed", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}

/// Routes a ttrpc request to its service and counts it.
struct TTRPCDispatcher: Sendable {
    let services: [String: any TTRPCService]
    let logger: Logger
    let stats: TTRPCRequestStats

    /// Fault injection for tests of the orderings containerd relies on:
    /// `KANGAROO_FAULT_ANSWER_DELAY=Kill=0.5,Start=0.2` holds each answer of
    /// those methods that many seconds before it is written (a slow
    /// scheduler's worst case). Unset in production: no delay.
    static let answerDelays: [String: Double] = {
        guard let spec = ProcessInfo.processInfo.environment["KANGAROO_FAULT_ANSWER_DELAY"] else { return [:] }
        var delays: [String: Double] = [:]
        for item in spec.split(separator: ",") {
            let parts = item.split(separator: "=")
            if parts.count == 2, let seconds = Double(parts[1]) { delays[String(parts[0])] = seconds }
        }
        return delays
    }()

    func respond(to data: [UInt8], replayed: Bool = false, written: TTRPCResponseWritten? = nil) async -> Ttrpc_Response {
        var response = Ttrpc_Response()
        func fail(_ e: ShimError) -> Ttrpc_Response {
            var status = Ttrpc_Status()
            status.code = e.code.grpcCode
            status.message = e.description
            response.status = status
            return response
        }
        let request: Ttrpc_Request
        do { request = try Ttrpc_Request(serializedBytes: data) } catch {
            return fail(ShimError(.invalidArgument, "malformed ttrpc request", underlying: error))
        }
        guard let service = services[request.service] else {
            return fail(ShimError(.unimplemented, "service \(request.service) is not served here"))
        }
        let started = ContinuousClock.now
        var failed = true
        defer { stats.record(service: request.service, method: request.method, seconds: started.duration(to: .now).seconds, failed: failed) }
        do {
            let context = TTRPCRequestContext(metadata: request.metadata.map { ($0.key, $0.value) }, replayed: replayed,
                                              responseWritten: written)
            response.payload = Data(try await service.handle(method: request.method, payload: [UInt8](request.payload), context: context))
            failed = false
            if let delay = Self.answerDelays[request.method] { try? await Task.sleep(for: .seconds(delay)) }
            return response
        } catch let e as ShimError {
            if e.code != .notFound && e.code != .unimplemented {
                logger.warning("\(request.service)/\(request.method) failed", metadata: ["error": "\(e)"])
            }
            return fail(e)
        } catch {
            logger.warning("\(request.service)/\(request.method) failed", metadata: ["error": "\(error)"])
            return fail(ShimError(.internalError, "\(request.method) failed", underlying: error))
        }
    }
}

/// Requests a server answered, per service and method: how many, how many
/// failed, and the seconds spent answering (for `Wait`, the time until the
/// exit: it blocks).
public final class TTRPCRequestStats: Sendable {
    public struct Entry: Codable, Sendable, Equatable {
        public var service: String
        public var method: String
        public var count: Int
        public var failed: Int
        public var seconds: Double
    }
    private let entries = Mutex<[String: Entry]>([:])

    public init() {}

    func record(service: String, method: String, seconds: Double, failed: Bool) {
        entries.withLock { e in
            let key = service + "/" + method
            var entry = e[key] ?? Entry(service: service, method: method, count: 0, failed: 0, seconds: 0)
            entry.count += 1
            entry.failed += failed ? 1 : 0
            entry.seconds += seconds
            e[key] = entry
        }
    }

    /// Every method served so far, sorted by service and method.
    public func snapshot() -> [Entry] {
        entries.withLock { Array($0.values) }.sorted { ($0.service, $0.method) < ($1.service, $1.method) }
    }
}

fileprivate extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
