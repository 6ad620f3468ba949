import ContainerdAPI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import SwiftProtobuf

typealias API = Containerd_Services_Snapshots_V1_Snapshots

/// containerd.services.snapshots.v1.Snapshots over gRPC: what containerd's
/// proxy snapshotter (proxy_plugins type "snapshot") calls.
public struct SnapshotService: Containerd_Services_Snapshots_V1_Snapshots.SimpleServiceProtocol {
    public let store: SnapshotStore
    let logger: Logger

    public init(store: SnapshotStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func prepare(request: Containerd_Services_Snapshots_V1_PrepareSnapshotRequest, context: ServerContext) async throws
        -> Containerd_Services_Snapshots_V1_PrepareSnapshotResponse {
        try await call("Prepare", request.key) {
            logger.debug("prepare", metadata: ["key": "\(request.key)", "parent": "\(request.parent)", "labels": "\(request.labels)"])
            let mounts = try await store.prepare(key: request.key, parent: request.parent, labels: request.labels, readonly: false)
            return .with { $0.mounts = mounts.map(Self.mount) }
        }
    }

    public func view(request: Containerd_Services_Snapshots_V1_ViewSnapshotRequest, context: ServerContext) async throws
        -> Containerd_Services_Snapshots_V1_ViewSnapshotResponse {
        try await call("View", request.key) {
            let mounts = try await store.prepare(key: request.key, parent: request.parent, labels: request.labels, readonly: true)
            return .with { $0.mounts = mounts.map(Self.mount) }
        }
    }

    public func mounts(request: Containerd_Services_Snapshots_V1_MountsRequest, context: ServerContext) async throws
        -> Containerd_Services_Snapshots_V1_MountsResponse {
        try await call("Mounts", request.key) {
            let mounts = try await store.mounts(key: request.key)
            return .with { $0.mounts = mounts.map(Self.mount) }
        }
    }

    public func commit(request: Containerd_Services_Snapshots_V1_CommitSnapshotRequest, context: ServerContext) async throws
        -> Google_Protobuf_Empty {
        try await call("Commit", request.key) {
            try await store.commit(name: request.name, key: request.key, labels: request.labels)
            return Google_Protobuf_Empty()
        }
    }

    public func remove(request: Containerd_Services_Snapshots_V1_RemoveSnapshotRequest, context: ServerContext) async throws
        -> Google_Protobuf_Empty {
        try await call("Remove", request.key) {
            logger.debug("remove", metadata: ["key": "\(request.key)"])
            try await store.remove(key: request.key)
            return Google_Protobuf_Empty()
        }
    }

    public func stat(request: Containerd_Services_Snapshots_V1_StatSnapshotRequest, context: ServerContext) async throws
        -> Containerd_Services_Snapshots_V1_StatSnapshotResponse {
        try await call("Stat", request.key) {
            let s = try await store.stat(key: request.key)
            return .with { $0.info = Self.info(s) }
        }
    }

    public func update(request: Containerd_Services_Snapshots_V1_UpdateSnapshotRequest, context: ServerContext) async throws
        -> Containerd_Services_Snapshots_V1_UpdateSnapshotResponse {
        try await call("Update", request.info.name) {
            let s = try await store.update(name: request.info.name, labels: request.info.labels, paths: request.updateMask.paths)
            return .with { $0.info = Self.info(s) }
        }
    }

    public func list(request: Containerd_Services_Snapshots_V1_ListSnapshotsRequest,
                     response: RPCWriter<Containerd_Services_Snapshots_V1_ListSnapshotsResponse>,
                     context: ServerContext) async throws {
        let filter: SnapshotFilter
        do { filter = try SnapshotFilter(request.filters) } catch { throw Self.rpcError(error) }
        let all = await store.list(filter: filter)
        // containerd's own service sends batches of 100.
        var start = 0
        repeat {
            let batch = all[start..<min(all.count, start + 100)]
            try await response.write(.with { $0.info = batch.map(Self.info) })
            start += 100
        } while start < all.count
    }

    public func usage(request: Containerd_Services_Snapshots_V1_UsageRequest, context: ServerContext) async throws
        -> Containerd_Services_Snapshots_V1_UsageResponse {
        try await call("Usage", request.key) {
            let u = try await store.usage(key: request.key)
            return .with {
                $0.size = u.size
                $0.inodes = u.inodes
            }
        }
    }

    public func cleanup(request: Containerd_Services_Snapshots_V1_CleanupRequest, context: ServerContext) async throws
        -> Google_Protobuf_Empty {
        await store.cleanup()
        return Google_Protobuf_Empty()
    }

    // MARK: - Conversions

    private func call<T>(_ method: String, _ key: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as SnapshotterError {
            if error.code != .alreadyExists && error.code != .notFound {
                logger.warning("snapshot call failed", metadata: ["method": "\(method)", "key": "\(key)", "error": "\(error)"])
            }
            throw Self.rpcError(error)
        } catch {
            logger.error("snapshot call failed", metadata: ["method": "\(method)", "key": "\(key)", "error": "\(error)"])
            throw RPCError(code: .internalError, message: "\(method) \(key): \(error)")
        }
    }

    static func rpcError(_ error: SnapshotterError) -> RPCError {
        let code: RPCError.Code = switch error.code {
        case .invalidArgument: .invalidArgument
        case .notFound: .notFound
        case .alreadyExists: .alreadyExists
        case .failedPrecondition: .failedPrecondition
        case .unavailable: .unavailable
        case .internalError: .internalError
        }
        return RPCError(code: code, message: error.description)
    }

    static func mount(_ m: MountSpec) -> Containerd_Types_Mount {
        .with {
            $0.type = m.type
            $0.source = m.source
            $0.options = m.options
        }
    }

    static func info(_ s: Snapshot) -> Containerd_Services_Snapshots_V1_Info {
        .with {
            $0.name = s.name
            $0.parent = s.parent ?? ""
            $0.kind = switch s.kind {
            case .view: .view
            case .active: .active
            case .committed: .committed
            }
            $0.createdAt = Google_Protobuf_Timestamp(date: s.created)
            $0.updatedAt = Google_Protobuf_Timestamp(date: s.updated)
            $0.labels = s.labels
        }
    }
}

/// The snapshotter's gRPC server on a unix socket.
public final class SnapshotServer: Sendable {
    public let path: String
    private let server: GRPCServer<HTTP2ServerTransport.Posix>

    public init(path: String, service: SnapshotService) {
        self.path = path
        // containerd sends a burst's Prepare calls on one connection at
        // once. Without an explicit limit NIO's HTTP/2 state machine keeps
        // its own default of 100 concurrent streams while advertising none,
        // and a client that opens the 101st gets the connection closed
        // ("transport is closing" for every call on it).
        let config = HTTP2ServerTransport.Posix.Config.defaults { $0.http2.maxConcurrentStreams = 16384 }
        server = GRPCServer(transport: .http2NIOPosix(address: .unixDomainSocket(path: path), transportSecurity: .plaintext, config: config),
                            services: [service])
    }

    /// Serves until `stop`; returns once the socket accepts calls via `ready`.
    public func serve() async throws {
        unlink(path)
        try await server.serve()
    }

    /// Waits until the socket is bound.
    public func listening() async throws {
        _ = try await server.listeningAddress
    }

    /// Stops accepting calls; running calls finish.
    public func stop() {
        server.beginGracefulShutdown()
    }
}
