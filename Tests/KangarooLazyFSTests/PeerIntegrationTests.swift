import Foundation
import KangarooTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `kangaroo peer` serving one node's chunk cache to another, which lists it
/// as a mirror (hosts.toml), against a real origin registry.
@Suite("peer: a node's verified cache served to other nodes", .serialized,
       .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct PeerIntegrationTests {
    /// A `kangaroo peer` serving `cache`.
    static func peer(cache: String, tokenFile: String?, log: String, _ extra: [String] = []) throws -> ListeningProcess {
        try ListeningProcess(["peer", "--cache", cache, "--listen", "127.0.0.1:0", "--log-level", "info"] + extra
                             + (tokenFile.map { ["--token-file", $0] } ?? ["--no-auth"]), marker: "peer listening on ", log: log)
    }

    /// The origin registry with the sample image, node A's cache filled by
    /// reading the whole image once with --keep-compressed, and the token.
    static func seededNode(_ tmp: MountTemp) throws -> (TestRegistry, String, String) {
        let (origin, ref) = try MirrorIntegrationTests.origin(tmp)
        try MirrorIntegrationTests.mount(tmp, ref, label: "a", hostsDir: tmp.sub("no-hosts"), ["--keep-compressed"])
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-a"), "node A's mount from the registry")
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-a")])
        let token = tmp.sub("cluster.token")
        try "kangaroo-test-cluster-\(UUID().uuidString)\n".write(toFile: token, atomically: true, encoding: .utf8)
        return (origin, ref, token)
    }

    static func token(_ path: String) throws -> String {
        try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// hosts.toml naming the peer (pull only, with the token) before the origin.
    static func peerHosts(_ tmp: MountTemp, origin: TestRegistry, peer: ListeningProcess, token: String) throws -> String {
        let dir = tmp.sub("hosts.d")
        try MirrorIntegrationTests.writeHosts(dir, registry: origin.host, """
            server = "http://\(origin.host)"
            [host."http://\(peer.address)"]
              capabilities = ["pull"]
              [host."http://\(peer.address)".header]
                Authorization = "Bearer \(token)"
            """)
        return dir
    }

    /// The blob of `cache` with the most chunks, and its chunk table.
    static func tocEntries(_ cache: String) throws -> (hex: String, entries: [CachedChunk]) {
        let best = try cachedChunks(cache).max { $0.value.count < $1.value.count }
        return (best?.key ?? "", best?.value ?? [])
    }

    @Test("a node mounts an image from a peer's cache; plain clients read its ranges as the registry's; no token, no data")
    func peerServesAnotherNode() throws {
        let tmp = try MountTemp("peer")
        let (origin, ref, tokenFile) = try Self.seededNode(tmp)
        let token = try Self.token(tokenFile)
        let peer = try Self.peer(cache: tmp.sub("cache-a"), tokenFile: tokenFile, log: tmp.sub("peer.log"))

        // A plain HTTP client: the peer's bytes for a range of whole chunks are the registry's.
        let (hex, entries) = try Self.tocEntries(tmp.sub("cache-a"))
        #expect(entries.count >= 3 && entries.prefix(3).allSatisfy(\.held), "\(entries.count) chunks")
        let end = entries[2].range.upperBound
        let range = "bytes=\(entries[0].offset)-\(end - 1)"
        let url = "/v2/mirrored/sample/blobs/sha256:\(hex)"
        let fromPeer = try run("curl", ["-sf", "-H", "Authorization: Bearer \(token)", "-H", "Range: \(range)",
                                        "-o", tmp.sub("from-peer"), "-w", "%{http_code}", "http://\(peer.address)\(url)"])
        let fromRegistry = try run("curl", ["-sfL", "-H", "Range: \(range)", "-o", tmp.sub("from-registry"),
                                            "http://\(origin.host)\(url)"])
        #expect(fromPeer.stdout == "206" && fromRegistry.status == 0, "\(fromPeer.output) \(fromRegistry.output)")
        let peerBytes = FileManager.default.contents(atPath: tmp.sub("from-peer"))
        #expect(peerBytes != nil && peerBytes?.count == Int(end - entries[0].offset))
        #expect(peerBytes == FileManager.default.contents(atPath: tmp.sub("from-registry")))
        // A blob it does not hold: 404, the client asks its next host.
        let unknown = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer \(token)",
                                       "-H", "Range: bytes=0-10", "http://\(peer.address)/v2/x/blobs/sha256:\(String(repeating: "ab", count: 32))"])
        #expect(unknown.stdout == "404")
        // Strangers get nothing.
        for header in [[], ["-H", "Authorization: Bearer wrong-token-0123456789"]] {
            let r = try run("curl", ["-s", "-o", tmp.sub("stranger"), "-w", "%{http_code}", "-H", "Range: \(range)"] + header
                            + ["http://\(peer.address)\(url)"])
            #expect(r.stdout == "401", "\(header): \(r.stdout)")
            #expect(!((FileManager.default.contents(atPath: tmp.sub("stranger")) ?? Data()).count >= Int(end - entries[0].offset)))
        }
        let ping = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(peer.address)/v2/"])
        #expect(ping.stdout == "401")

        // Node B: the peer as a mirror. Its chunks come from the peer, not the registry.
        let hostsDir = try Self.peerHosts(tmp, origin: origin, peer: peer, token: token)
        let originBlobsBefore = origin.requests(matching: "/blobs/").count
        try MirrorIntegrationTests.mount(tmp, ref, label: "b", hostsDir: hostsDir)
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-b"), "node B's mount from node A's peer")
        let b = try MirrorIntegrationTests.sources(tmp, tmp.sub("mp-b"))
        #expect((b["mirror"]?["bytes"] as? Int ?? 0) > 0, "\(b)")
        #expect((b["origin"]?["bytes"] as? Int ?? -1) == 0, "\(b)")
        // Only the config and the bootstrap came from the registry (the peer may not resolve).
        #expect(origin.requests(matching: "/blobs/").count - originBlobsBefore == 2,
                "\(origin.requests(matching: "/blobs/").suffix(5))")
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-b")])
    }

    @Test("a peer whose cache has wrong bytes is blocked; the node reads the registry; no wrong byte is served")
    func lyingPeerIsBlocked() throws {
        let tmp = try MountTemp("peer-lying")
        let (origin, ref, tokenFile) = try Self.seededNode(tmp)
        let token = try Self.token(tokenFile)
        // Corrupt node A's copies: one byte in every compressed chunk kept and in the data file.
        let (hex, entries) = try Self.tocEntries(tmp.sub("cache-a"))
        let packed = tmp.sub("cache-a/\(hex).packed")
        var flipped = 0
        for entry in entries where entry.compression != 0 && FileManager.default.fileExists(atPath: packed) {
            try flipByte(packed, at: entry.offset + UInt64(entry.size / 2))
            flipped += 1
        }
        let data = tmp.sub("cache-a/\(hex).data")
        let size = (try FileManager.default.attributesOfItem(atPath: data)[.size] as? Int) ?? 0
        for offset in stride(from: 100, to: size, by: 4096 * 7) { try flipByte(data, at: UInt64(offset)); flipped += 1 }
        #expect(flipped > 0)
        let peer = try Self.peer(cache: tmp.sub("cache-a"), tokenFile: tokenFile, log: tmp.sub("peer.log"))
        let hostsDir = try Self.peerHosts(tmp, origin: origin, peer: peer, token: token)
        try MirrorIntegrationTests.mount(tmp, ref, label: "b", hostsDir: hostsDir)
        try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-b"), "node B's mount past a lying peer")
        let b = try MirrorIntegrationTests.sources(tmp, tmp.sub("mp-b"))
        #expect((b["mirror"]?["rejected"] as? Int ?? 0) >= 1, "\(b)")
        #expect((b["mirror"]?["state"] as? String) == "blocked", "\(b)")
        #expect((b["origin"]?["bytes"] as? Int ?? 0) > 0, "\(b)")
        let stats = try tmp.kangaroo(["image", "stats", "--json", tmp.sub("mp-b")])
        #expect(stats.stdout.contains("\"verificationFailures\" : 0"), "\(stats.stdout)")
        try tmp.kangaroo(["image", "umount", tmp.sub("mp-b")])
        // B's cache holds only verified bytes: its kernel mount equals the image.
        let again = try run(TestEnv.kangaroo, ["image", "mount", "--daemon", "--mode", "kernel", "--cache", tmp.sub("cache-b"),
                                                "--store", tmp.sub("store-b"), ref, tmp.sub("mp-b")],
                            env: ["KANGAROO_RUN_DIR": tmp.runDir], check: false)
        if again.status == 0 {
            try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-b"), "node B's cache after the lying peer, by the kernel")
            try tmp.kangaroo(["image", "umount", tmp.sub("mp-b")])
        } else {
            #expect(again.stderr.contains("complete"), "\(again.stderr)")
        }
    }

    @Test("kangaroo peer refuses to start without a token choice, with a short token, or a missing cache")
    func peerArguments() throws {
        let tmp = try MountTemp("peer-args")
        try FileManager.default.createDirectory(atPath: tmp.sub("cache"), withIntermediateDirectories: true)
        let none = try run(TestEnv.kangaroo, ["peer", "--cache", tmp.sub("cache"), "--listen", "127.0.0.1:0"], check: false)
        #expect(none.status != 0 && none.stderr.contains("--token-file"), "\(none.stderr)")
        try "short".write(toFile: tmp.sub("t"), atomically: true, encoding: .utf8)
        let short = try run(TestEnv.kangaroo, ["peer", "--cache", tmp.sub("cache"), "--listen", "127.0.0.1:0",
                                               "--token-file", tmp.sub("t")], check: false)
        #expect(short.status != 0 && short.stderr.contains("at least 16"), "\(short.stderr)")
        let missing = try run(TestEnv.kangaroo, ["peer", "--cache", tmp.sub("nope"), "--listen", "127.0.0.1:0", "--no-auth"], check: false)
        #expect(missing.status != 0 && missing.stderr.contains("not a directory"), "\(missing.stderr)")
    }
}
