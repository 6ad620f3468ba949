import Foundation
import KangarooTestSupport

/// A Debian `docker-registry` (distribution) child process on 127.0.0.1
/// with filesystem storage in a temporary directory, for integration tests.
/// Optional Basic auth (htpasswd, bcrypt via `htpasswd -Bbn`) or Bearer
/// token auth (a small Python token server issuing RS256 JWTs whose x5c
/// certificate is the registry's root bundle).
///
///     let registry = try await TestRegistry.start(auth: .basic(user: "u", password: "p"))
///     defer { registry.stop() }
///     registry.host   // "127.0.0.1:PORT"
final class TestRegistry: @unchecked Sendable {
    enum Auth: Sendable {
        case none
        case basic(user: String, password: String)
        /// Token server accepting `user`/`password` (and anonymous pulls when `anonymousPull`).
        case token(user: String, password: String, anonymousPull: Bool)
    }

    let dir: TempDir
    let port: Int
    let process: Process
    var tokenServer: Process?
    var tokenPort: Int?
    var host: String { "127.0.0.1:\(port)" }
    var storageDirectory: String { dir.file("storage") }

    private init(dir: TempDir, port: Int, process: Process) {
        self.dir = dir
        self.port = port
        self.process = process
    }

    /// A free TCP port on 127.0.0.1 (bind to 0, read it back, close).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw POSIXError(.EADDRINUSE) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func start(auth: Auth = .none, port fixedPort: Int? = nil) async throws -> TestRegistry {
        let dir = try TempDir("registry")
        do {
            let port = try fixedPort ?? freePort()
            var authYAML = ""
            var tokenServer: Process?
            var tokenPort: Int?
            switch auth {
            case .none:
                break
            case .basic(let user, let password):
                let line = try run("/usr/bin/htpasswd", ["-Bbn", user, password])
                try line.write(toFile: dir.file("htpasswd"), atomically: true, encoding: .utf8)
                authYAML = """
                auth:
                  htpasswd:
                    realm: kangaroo-test
                    path: \(dir.file("htpasswd"))
                """
            case .token(let user, let password, let anonymousPull):
                try sh("""
                    openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 \
                        -subj /CN=kangaroo-test-token 2>/dev/null
                    """, cwd: dir.path)
                let tp = try freePort()
                try tokenServerScript.write(toFile: dir.file("token_server.py"), atomically: true, encoding: .utf8)
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
                p.arguments = [dir.file("token_server.py"), "\(tp)", dir.file("key.pem"), dir.file("cert.pem"),
                               user, password, anonymousPull ? "1" : "0"]
                p.standardOutput = FileHandle.nullDevice
                p.standardError = FileHandle(forWritingAtPath: "/dev/null")
                try p.run()
                tokenServer = p
                tokenPort = tp
                try await waitForPort(tp, process: p, what: "token server")
                authYAML = """
                auth:
                  token:
                    realm: http://127.0.0.1:\(tp)/token
                    service: kangaroo-test
                    issuer: kangaroo-test-issuer
                    rootcertbundle: \(dir.file("cert.pem"))
                """
            }
            let config = KangarooTestSupport.dockerRegistryConfig(port: port, storage: dir.file("storage"), auth: authYAML)
            try config.write(toFile: dir.file("config.yml"), atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
            process.arguments = ["serve", dir.file("config.yml")]
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            FileManager.default.createFile(atPath: dir.file("registry.log"), contents: nil)
            process.standardError = FileHandle(forWritingAtPath: dir.file("registry.log"))
            try process.run()
            let registry = TestRegistry(dir: dir, port: port, process: process)
            registry.tokenServer = tokenServer
            registry.tokenPort = tokenPort
            do {
                try await waitForPort(port, process: process, what: "docker-registry")
            } catch {
                let log = (try? String(contentsOfFile: dir.file("registry.log"), encoding: .utf8)) ?? ""
                registry.stop()
                throw CommandFailed(description: "\(error); registry log: \(log)")
            }
            return registry
        } catch {
            dir.remove()
            throw error
        }
    }

    static func waitForPort(_ port: Int, process: Process, what: String) async throws {
        for _ in 0..<200 {
            if !process.isRunning { throw CommandFailed(description: "\(what) exited with \(process.terminationStatus)") }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = UInt16(port).bigEndian
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if rc == 0 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CommandFailed(description: "\(what) did not listen on 127.0.0.1:\(port) within 10 s")
    }

    /// Stops the registry and token server without removing the storage.
    /// SIGKILL, because children inherit the test runner's signal mask,
    /// which may block SIGTERM.
    func kill() {
        for p in [process, tokenServer].compactMap({ $0 }) where p.isRunning {
            let pid = p.processIdentifier
            if pid > 0 { Glibc.kill(pid, SIGKILL) }
            p.waitUntilExit()
        }
    }

    /// Stops everything and removes the temporary directory.
    func stop() {
        kill()
        dir.remove()
    }
}

/// Token server for distribution's `auth.token`: GET /token?service=&scope=...
/// with optional Basic credentials; returns {"token": JWT} granting the
/// requested actions (only pull to anonymous users when allowed).
private let tokenServerScript = #"""
import base64, http.server, json, subprocess, sys, time, uuid
port, key, cert, user, password, anon = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] == "1"
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True, check=True).stdout
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        from urllib.parse import urlparse, parse_qs
        q = parse_qs(urlparse(self.path).query)
        authed = False
        h = self.headers.get("Authorization", "")
        if h.startswith("Basic "):
            u, _, p = base64.b64decode(h[6:]).decode().partition(":")
            if u != user or p != password:
                self.send_response(401); self.end_headers(); self.wfile.write(b'{"details":"wrong credentials"}'); return
            authed = True
        access = []
        for s in q.get("scope", []):
            parts = s.split(":")
            if len(parts) < 3: continue
            actions = parts[-1].split(",")
            if not authed:
                actions = [a for a in actions if a == "pull" and anon]
            access.append({"type": parts[0], "name": ":".join(parts[1:-1]), "actions": actions})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": "kangaroo-test-issuer", "sub": user if authed else "", "aud": q.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
        signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input,
                             capture_output=True, check=True).stdout
        token = signing_input.decode() + "." + b64(sig)
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H).serve_forever()
"""#
