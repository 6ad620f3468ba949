import ContainerdAPI
import Foundation
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
    public init(metadata: [(key: String, value: String)] = []) { self.metadata = metadata }
    public func value(_ key: String) -> String? { metadata.first { $0.key == key }?.value }
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
    let services: [String: any TTRPCService]
    let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)

    public init(path: String, services: [any TTRPCService], logger: Logger) {
        self.path = path
        self.services = Dictionary(services.map { ($0.serviceName, $0) }, uniquingKeysWith: { a, _ in a })
        self.logger = logger
    }

    /// Binds the socket (replacing a stale socket file of a dead server).
    public func start(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        if access(path, F_OK) == 0 { unlink(path) }
        let services = self.services, logger = self.logger
        let bound = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
                    try child.pipeline.syncOperations.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
                    try child.pipeline.syncOperations.addHandler(TTRPCServerHandler(services: services, logger: logger))
                }
            }
            .bind(unixDomainSocketPath: path).get()
        channel.withLock { $0 = bound }
    }

    /// Stops accepting; open connections close as their peers go.
    public func close() async {
        let c = channel.withLock { c in defer { c = nil }; return c }
        try? await c?.close()
        unlink(path)
    }
}

final class TTRPCServerHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = TTRPCFrame
    typealias OutboundOut = TTRPCFrame

    let services: [String: any TTRPCService]
    let logger: Logger

    static let executor = DispatchTaskExecutor(label: "kangaroo.ttrpc")

    init(services: [String: any TTRPCService], logger: Logger) {
        self.services = services
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        // Streams are not used by containerd's shim or event APIs.
        guard frame.kind == TTRPCFrame.Kind.request.rawValue else { return }
        let channel = context.channel
        let services = self.services, logger = self.logger
        Task(executorPreference: Self.executor) {
            let response = await Self.respond(to: frame.data, services: services, logger: logger)
            let bytes: [UInt8] = (try? response.serializedBytes()) ?? []
            channel.writeAndFlush(TTRPCFrame(streamID: frame.streamID, kind: .response, data: bytes), promise: nil)
        }
    }

    static func respond(to data: [UInt8], services: [String: any TTRPCService], logger: Logger) async -> Ttrpc_Response {
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
        do {
            let context = TTRPCRequestContext(metadata: request.metadata.map { ($0.key, $0.value) })
            response.payload = Data(try await service.handle(method: request.method, payload: [UInt8](request.payload), context: context))
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

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("ttrpc connection closed", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}
