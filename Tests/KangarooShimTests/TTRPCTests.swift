import ContainerdAPI
import Foundation
import Logging
import NIOCore
import SwiftProtobuf
import Synchronization
import Testing
@testable import KangarooShim
import KangarooSystem

@Suite struct TTRPCFrameTests {
    @Test func headerIsTenBigEndianBytes() throws {
        var buffer = ByteBufferAllocator().buffer(capacity: 16)
        TTRPCFrame(streamID: 0x0102_0305, kind: .request, flags: TTRPCFrame.remoteClosed, data: [0xAA, 0xBB, 0xCC]).write(to: &buffer)
        #expect(buffer.readableBytesView.map { $0 } == [0, 0, 0, 3, 1, 2, 3, 5, 1, 1, 0xAA, 0xBB, 0xCC])
    }

    @Test(arguments: [1, 3, 9, 10, 11, 40])
    func framesSurviveAnySplitOfTheStream(step: Int) throws {
        var whole = ByteBufferAllocator().buffer(capacity: 64)
        let frames = [TTRPCFrame(streamID: 1, kind: .request, data: Array("hello".utf8)),
                      TTRPCFrame(streamID: 3, kind: .response, data: []),
                      TTRPCFrame(streamID: 5, kind: .data, flags: TTRPCFrame.noData | TTRPCFrame.remoteClosed, data: [7])]
        for f in frames { f.write(to: &whole) }
        let bytes = Array(whole.readableBytesView)
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        var got: [TTRPCFrame] = []
        var i = 0
        while i < bytes.count {
            buffer.writeBytes(bytes[i..<min(bytes.count, i + step)])
            i += step
            while let f = try TTRPCFrame.read(from: &buffer) { got.append(f) }
        }
        #expect(got == frames)
        #expect(buffer.readableBytes == 0)
    }

    @Test func oversizedFrameIsRefusedFromItsHeader() {
        var buffer = ByteBufferAllocator().buffer(capacity: 16)
        buffer.writeInteger(UInt32(TTRPCFrame.maxDataLength + 1))
        buffer.writeInteger(UInt32(1))
        #expect(throws: ShimError.self) { _ = try TTRPCFrame.read(from: &buffer) }
    }
}

/// A service for the server tests: Echo returns its request, Fail throws
/// the code named in the request, Slow waits.
struct EchoService: TTRPCService {
    var serviceName: String { "kangaroo.test.Echo" }
    func handle(method: String, payload: [UInt8], context: TTRPCRequestContext) async throws -> [UInt8] {
        switch method {
        case "Echo": return payload
        case "Fail": throw ShimError(.notFound, "no such thing: \(String(decoding: payload, as: UTF8.self))")
        case "Slow":
            try await Task.sleep(for: .milliseconds(Int(payload.first ?? 0) * 10))
            return payload
        case "Typed":
            return try await unary(payload, Google_Protobuf_StringValue.self) { request in
                Google_Protobuf_StringValue(request.value.uppercased())
            }
        default: throw ShimError(.unimplemented, "\(method) is not implemented")
        }
    }
}

@Suite struct TTRPCServerTests {
    func withServer(_ body: (TTRPCClient, String) async throws -> Void) async throws {
        let path = "/tmp/kangaroo-test-ttrpc-\(UUID().uuidString.prefix(8)).sock"
        let server = TTRPCServer(path: path, services: [EchoService()], logger: Logger(label: "test"))
        try await server.start()
        let client = try await TTRPCClient.connect(path: path)
        do { try await body(client, path) } catch { await client.close(); await server.close(); throw error }
        await client.close()
        await server.close()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func unaryCallsAndTypedMessages() async throws {
        try await withServer { client, _ in
            let out = try await client.call(service: "kangaroo.test.Echo", method: "Echo", payload: Array("ping".utf8))
            #expect(out == Array("ping".utf8))
            let typed = try await client.call(service: "kangaroo.test.Echo", method: "Typed", Google_Protobuf_StringValue("kangaroo"),
                                              returning: Google_Protobuf_StringValue.self)
            #expect(typed.value == "KANGAROO")
        }
    }

    @Test func errorsCarryTheirCodes() async throws {
        try await withServer { client, _ in
            await #expect(throws: ShimError.self) { _ = try await client.call(service: "kangaroo.test.Echo", method: "Fail", payload: []) }
            do { _ = try await client.call(service: "kangaroo.test.Echo", method: "Fail", payload: Array("x".utf8)) } catch let e as ShimError {
                #expect(e.code == .notFound)
                #expect(e.message.contains("no such thing: x"))
            }
            do { _ = try await client.call(service: "kangaroo.test.Echo", method: "Nope", payload: []) } catch let e as ShimError {
                #expect(e.code == .unimplemented)
            }
            do { _ = try await client.call(service: "kangaroo.test.Other", method: "Echo", payload: []) } catch let e as ShimError {
                #expect(e.code == .unimplemented)
                #expect(e.message.contains("kangaroo.test.Other"))
            }
            // A malformed typed request is InvalidArgument, not a crash.
            do { _ = try await client.call(service: "kangaroo.test.Echo", method: "Typed", payload: [0xFF, 0xFF]) } catch let e as ShimError {
                #expect(e.code == .invalidArgument)
            }
        }
    }

    /// Many calls in flight on one connection: each answer reaches its
    /// caller, in whatever order the server finishes them.
    @Test func concurrentCallsOnOneConnection() async throws {
        try await withServer { client, _ in
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<64 {
                    group.addTask {
                        let payload: [UInt8] = [UInt8(i % 7), UInt8(i)]
                        return try await client.call(service: "kangaroo.test.Echo", method: "Slow", payload: payload) == payload
                    }
                }
                var ok = 0
                for try await r in group where r { ok += 1 }
                #expect(ok == 64)
            }
        }
    }

