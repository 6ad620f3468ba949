import ContainerdAPI
import Foundation
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
