import Foundation
import KangarooTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Registry mirrors from a hosts.toml directory (containerd's format): a
/// real docker-registry in proxy mode in front of a real origin registry.
@Suite("registry mirrors (hosts.toml)", .serialized,
       .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct MirrorIntegrationTests {
    /// An origin registry holding the sample image as a Kangaroo image, and a
    /// materialized copy of it at tmp/kernel to compare mounts against.
    static func origin(_ tmp: MountTemp) throws -> (TestRegistry, String) {
        let origin = try TestRegistry(accessLog: true)
        try LazyMountIntegrationTests.prepare(tmp, ("sample", "latest"))
        let ref = "\(origin.host)/mirrored/sample:v1"
        try tmp.kangaroo(["image", "push", "--quiet", "img:latest", ref])
        return (origin, ref)
    }

    static func writeHosts(_ dir: String, registry: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: dir + "/" + registry, withIntermediateDirectories: true)
        try text.write(toFile: dir + "/" + registry + "/hosts.toml", atomically: true, encoding: .utf8)
    }

    /// Mounts `ref` lazily with a store and cache of its own (named `label`).
    @discardableResult
    static func mount(_ tmp: MountTemp, _ ref: String, label: String, hostsDir: String, _ extra: [String] = [],
                      check: Bool = true) throws -> CommandResult {
        let mp = tmp.sub("mp-" + label)
        try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: true)
        return try run(TestEnv.kangaroo, ["image", "mount", "--daemon", "--mode", "fuse", "--prefetch", "none",
                                          "--cache", tmp.sub("cache-" + label), "--store", tmp.sub("store-" + label),
                                          "--hosts-dir", hostsDir] + extra + [ref, mp],
                       env: ["KANGAROO_RUN_DIR": tmp.runDir], check: check)
    }

    /// The `sources` of a mount's stats, by role, once the stats file is
    /// newer than this call (it is rewritten every second).
    static func sources(_ tmp: MountTemp, _ mp: String) throws -> [String: [String: Any]] {
        let asked = Date().timeIntervalSince1970
        var object: [String: Any] = [:]
        for _ in 0..<100 {
            let r = try tmp.kangaroo(["image", "stats", "--json", mp])
            object = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            if (object["updatedAt"] as? Double ?? 0) >= asked { break }
            usleep(50_000)
        }
        let list = try #require(object["sources"] as? [[String: Any]], "no sources in \(object)")
        return Dictionary(list.map { (($0["role"] as? String) ?? "?", $0) }, uniquingKeysWith: { a, _ in a })
    }

    @Test("a pull-through cache as a mirror: the mount fetches through it; with it stopped, through the registry")
    func pullThroughCacheMirror() throws {
        let tmp = try MountTemp("mirror")
        let (origin, ref) = try Self.origin(tmp)
        let proxy = try TestRegistry(accessLog: true, proxyOf: "http://\(origin.host)")
        let hostsDir = tmp.sub("hosts.d")
        try Self.writeHosts(hostsDir, registry: origin.host, """
            # the origin, tried last
            server = "http://\(origin.host)"

            [host."http://\(proxy.host)"]
              capabilities = ["pull", "resolve"]
            """)
        let originBlobGets = origin.requests(matching: "/blobs/").count

        try Self.mount(tmp, ref, label: "a", hostsDir: hostsDir)
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-a"), "mount through the mirror vs materialized image")
        let a = try Self.sources(tmp, tmp.sub("mp-a"))
        #expect((a["mirror"]?["bytes"] as? Int ?? 0) > 0, "\(a)")
        #expect((a["origin"]?["bytes"] as? Int ?? -1) == 0, "\(a)")
        // The mirror saw the mount's manifest and blob requests.
        #expect(!proxy.requests(matching: "/v2/mirrored/sample/manifests/v1").isEmpty)
        #expect(!proxy.requests(matching: "/v2/mirrored/sample/blobs/sha256:").isEmpty)
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-a")])

        // The mirror gone: a fresh mount (own store and cache) goes to the registry.
        proxy.stop()
        let before = origin.requests(matching: "/blobs/").count
        #expect(before >= originBlobGets)
        let start = Date()
        try Self.mount(tmp, ref, label: "b", hostsDir: hostsDir)
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-b"), "mount with the mirror stopped vs materialized image")
        #expect(Date().timeIntervalSince(start) < 30)
        let b = try Self.sources(tmp, tmp.sub("mp-b"))
        #expect((b["origin"]?["bytes"] as? Int ?? 0) > 0, "\(b)")
        #expect((b["mirror"]?["bytes"] as? Int ?? -1) == 0, "\(b)")
        #expect((b["mirror"]?["failures"] as? Int ?? 0) >= 1, "\(b)")
        #expect(origin.requests(matching: "/blobs/").count > before)
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-b")])
    }

    @Test("a mirror that accepts connections but never answers: reads go to the registry after its timeout")
    func silentMirror() throws {
        let tmp = try MountTemp("mirror-silent")
        let (origin, ref) = try Self.origin(tmp)
        let silent = try TestRegistry()
        kill(silent.process.processIdentifier, SIGSTOP)  // the kernel still accepts connections
        defer { kill(silent.process.processIdentifier, SIGCONT) }
        let hostsDir = tmp.sub("hosts.d")
        try Self.writeHosts(hostsDir, registry: origin.host, """
            server = "http://\(origin.host)"
            [host."http://\(silent.host)"]
              capabilities = ["pull", "resolve"]
              timeout = 1
            """)
        let start = Date()
        try Self.mount(tmp, ref, label: "s", hostsDir: hostsDir)
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-s"), "mount past a silent mirror vs materialized image")
        let elapsed = Date().timeIntervalSince(start)
        let s = try Self.sources(tmp, tmp.sub("mp-s"))
        #expect((s["origin"]?["bytes"] as? Int ?? 0) > 0, "\(s)")
        #expect((s["mirror"]?["state"] as? String) == "down", "\(s)")
        // The mirror costs one timeout per backoff (1 s, 2 s, 4 s...), not one per read.
        let failures = s["mirror"]?["failures"] as? Int ?? 0
        #expect(failures >= 1 && failures <= 10, "\(s)")
        #expect(elapsed < 30, "took \(elapsed) s")
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-s")])
    }

    @Test("a mirror without the pull capability is not used; a bad hosts.toml is an error naming the file and line")
    func capabilitiesAndBadFiles() throws {
        let tmp = try MountTemp("mirror-bad")
        let (origin, ref) = try Self.origin(tmp)
        let other = try TestRegistry(accessLog: true)
        let hostsDir = tmp.sub("hosts.d")
        try Self.writeHosts(hostsDir, registry: origin.host, """
            server = "http://\(origin.host)"
            [host."http://\(other.host)"]
              capabilities = ["push"]
            """)
        try Self.mount(tmp, ref, label: "c", hostsDir: hostsDir)
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-c"), "mount with a push-only mirror")
        #expect(other.requests(matching: "/v2/mirrored").isEmpty, "\(other.requests(matching: "/v2/"))")
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-c")])

        try Self.writeHosts(hostsDir, registry: origin.host, """
            server = "http://\(origin.host)"
            [host."http://\(other.host)"]
              capabilities = pull
            """)
        let r = try Self.mount(tmp, ref, label: "d", hostsDir: hostsDir, check: false)
        #expect(r.status != 0)
        #expect(r.stderr.contains("\(hostsDir)/\(origin.host)/hosts.toml") && r.stderr.contains("line 3"), "\(r.stderr)")
        #expect(mountType(tmp.sub("mp-d")) == nil)
    }
}
