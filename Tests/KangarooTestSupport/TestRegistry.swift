import Foundation
import Testing

/// Debian's docker-registry (distribution 2.8) on 127.0.0.1 at a free port,
/// with filesystem storage in a temporary directory and optional htpasswd
/// auth. Stopped (and its storage removed) by `stop()` or at deinit.
public final class TestRegistry: @unchecked Sendable {
    public let dir: TempDir
    public let port: Int
    public let process = Process()
    public var host: String { "127.0.0.1:\(port)" }

    /// With `accessLog`, every request is logged to `log` (`requests(matching:)`).
    /// With `proxyOf` (a registry URL), a pull-through cache of that registry.
    public init(user: String? = nil, password: String? = nil, accessLog: Bool = false, proxyOf: String? = nil) throws {
        dir = try TempDir("registry")
        port = try Self.freePort()
        var auth = ""
        if let user, let password {
            let r = try run("htpasswd", ["-Bbn", user, password], check: true)
            try r.stdout.write(toFile: dir.sub("htpasswd"), atomically: true, encoding: .utf8)
            auth = "auth:\n  htpasswd:\n    realm: kangaroo-test\n    path: \(dir.sub("htpasswd"))\n"
        }
        if let proxyOf { auth += "proxy:\n  remoteurl: \(proxyOf)\n" }
        let config = dockerRegistryConfig(port: port, storage: dir.sub("data"), auth: auth, accessLog: accessLog)
        try config.write(toFile: dir.sub("config.yml"), atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
        process.arguments = ["serve", dir.sub("config.yml")]
        // The access log goes to stdout, errors to stderr: both into `log`.
        let log = try FileHandle(forWritingTo: {
            FileManager.default.createFile(atPath: dir.sub("log"), contents: nil); return URL(fileURLWithPath: dir.sub("log"))
        }())
        process.standardOutput = log
        process.standardError = log
        try process.run()
        // ready when /v2/ answers (200 or 401)
        for _ in 0..<100 {
            let r = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(host)/v2/"])
            if r.stdout == "200" || r.stdout == "401" { return }
            usleep(100_000)
        }
        stop()
        throw NSError(domain: "TestRegistry", code: 1, userInfo: [NSLocalizedDescriptionKey: "docker-registry did not start"])
    }

    /// The access log's request lines ("GET /v2/… HTTP/1.1") containing `text`.
    public func requests(matching text: String) -> [String] {
        let log = (try? String(contentsOfFile: dir.sub("log"), encoding: .utf8)) ?? ""
        return log.split(separator: "\n").compactMap { line in
            guard let open = line.firstIndex(of: "\""), let close = line[line.index(after: open)...].firstIndex(of: "\"") else { return nil }
            let request = String(line[line.index(after: open)..<close])
            return request.contains(text) ? request : nil
        }
    }

    public func stop() {
        // SIGKILL: children of the test runner may inherit a blocked SIGTERM
        // (and a test may have stopped the registry with SIGSTOP).
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { stop() }

    public static func freePort() throws -> Int {
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

/// docker-registry's config.yml: 127.0.0.1:`port`, filesystem storage at
/// `storage` with deletes allowed, errors-only logs (and the access log if
/// asked), and `auth` (a YAML `auth:` section, or empty).
public func dockerRegistryConfig(port: Int, storage: String, auth: String, accessLog: Bool = false) -> String {
    """
    version: 0.1
    log:
      level: error
      accesslog:
        disabled: \(!accessLog)
    storage:
      filesystem:
        rootdirectory: \(storage)
      delete:
        enabled: true
    http:
      addr: 127.0.0.1:\(port)
    \(auth)
    """
}
