import ContainerdAPI
import Foundation
import KangarooSystem
import KangarooTestSupport
import Testing

/// containerd-shim-kangaroo-v2, the lean binary containerd runs per task:
/// `start` hands over the running daemon's address, `delete` answers a
/// DeleteResponse that containerd's own decoder (here SwiftProtobuf's, of
/// the same task.proto) reads.
@Suite(.serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct ShimBinaryTests {
    var shim: String { (TestEnv.kangaroo as NSString).deletingLastPathComponent + "/containerd-shim-kangaroo-v2" }

    func runShim(_ args: [String], cwd: String, env: [String: String]) throws -> (status: Int32, stdout: Data, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: shim)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: cwd)
        p.environment = ProcessInfo.processInfo.environment.merging(env) { _, b in b }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, stdout, stderr)
    }

    @Test("delete of a task that is gone: exit status 137 and the time now, in the wire format containerd decodes")
    func deleteAnswersADeleteResponse() throws {
        let tmp = try TempDir("shimbin")
        let before = Date()
        let r = try runShim(["-namespace", "k8s.io", "-address", "/nowhere", "-publish-binary", "/nowhere", "-id", "gone", "-bundle", tmp.path, "delete"],
                            cwd: tmp.path, env: ["KANGAROO_NODE_STATE": tmp.sub("state")])
        #expect(r.status == 0, "\(r.stderr)")
        let response = try Containerd_Task_V2_DeleteResponse(serializedBytes: [UInt8](r.stdout))
        #expect(response.exitStatus == 137)
        #expect(response.pid == 0)
        let at = response.exitedAt.date
        #expect(at >= before.addingTimeInterval(-1) && at <= Date().addingTimeInterval(1), "exited_at \(at)")
        #expect(response.exitedAt.nanos != 0 || response.exitedAt.seconds != 0)
    }

    @Test("start with the daemon listening: the address on stdout and in the bundle's address file; bad actions fail with a message")
    func startHandsOverTheAddress() throws {
        let tmp = try TempDir("shimbin")
        let socket = tmp.sub("shim.sock")
        let fd = try UnixSocket.listen(socket)
        defer { close(fd) }
        let env = ["KANGAROO_SHIM_SOCKET": socket, "KANGAROO_NODE_STATE": tmp.sub("state")]
        let r = try runShim(["-namespace", "k8s.io", "-id", "abc", "start"], cwd: tmp.path, env: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(String(decoding: r.stdout, as: UTF8.self) == "unix://\(socket)\n")
        #expect(try FileSystem.readString(tmp.sub("address")) == "unix://\(socket)")
        let bad = try runShim(["-id", "abc", "frobnicate"], cwd: tmp.path, env: env)
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("unknown action \"frobnicate\""), "\(bad.stderr)")
        let noID = try runShim(["delete"], cwd: tmp.path, env: env)
        #expect(noID.status == 1 && noID.stderr.contains("-id is required"), "\(noID.stderr)")
    }
}
