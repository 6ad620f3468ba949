import ContainerdAPI
import Foundation
import KangarooSystem
import KangarooTestSupport
import Logging
import SwiftProtobuf
import Testing
@testable import KangarooShim

/// Task events reach a real containerd: published over its ttrpc socket,
/// they come out of `ctr events` with their topic, namespace and fields.
@Suite(.serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd")))
struct EventPublisherTests {
    @Test func containerdReceivesTaskEventsInOrder() async throws {
        let containerd = try TestContainerd()
        let events = try TestContainerd.EventLog(containerd)
        defer { events.stop() }

        let publisher = EventPublisher(address: "unix://" + containerd.ttrpcSocket, logger: Logger(label: "test"))
        var start = Containerd_Events_TaskStart()
        start.containerID = "kangaroo-ev"
        start.pid = 4242
        var exit = Containerd_Events_TaskExit()
        exit.containerID = "kangaroo-ev"
        exit.id = "kangaroo-ev"
        exit.pid = 4242
        exit.exitStatus = 7
        exit.exitedAt = Google_Protobuf_Timestamp(date: Date())
        try await publisher.publish(namespace: "kangaroo-test", topic: .start, event: start)
        try await publisher.publish(namespace: "kangaroo-test", topic: .exit, event: exit)
        await publisher.close()

        var text = ""
        for _ in 0..<50 {
            text = events.text
            if text.contains("/tasks/exit") { break }
            usleep(100_000)
        }
        let lines = text.split(separator: "\n").filter { $0.contains("kangaroo-ev") }
        #expect(lines.count == 2, "\(text)")
        #expect(lines.first?.contains("/tasks/start") == true && lines.first?.contains("kangaroo-test") == true, "\(text)")
        #expect(lines.last?.contains("/tasks/exit") == true, "\(text)")
        // ctr decodes the Any by its type URL: the fields arrive intact.
        #expect(lines.last?.contains("\"exit_status\":7") == true || lines.last?.contains("\"exit_status\": 7") == true, "\(text)")
        #expect(lines.last?.contains("4242") == true, "\(text)")
    }

    /// A daemon that dies with events queued: they are in its journal, and
    /// the next daemon's publisher sends them first, in their order.
    @Test func eventsLeftInTheJournalAreSentFirstInOrder() async throws {
        let containerd = try TestContainerd()
        let events = try TestContainerd.EventLog(containerd)
        defer { events.stop() }
        let dir = try TempDir("event-journal")
        let journal = dir.sub("events")
        // The first publisher's containerd never answers (a socket nobody
        // accepts on): its events stay queued, as in a daemon about to die.
        let silent = try UnixSocket.listen(dir.sub("silent.sock"))
        defer { close(silent) }
        let stuck = EventPublisher(address: "unix://" + dir.sub("silent.sock"), logger: Logger(label: "test"), attempts: 1, journal: journal)
        func exit(_ id: String, _ status: UInt32) -> Containerd_Events_TaskExit {
            var e = Containerd_Events_TaskExit()
            e.containerID = id
            e.id = id
            e.pid = 4343
            e.exitStatus = status
            return e
        }
        stuck.post(namespace: "kangaroo-test", topic: .exit, event: exit("ev-j1", 11))
        stuck.post(namespace: "kangaroo-test", topic: .exit, event: exit("ev-j2", 12))
        let left = try FileManager.default.contentsOfDirectory(atPath: journal).sorted()
        #expect(left.count == 2 && left.allSatisfy { $0.hasSuffix(".event") }, "\(left)")
        // A torn write of a crash is dropped, not sent.
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: journal + "/0000000000000009.event.tmp"))

        let next = EventPublisher(address: "unix://" + containerd.ttrpcSocket, logger: Logger(label: "test"), journal: journal)
        next.post(namespace: "kangaroo-test", topic: .exit, event: exit("ev-j3", 13))
        var text = ""
        for _ in 0..<100 {
            text = events.text
            if text.contains("ev-j3") { break }
            usleep(100_000)
        }
        let order = text.split(separator: "\n").compactMap { line in ["ev-j1", "ev-j2", "ev-j3"].first { line.contains($0) } }
        #expect(order == ["ev-j1", "ev-j2", "ev-j3"], "\(text)")
        var remaining: [String] = []
        for _ in 0..<50 {
            remaining = (try? FileManager.default.contentsOfDirectory(atPath: journal)) ?? []
            if remaining.isEmpty { break }
            usleep(100_000)
        }
        #expect(remaining.isEmpty, "journal still holds \(remaining)")
        await next.close()
        _ = stuck
    }

    @Test func anUnreachableContainerdFailsClearly() async throws {
        let publisher = EventPublisher(address: "unix:///tmp/kangaroo-no-such-containerd.sock", logger: Logger(label: "test"), attempts: 2)
        do {
            try await publisher.publish(namespace: "n", topic: .exit, event: Containerd_Events_TaskExit())
            Issue.record("published to nowhere")
        } catch let e as ShimError {
            #expect(e.code == .unavailable)
            #expect(e.description.contains("/tasks/exit"))
        }
    }
}
