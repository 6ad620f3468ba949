import ContainerdAPI
import Foundation
import KangarooSystem
import Logging
import SwiftProtobuf
import Synchronization

/// Publishes task events to containerd (`TTRPC_ADDRESS`, the
/// containerd.services.events.ttrpc.v1.Events service), in the order they
/// are published, with the type URLs containerd's CRI plugin decodes
/// ("containerd.events.TaskExit", ...). One connection, reopened after a
/// failure; an event that cannot be delivered after `attempts` tries is
/// logged and dropped (containerd also learns exits from Wait and Delete).
///
/// With a journal directory, every posted event is a file there until
/// containerd has it (or it is dropped), and a new publisher on the same
/// directory (the node daemon after a crash) sends the ones left first, in
/// their order: an exit recorded by a daemon that died before sending it
/// still reaches containerd.
public actor EventPublisher {
    public let address: String
    let logger: Logger
    let attempts: Int
    let journal: String?
    private var client: TTRPCClient?

    private nonisolated let queue: AsyncStream<Queued>.Continuation
    private let queued: AsyncStream<Queued>
    private var draining = false
    private nonisolated let sequence: Mutex<UInt64>

    struct Queued: Sendable {
        var topic: String
        var request: Containerd_Services_Events_Ttrpc_V1_ForwardRequest
        /// Its journal file, removed once it is sent or dropped.
        var file: String?
    }

    public init(address: String, logger: Logger, attempts: Int = 3, journal: String? = nil) {
        self.address = address
        self.logger = logger
        self.attempts = attempts
        self.journal = journal
        (queued, queue) = AsyncStream.makeStream(of: Queued.self)
        var next: UInt64 = 1
        if let journal {
            do { try FileSystem.makeDirectories(journal, mode: 0o700) } catch {
                logger.warning("cannot create the event journal; events are not kept across a crash", metadata: ["path": "\(journal)", "error": "\(error)"])
            }
            // Names are zero-padded sequence numbers: sorted is posted order.
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: journal)) ?? []).sorted()
            for name in names {
                let path = journal + "/" + name
                guard name.hasSuffix(".event"), let n = UInt64(name.dropLast(".event".count)),
                      let data = FileManager.default.contents(atPath: path),
                      let request = try? Containerd_Services_Events_Ttrpc_V1_ForwardRequest(serializedBytes: data) else {
                    unlink(path)  // a partial .tmp of a crash, or unreadable
                    continue
                }
                next = max(next, n + 1)
                queue.yield(Queued(topic: request.envelope.topic, request: request, file: path))
            }
            if !names.isEmpty {
                logger.info("sending the events a previous daemon had not sent", metadata: ["events": "\(names.count)"])
            }
        }
        sequence = Mutex(next)
        if journal != nil { Task(executorPreference: TTRPCServerHandler.executor) { await self.drain() } }
    }

    /// Queues an event; queued events are published one after the other, in
    /// the order they were posted, without making the poster wait. With a
    /// journal, the event is in it when this returns.
    public nonisolated func post(namespace: String, topic: Topic, event: some SwiftProtobuf.Message & Sendable) {
        var request = Containerd_Services_Events_Ttrpc_V1_ForwardRequest()
        do { request.envelope = try Self.envelope(namespace: namespace, topic: topic, event: event) } catch {
            logger.warning("cannot encode \(topic.rawValue)", metadata: ["error": "\(error)"])
            return
        }
        // The sequence lock also orders the journal files with the queue.
        sequence.withLock { n in
            var file: String?
            if let journal, let bytes: [UInt8] = try? request.serializedBytes() {
                let path = journal + "/" + String(format: "%016llu.event", n)
                if (try? FileSystem.replace(path, bytes: bytes)) != nil { file = path }
            }
            n += 1
            queue.yield(Queued(topic: topic.rawValue, request: request, file: file))
        }
        Task(executorPreference: TTRPCServerHandler.executor) { await self.drain() }
    }

    private func drain() async {
        guard !draining else { return }
        draining = true
        for await item in queued {
            try? await forward(item.request, topic: item.topic)
            if let file = item.file { unlink(file) }
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
        try await forward(request, topic: topic.rawValue)
    }

    func forward(_ request: Containerd_Services_Events_Ttrpc_V1_ForwardRequest, topic: String) async throws {
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
        logger.warning("cannot publish \(topic) to containerd", metadata: ["address": "\(address)", "error": "\(last.map { "\($0)" } ?? "")"])
        throw ShimError(.unavailable, "publish \(topic) to \(address)", underlying: last)
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
