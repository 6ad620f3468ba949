import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Environment of the integration tests (root, KANGAROO_INTEGRATION=1).
enum IntegrationEnv {
    static let env = ProcessInfo.processInfo.environment
    static let enabled = env["KANGAROO_INTEGRATION"] == "1" && getuid() == 0
    static var images: String { env["KANGAROO_TESTIMAGES"] ?? "/var/cache/kangaroo/testimages" }
    static var repoRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }
    static var kangaroo: String { env["KANGAROO_BIN"] ?? repoRoot + "/.build/debug/kangaroo" }
    static var treediff: String { repoRoot + "/scripts/treediff.py" }
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var output: String { stdout + stderr }
}

/// Runs a program to completion, capturing its output through files.
@discardableResult
func run(_ program: String, _ args: [String], env extra: [String: String] = [:], check: Bool = false,
         sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
    let tmp = "/tmp/kangaroo-test-out-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: tmp) }
    let outPath = tmp + "/out", errPath = tmp + "/err"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program.hasPrefix("/") ? program : "/usr/bin/env")
    p.arguments = program.hasPrefix("/") ? args : [program] + args
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in extra { environment[k] = v }
    p.environment = environment
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    p.standardInput = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    let result = CommandResult(status: p.terminationStatus,
                               stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                               stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    if check && result.status != 0 {
        Issue.record("\(program) \(args.joined(separator: " ")) exited \(result.status): \(result.output.suffix(3000))",
                     sourceLocation: sourceLocation)
    }
    return result
}

/// A temporary directory under /tmp/kangaroo-test-*: at deinit, lazy
/// mounts below it are unmounted (their daemons stop), then it is removed.
final class MountTemp: @unchecked Sendable {
    let path: String
    let runDir: String
    init(_ label: String) throws {
        path = "/tmp/kangaroo-test-lazy-\(label)-\(UUID().uuidString.prefix(8))"
        runDir = path + "/run"
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
    }
    func sub(_ name: String) -> String { path + "/" + name }

    /// `kangaroo` with this directory's store and run directory.
    @discardableResult
    func kangaroo(_ args: [String], check: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        try run(IntegrationEnv.kangaroo, args + ["--store", sub("store")], env: ["KANGAROO_RUN_DIR": runDir],
                check: check, sourceLocation: sourceLocation)
    }

    deinit {
        if let mounts = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) {
            let targets = mounts.split(separator: "\n").compactMap { line -> String? in
                let f = line.split(separator: " ")
                guard f.count > 1 else { return nil }
                let target = String(f[1])
                return target.hasPrefix(path + "/") ? target : nil
            }
            for t in targets.sorted(by: { $0.count > $1.count }) { umount2(t, Int32(MNT_DETACH)) }
        }
        // Daemons exit once their mount is gone; kill any that did not.
        if let files = try? FileManager.default.contentsOfDirectory(atPath: runDir) {
            for f in files where f.hasSuffix(".json") && !f.hasSuffix(".stats.json") {
                if let data = FileManager.default.contents(atPath: runDir + "/" + f),
                   let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                   let pid = object["pid"] as? Int, pid > 0 {
                    for _ in 0..<100 where kill(Int32(pid), 0) == 0 { usleep(20_000) }
                    if kill(Int32(pid), 0) == 0 { kill(Int32(pid), SIGKILL) }
                }
            }
        }
        try? FileManager.default.removeItem(atPath: path)
    }
}

func expectSameTree(_ left: String, _ right: String, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let r = try run("python3", [IntegrationEnv.treediff, left, right])
    #expect(r.status == 0, "\(what): trees differ:\n\(r.output.suffix(4000))", sourceLocation: sourceLocation)
    #expect(r.stdout.contains("0 differences"), "\(what): \(r.output.suffix(500))", sourceLocation: sourceLocation)
}

func mountType(_ path: String) -> String? {
    guard let text = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) else { return nil }
    var found: String?
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        if f.count > 2, f[1] == path { found = String(f[2]) }
    }
    return found
}

/// Debian's docker-registry on 127.0.0.1 at a free port (copied from
/// Tests/IntegrationTests/TestRegistry.swift, without auth).
final class TestRegistry {
    let dir: MountTemp
    let port: Int
    let process = Process()
    var host: String { "127.0.0.1:\(port)" }

    init() throws {
        dir = try MountTemp("registry")
        port = try Self.freePort()
        let config = """
        version: 0.1
        log:
          level: error
          accesslog:
            disabled: true
        storage:
          filesystem:
            rootdirectory: \(dir.sub("data"))
        http:
          addr: 127.0.0.1:\(port)
        """
        try config.write(toFile: dir.sub("config.yml"), atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
        process.arguments = ["serve", dir.sub("config.yml")]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<100 {
            let r = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(host)/v2/"])
            if r.stdout == "200" || r.stdout == "401" { return }
            usleep(100_000)
        }
        stop()
        throw NSError(domain: "TestRegistry", code: 1, userInfo: [NSLocalizedDescriptionKey: "docker-registry did not start"])
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGCONT)
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
