import ContainerdAPI
import Foundation
import NIOCore
import NIOPosix
import SwiftProtobuf
import Synchronization

/// A ttrpc client on a unix socket: unary calls, each on its own odd stream
/// id, any number in flight.
public final class TTRPCClient: Sendable {
    let channel: any Channel
    let handler: TTRPCClientHandler

    init(channel: any Channel, handler: TTRPCClientHandler) {
        self.channel = channel
        self.handler = handler
    }

    public static func connect(path: String, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> TTRPCClient {
        let handler = TTRPCClientHandler()
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(TTRPCFrameDecoder()))
                        try ch.pipeline.syncOperations.addHandler(MessageToByteHandler(TTRPCFrameEncoder()))
                        try ch.pipeline.syncOperations.addHandler(handler)
                    }
                }
                .connect(unixDomainSocketPath: path).get()
        } catch {
            throw ShimError(.unavailable, "cannot connect to ttrpc socket \(path)", underlying: error)
        }
        return TTRPCClient(channel: channel, handler: handler)
    }

    /// Calls `service`/`method` with a serialized request; returns the
    /// serialized response, or throws the server's status as a ShimError.
    public func call(service: String, method: String, payload: [UInt8], timeout: Duration = .seconds(30)) async throws -> [UInt8] {
        var request = Ttrpc_Request()
        request.service = service
        request.method = method
        request.payload = Data(payload)
        request.timeoutNano = Int64(timeout.components.seconds) * 1_000_000_000
        let bytes: [UInt8] = try request.serializedBytes()
        let response = try await handler.send(bytes, on: channel, timeout: timeout, what: "\(service)/\(method)")
        if response.hasStatus, response.status.code != 0 {
            throw ShimError(ShimError.Code(grpcCode: response.status.code), response.status.message)
        }
        return [UInt8](response.payload)
    }

    /// A typed unary call.
    public func call<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        service: String, method: String, _ request: Request, returning: Response.Type, timeout: Duration = .seconds(30)
    ) async throws -> Response {
        let out = try await call(service: service, method: method, payload: try request.serializedBytes(), timeout: timeout)
        return try Response(serializedBytes: out)
    }

    public func close() async {
        try? await channel.close()
    }
}

final class TTRPCClientHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = TTRPCFrame
    typealias OutboundOut = TTRPCFrame

    private struct State {
        var nextStream: UInt32 = 1
        var pending: [UInt32: CheckedContinuation<Ttrpc_Response, any Error>] = [:]
        var closed = false
    }
    private let state = Mutex(State())

    func send(_ bytes: [UInt8], on channel: any Channel, timeout: Duration, what: String) async throws -> Ttrpc_Response {
        let response = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Ttrpc_Response, any Error>) in
            let id = state.withLock { s -> UInt32? in
                guard !s.closed else { return nil }
                let id = s.nextStream
                s.nextStream &+= 2
                s.pending[id] = c
                return id
            }
            guard let streamID = id else { c.resume(throwing: ShimError(.unavailable, "\(what): the ttrpc connection is closed")); return }
            channel.writeAndFlush(TTRPCFrame(streamID: streamID, kind: .request, data: bytes)).whenFailure { error in
                self.finish(streamID, .failure(ShimError(.unavailable, "\(what): send failed", underlying: error)))
            }
            channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)) {
                self.finish(streamID, .failure(ShimError(.deadlineExceeded, "\(what): no answer within \(timeout)")))
            }
        }
        return response
    }

    private func finish(_ stream: UInt32, _ result: Result<Ttrpc_Response, any Error>) {
        let c = state.withLock { $0.pending.removeValue(forKey: stream) }
        c?.resume(with: result)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard frame.kind == TTRPCFrame.Kind.response.rawValue else { return }
        do {
            finish(frame.streamID, .success(try Ttrpc_Response(serializedBytes: frame.data)))
        } catch {
            finish(frame.streamID, .failure(ShimError(.protocolError, "malformed ttrpc response", underlying: error)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let all = state.withLock { s in
            s.closed = true
            defer { s.pending = [:] }
            return s.pending
        }
        for (_, c) in all { c.resume(throwing: ShimError(.unavailable, "the ttrpc connection closed")) }
        context.fireChannelInactive()
    }
}