    @Test func aSlowAnswerTimesOut() async throws {
        try await withServer { client, _ in
            do {
                _ = try await client.call(service: "kangaroo.test.Echo", method: "Slow", payload: [100], timeout: .milliseconds(100))
                Issue.record("no timeout")
            } catch let e as ShimError {
                #expect(e.code == .deadlineExceeded)
            }
            // The connection still serves later calls.
            #expect(try await client.call(service: "kangaroo.test.Echo", method: "Echo", payload: [1]) == [1])
        }
    }
}

/// Counts the requests it answers (Echo).
final class CountingService: TTRPCService, Sendable {
    var serviceName: String { "kangaroo.test.Echo" }
    let calls = Mutex(0)
    func handle(method: String, payload: [UInt8], context: TTRPCRequestContext) async throws -> [UInt8] {
        calls.withLock { $0 += 1 }
        return payload
    }
}

@Suite struct TTRPCSupervisedServerTests {
    func request(_ stream: UInt32, _ text: String) throws -> (frame: [UInt8], data: [UInt8]) {
        var r = Ttrpc_Request()
        r.service = "kangaroo.test.Echo"
        r.method = "Echo"
        r.payload = Data(text.utf8)
        let data: [UInt8] = try r.serializedBytes()
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        TTRPCFrame(streamID: stream, kind: .request, data: data).write(to: &buffer)
        return (Array(buffer.readableBytesView), data)
    }

    /// A daemon killed after journaling a request and before consuming it
    /// from the socket: the next one answers it once (from the journal),
    /// skips its copy in the socket, and serves what follows.
    @Test func aJournaledRequestStillInTheSocketIsAnsweredOnce() async throws {
        let dir = "/tmp/kangaroo-test-ttrpc-journal-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let (client, served) = (pair[0], pair[1])
        defer { close(client) }
        let journaled = try request(5, "journaled"), fresh = try request(7, "fresh")
        try Data(journaled.data).write(to: URL(fileURLWithPath: dir + "/1-1.5"))
        _ = (journaled.frame + fresh.frame).withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
        let service = CountingService()
        let server = TTRPCServer(path: dir + "/unused.sock", services: [service], logger: Logger(label: "test"))
        let listener = try UnixSocket.listen(dir + "/listen.sock")
        defer { close(listener) }
        let closed = Mutex<[String]>([])
        try await server.serve(listening: listener, connections: [("1-1", served)], supervision: .init(
            accepted: { _, _ in }, closed: { id in closed.withLock { $0.append(id) } }, journal: dir, generation: 2))
        // Answers until both came (a loaded machine may take seconds), then
        // until none comes for half a second (a duplicate would).
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        var answers: [UInt32: String] = [:]
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(60)
        while true {
            var p = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, answers.count < 2 && Date() < deadline ? 1000 : 500) > 0 else {
                if answers.count < 2 && Date() < deadline { continue }
                break
            }
            let n = chunk.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            buffer.writeBytes(chunk[0..<n])
            while let frame = try TTRPCFrame.read(from: &buffer) {
                let response = try Ttrpc_Response(serializedBytes: frame.data)
                #expect(answers[frame.streamID] == nil, "stream \(frame.streamID) answered twice")
                answers[frame.streamID] = String(decoding: response.payload, as: UTF8.self)
            }
        }
        #expect(answers == [5: "journaled", 7: "fresh"])
        #expect(service.calls.withLock { $0 } == 2)
        // A journal file goes just after its answer is written.
        var left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("1-1.") }
        for _ in 0..<100 where !left.isEmpty {
            try await Task.sleep(for: .milliseconds(50))
            left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("1-1.") }
        }
        #expect(left.isEmpty, "journal files left: \(left)")
        // The peer goes: the connection is closed here and reported.
        shutdown(client, Int32(SHUT_RDWR))
        for _ in 0..<50 where closed.withLock({ $0 }).isEmpty { try await Task.sleep(for: .milliseconds(20)) }
        #expect(closed.withLock { $0 } == ["1-1"])
        await server.close()
    }
}
