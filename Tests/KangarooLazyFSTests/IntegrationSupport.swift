import Foundation
import KangarooTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

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
        try run(TestEnv.kangaroo, args + ["--store", sub("store")], env: ["KANGAROO_RUN_DIR": runDir],
                check: check, sourceLocation: sourceLocation)
    }

    deinit {
        unmountAll(below: path)
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

func mountType(_ path: String) -> String? {
    guard let text = procText("/proc/self/mounts") else { return nil }
    var found: String?
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        if f.count > 2, f[1] == path { found = String(f[2]) }
    }
    return found
}

/// A `kangaroo` server (peer, tracker) on 127.0.0.1 port 0: the port is
/// read from the line starting with `marker` it prints. Killed at deinit.
final class ListeningProcess: @unchecked Sendable {
    let process = Process()
    let port: Int
    let log: String

    init(_ arguments: [String], marker: String, log: String) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.executableURL = URL(fileURLWithPath: TestEnv.kangaroo)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        var found: Int?
        for _ in 0..<200 {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix(marker) }),
               let port = line.split(separator: ":").last.flatMap({ Int($0) }) {
                found = port
                break
            }
            usleep(25_000)
        }
        guard let found else {
            process.terminate()
            throw NSError(domain: "ListeningProcess", code: 1, userInfo: [NSLocalizedDescriptionKey:
                "kangaroo \(arguments.first ?? "") did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")"])
        }
        port = found
    }

    var address: String { "127.0.0.1:\(port)" }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}
