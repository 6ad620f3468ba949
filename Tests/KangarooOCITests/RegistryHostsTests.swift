import Foundation
import Testing
@testable import KangarooOCI

@Suite struct RegistryHostsTests {
    func parse(_ text: String, registry: String = "docker.io", path: String = "/etc/kangaroo/certs.d/docker.io/hosts.toml")
        throws(OCIError) -> RegistryHosts {
        try RegistryHosts.parse(text, registry: registry, path: path)
    }

    @Test("containerd's mirror example: hosts in the order listed, the server last, capabilities kept")
    func containerdExample() throws {
        let hosts = try parse("""
            server = "https://registry-1.docker.io"    # Exclude this to not use upstream

            [host."https://public-mirror.example.com"]
              capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest from this host
            [host."https://docker-mirror.internal"]
              capabilities = ["pull", "resolve"]
              skip_verify = true
            [host."https://a-mirror.example.com/v2/prefix"]
              override_path = true
            """)
        #expect(hosts.hosts.map(\.url) == ["https://public-mirror.example.com/v2", "https://docker-mirror.internal/v2",
                                           "https://a-mirror.example.com/v2/prefix", "https://registry-1.docker.io/v2"])
        #expect(hosts.hosts.map(\.isMirror) == [true, true, true, false])
        #expect(hosts.hosts(for: .resolve).map(\.host) == ["docker-mirror.internal", "a-mirror.example.com", "registry-1.docker.io"])
        #expect(hosts.hosts(for: .pull).count == 4)
        #expect(hosts.hosts(for: .push).map(\.host) == ["a-mirror.example.com", "registry-1.docker.io"])
        #expect(hosts.hosts[1].tls.skipVerify && !hosts.hosts[0].tls.skipVerify)
        #expect(hosts.warnings.isEmpty)
    }

    @Test("paths: /v2 appended unless override_path; http mirrors; timeout and headers")
    func pathsAndExtensions() throws {
        let hosts = try parse("""
            [host."http://127.0.0.1:5001/cache"]
              timeout = 1.5
              [host."http://127.0.0.1:5001/cache".header]
                x-token = "abc"
                x-multi = ["a", "b"]
            [host.'127.0.0.1:5002']
            """, registry: "127.0.0.1:5000")
        #expect(hosts.hosts.map(\.url) == ["http://127.0.0.1:5001/cache/v2", "http://127.0.0.1:5002/v2"])
        #expect(hosts.hosts[0].timeout == .milliseconds(1500))
        #expect(hosts.hosts[0].headers.map { "\($0.name)=\($0.value)" } == ["x-multi=a", "x-multi=b", "x-token=abc"])
        // No server: only the mirrors (containerd: "exclude this to not use upstream").
        #expect(hosts.hosts.allSatisfy { $0.isMirror })
    }

    @Test("dotted keys keep the hosts' order too")
    func dottedKeys() throws {
        let hosts = try parse("""
            host."https://b.example".capabilities = ["pull"]
            host."https://a.example".capabilities = ["pull"]
            server = "https://docker.io"
            """)
        #expect(hosts.hosts.map(\.host) == ["b.example", "a.example", "docker.io"])
    }

    @Test("bad files are errors naming the file and the line", arguments: [
        ("server = https://x", "line 1", "not a value"),
        ("server = \"https://x\"\n[host.\"https://m\"]\ncapabilities = pull", "line 3", "not a value"),
        ("[host.\"https://m\"]\ncapabilities = [\"pull\", \"fly\"]", "capability", "\"pull\", \"resolve\", \"push\""),
        ("[host.\"https://m\"]\nskip_verify = \"yes\"", "skip_verify", "not true or false"),
        ("[host.\"ftp://m\"]", "ftp", "not http or https"),
        ("[host.\"https://m\"]\nclient = \"/c.pem\"", "client certificates", "not supported"),
        ("[host.\"https://m\"]\nca = \"missing.pem\"", "missing.pem", "cannot be read"),
        ("[host.\"https://m\"]\ntimeout = 0", "timeout", "between"),
        ("[host.\"https://m\"]\n[host.\"https://m\"]", "line 2", "defined twice"),
        ("server = \"https://x\"\nserver = \"https://y\"", "line 2", "set twice"),
        ("x = { a = 1 }", "line 1", "inline tables"),
        ("# nothing\n", "names no server", "nowhere to pull"),
        ("server = \"https://x\" trailing", "line 1", "after the value"),
        ("server = \"https://x", "line 1", "unterminated"),
    ])
    func badFiles(text: String, a: String, b: String) throws {
        do {
            _ = try parse(text)
            Issue.record("parsed: \(text)")
        } catch {
            #expect(error.description.contains("/etc/kangaroo/certs.d/docker.io/hosts.toml"), "\(error)")
            #expect(error.description.contains(a) && error.description.contains(b), "\(error)")
        }
    }

    @Test("unknown keys are warnings naming the file, not errors")
    func unknownKeys() throws {
        let hosts = try parse("""
            server = "https://docker.io"
            futurekey = true
            [host."https://m.example"]
              capabilites = ["pull"]
            """)
        #expect(hosts.hosts.count == 2)
        #expect(hosts.warnings.count == 2, "\(hosts.warnings)")
        #expect(hosts.warnings.allSatisfy { $0.contains("/etc/kangaroo/certs.d/docker.io/hosts.toml") })
        #expect(hosts.warnings.contains { $0.contains("capabilites") })
    }

    @Test("load: the registry's file, else _default, else the registry alone; ca paths relative to the file")
    func load() throws {
        let dir = FileManager.default.temporaryDirectory.path + "/kangaroo-test-hosts-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/127.0.0.1:5000", withIntermediateDirectories: true)
        try "pem".write(toFile: dir + "/127.0.0.1:5000/mirror.pem", atomically: true, encoding: .utf8)
        try """
            server = "http://127.0.0.1:5000"
            [host."https://mirror.internal"]
              ca = "mirror.pem"
            """.write(toFile: dir + "/127.0.0.1:5000/hosts.toml", atomically: true, encoding: .utf8)
        let own = try RegistryHosts.load(registry: "127.0.0.1:5000", directory: dir)
        #expect(own.path == dir + "/127.0.0.1:5000/hosts.toml")
        #expect(own.hosts[0].tls.caFiles == [dir + "/127.0.0.1:5000/mirror.pem"])

        let alone = try RegistryHosts.load(registry: "ghcr.io", directory: dir)
        #expect(alone.path == nil && alone.hosts.map(\.url) == ["https://ghcr.io/v2"])
        let docker = try RegistryHosts.load(registry: "docker.io", directory: dir + "/missing")
        #expect(docker.hosts.map(\.url) == ["https://registry-1.docker.io/v2"])
        let local = try RegistryHosts.load(registry: "localhost:5000", directory: dir)
        #expect(local.hosts.map(\.url) == ["http://localhost:5000/v2"])

        try FileManager.default.createDirectory(atPath: dir + "/_default", withIntermediateDirectories: true)
        try "[host.\"http://127.0.0.1:6000\"]\n".write(toFile: dir + "/_default/hosts.toml", atomically: true, encoding: .utf8)
        let fallback = try RegistryHosts.load(registry: "ghcr.io", directory: dir)
        #expect(fallback.hosts.map(\.url) == ["http://127.0.0.1:6000/v2"])
    }
}
