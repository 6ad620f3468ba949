import ContainerdAPI
import Foundation
import Logging
import SwiftProtobuf

/// Publishes task events to containerd (`TTRPC_ADDRESS`, the
/// containerd.services.events.ttrpc.v1.Events service), in the order they
/// are published, with the type URLs containerd's CRI plugin decodes
/// ("containerd.events.TaskExit", ...). One connection, reopened after a
/// failure; an event that cannot be delivered after `attempts` tries is
/// logged and dropped (containerd also learns exits from Wait and Delete).
public actor EventPublisher {
    public let address: String
    let logger: Logger
    let attempts: Int
    private var client: TTRPCClient?

    private nonisolated let queue: AsyncStream<Queued>.Continuation
    private let queued: AsyncStream<Queued>
    private var draining = false

    struct Queued: Sendable {
        var namespace: String
        var topic: Topic
        var event: any SwiftProtobuf.Message & Sendable
    }

    public init(address: String, logger: Logger, attempts: Int = 3) {
        self.address = address
        self.logger = logger
        self.attempts = attempts
        (queued, queue) = AsyncStream.makeStream(of: Queued.self)
    }

    /// Queues an event; queued events are published one after the other, in
    /// the order they were posted, without making the poster wait.
    public nonisolated func post(namespace: String, topic: Topic, event: some SwiftProtobuf.Message & Sendable) {
        queue.yield(Queued(namespace: namespace, topic: topic, event: event))
        Task(executorPreference: TTRPCServerHandler.executor) { await self.drain() }
    }

    private func drain() async {
        guard !draining else { return }
        draining = true
        for await item in queued {
            try? await publish(namespace: item.namespace, topic: item.topic, event: item.event)
        }
    }

    /// Topics of containerd's runtime events (runtime/events.go).
    public enum Topic: String, Sendable {
        case create = "/tasks/create", start = "/tasks/start", exit = "/tasks/exit", delete = "/tasks/delete"
        case execAdded = "/tasks/exec-added", execStarted = "/tasks/exec-started", oom = "/tasks/oom"
        case paused = "/tasks/paused", resumed = "/tasks/resumed"
    }

    /// The envelope Forward carries: `event` packed as an Any named by its
    /// protobuf full name (containerd's typeurl for its own event types).
    public static func envelope(namespace: String, topic: Topic, event: some SwiftProtobuf.Message,
                                at date: Date = Date()) throws -> Containerd_Services_Events_Ttrpc_V1_Envelope {
        var any = Google_Protobuf_Any()
        any.typeURL = type(of: event).protoMessageName
        any.value = try event.serializedData()
        var envelope = Containerd_Services_Events_Ttrpc_V1_Envelope()
        envelope.timestamp = Google_Protobuf_Timestamp(date: date)
        envelope.namespace = namespace
        envelope.topic = topic.rawValue
        envelope.event = any
        return envelope
    }

    public func publish(namespace: String, topic: Topic, event: some SwiftProtobuf.Message) async throws {
        var request = Containerd_Services_Events_Ttrpc_V1_ForwardRequest()
        request.envelope = try Self.envelope(namespace: namespace, topic: topic, event: event)
        var last: (any Error)?
        for attempt in 0..<attempts {
            do {
                let c: TTRPCClient
                if let existing = client { c = existing } else {
                    c = try await TTRPCClient.connect(path: Self.socketPath(address))
                    client = c
                }
                _ = try await c.call(service: "containerd.services.events.ttrpc.v1.Events", method: "Forward",
                                     request, returning: Google_Protobuf_Empty.self, timeout: .seconds(10))
                return
            } catch {
                last = error
                await client?.close()
                client = nil
                if attempt + 1 < attempts { try? await Task.sleep(for: .milliseconds(50 << attempt)) }
            }
        }
        logger.warning("cannot publish \(topic.rawValue) to containerd", metadata: ["address": "\(address)", "error": "\(last.map { "\($0)" } ?? "")"])
        throw ShimError(.unavailable, "publish \(topic.rawValue) to \(address)", underlying: last)
    }

    public func close() async {
        await client?.close()
        client = nil
    }

    /// "unix:///run/containerd/containerd.sock.ttrpc" or a plain path.
    static func socketPath(_ address: String) -> String {
        address.hasPrefix("unix://") ? String(address.dropFirst("unix://".count)) : address
    }
}
