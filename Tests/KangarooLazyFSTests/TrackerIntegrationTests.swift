import Foundation
import KangarooTestSupport
import KangarooLazyFS
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Nodes finding each other's chunks through two trackers: each node a
/// chunk cache, a `kangaroo peer` on it and a lazy mount with --trackers,
/// against a real origin registry (all on 127.0.0.1).
@Suite("P2P through trackers", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct TrackerIntegrationTests {
    final class Cluster: @unchecked Sendable {
        let tmp: MountTemp
        let origin: TestRegistry
        let ref: String
        let tokenFile: String
        var trackers: [ListeningProcess] = []
        var peers: [String: ListeningProcess] = [:]

        init(_ label: String) throws {
            tmp = try MountTemp(label)
            (origin, ref) = try MirrorIntegrationTests.origin(tmp)
            tokenFile = tmp.sub("cluster.token")
            try "kangaroo-test-cluster-\(UUID().uuidString)\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
            for i in 0..<2 {
                trackers.append(try ListeningProcess(["tracker", "--listen", "127.0.0.1:0", "--token-file", tokenFile, "--log-level", "info"],
                                                     marker: "tracker listening on ", log: tmp.sub("tracker\(i).log")))
            }
        }

        /// Node `label`: its peer started, its mount made (bootstrap only).
        func mountNode(_ label: String, peer peerArgs: [String] = []) throws {
            let cache = tmp.sub("cache-" + label)
            try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
            let peer = try PeerIntegrationTests.peer(cache: cache, tokenFile: tokenFile, log: tmp.sub("peer-\(label).log"),
                                                     ["--store", tmp.sub("store-" + label)] + peerArgs)
            peers[label] = peer
            try MirrorIntegrationTests.mount(tmp, ref, label: label, hostsDir: tmp.sub("no-hosts"), [
                "--trackers", trackers.map(\.address).joined(separator: ","), "--peer-address", peer.address,
                "--peer-token-file", tokenFile, "--peer-wait", "3",
            ])
        }

        func read(_ labels: [String]) {
            DispatchQueue.concurrentPerform(iterations: labels.count) { i in
                do { try expectSameTree(tmp.sub("kernel"), tmp.sub("mp-" + labels[i]), "node \(labels[i])") } catch {
                    Issue.record("node \(labels[i]): \(error)")
                }
            }
        }

        /// Bytes per role of node `label`'s mount.
        func bytes(_ label: String) throws -> (peer: Int, origin: Int, stats: [String: [String: Any]]) {
            let s = try MirrorIntegrationTests.sources(tmp, tmp.sub("mp-" + label))
            return (s["peer"]?["bytes"] as? Int ?? 0, s["origin"]?["bytes"] as? Int ?? 0, s)
        }
    }

    @Test("a burst of three nodes costs the registry about one copy of the bytes read; every tree equals the image")
    func burstCostsOneCopy() throws {
        let c = try Cluster("p2p-burst")
        let nodes = ["n1", "n2", "n3"]
        for n in nodes { try c.mountNode(n) }
        c.read(nodes)
        var fromOrigin = 0, fromPeers = 0, perNode = 0
        for n in nodes {
            let b = try c.bytes(n)
            fromOrigin += b.origin
            fromPeers += b.peer
            perNode = max(perNode, b.origin + b.peer)
        }
        #expect(perNode > 0)
        #expect(Double(fromOrigin) <= 1.25 * Double(perNode), "registry gave \(fromOrigin) bytes for \(perNode) per node")
        #expect(fromPeers >= perNode, "peers gave \(fromPeers) bytes")
        for n in nodes { try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-" + n)]) }
    }

    @Test("one tracker down: its replica answers; both down: the registry, each miss within about a second")
    func trackersDown() throws {
        let c = try Cluster("p2p-down")
        try c.mountNode("n1")
        c.read(["n1"])
        c.trackers[0].stop()
        try c.mountNode("n2")
        c.read(["n2"])
        let two = try c.bytes("n2")
        #expect(two.peer > 0 && two.origin == 0, "\(two.stats)")
        c.trackers[1].stop()
        try c.mountNode("n3")
        let start = Date()
        c.read(["n3"])
        let elapsed = Date().timeIntervalSince(start)
        let three = try c.bytes("n3")
        #expect(three.origin > 0 && three.peer == 0, "\(three.stats)")
        #expect((three.stats["peer"]?["state"] as? String) == "down", "\(three.stats)")
        #expect(elapsed < 15, "reading with both trackers down took \(elapsed) s")
        for n in ["n1", "n2", "n3"] { try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-" + n)]) }
    }

    @Test("a peer that serves wrong bytes is reported: the tracker hands it out to nobody; the node reads the registry")
    func lyingPeerIsReported() throws {
        let c = try Cluster("p2p-lying")
        try c.mountNode("liar")
        c.read(["liar"])
        try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-liar")])
        for (hex, chunks) in try cachedChunks(c.tmp.sub("cache-liar")) {
            for chunk in chunks where chunk.held {
                let file = c.tmp.sub("cache-liar/\(hex)") + (chunk.compression == 0 ? ".data" : ".packed")
                try flipByte(file, at: (chunk.compression == 0 ? UInt64(chunk.blockAddress) * 4096 : chunk.offset) + UInt64(chunk.size / 2))
            }
        }
        try c.mountNode("honest")
        c.read(["honest"])
        let b = try c.bytes("honest")
        #expect(b.origin > 0, "\(b.stats)")
        let stats = try c.tmp.kangaroo(["image", "stats", "--json", c.tmp.sub("mp-honest")])
        #expect(stats.stdout.contains("\"verificationFailures\" : 0"), "\(stats.stdout)")
        let token = try PeerIntegrationTests.token(c.tokenFile)
        let blocked = c.trackers.map { tracker in
            (try? run("curl", ["-sf", "-H", "Authorization: Bearer \(token)", "http://\(tracker.address)/v1/stats"]).stdout) ?? ""
        }
        #expect(blocked.contains { $0.contains(c.peers["liar"]!.address) }, "\(blocked)")
        let stranger = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://\(c.trackers[1].address)/v1/stats"])
        #expect(stranger.stdout == "401")
        try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-honest")])
    }

    @Test("preheat on three nodes: each cache gets every chunk, the registry serves about one copy; strangers cannot start one")
    func preheatNodes() throws {
        let c = try Cluster("p2p-preheat")
        let trackers = c.trackers.map(\.address).joined(separator: ",")
        var peers: [ListeningProcess] = []
        for n in ["n1", "n2", "n3"] {
            let cache = c.tmp.sub("cache-" + n)
            try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
            peers.append(try ListeningProcess(["peer", "--cache", cache, "--listen", "127.0.0.1:0", "--token-file", c.tokenFile,
                                               "--trackers", trackers, "--store", c.tmp.sub("store-" + n), "--hosts-dir", c.tmp.sub("no-hosts"),
                                               "--log-level", "info"], marker: "peer listening on ", log: c.tmp.sub("peer-\(n).log")))
        }
        let nodes = peers.map(\.address).joined(separator: ",")
        let out = try run(TestEnv.kangaroo, ["image", "preheat", "--all", "--json", "--nodes", nodes, "--peer-token-file", c.tokenFile, c.ref])
        let json = try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: [String: Any]] ?? [:]
        let summaries = peers.compactMap { json[$0.address]?["summary"] as? [String: Any] }
        #expect(summaries.count == 3, "\(out.stdout)")
        let registry = summaries.map { $0["bytesFromRegistry"] as? Int ?? 0 }
        let perNode = summaries.map { ($0["bytesFromRegistry"] as? Int ?? 0) + ($0["bytesFromPeers"] as? Int ?? 0) }.max() ?? 0
        #expect(perNode > 0)
        #expect(Double(registry.reduce(0, +)) <= 1.25 * Double(perNode), "registry gave \(registry) for \(perNode) per node")
        // Every cache is complete: a mount of each is the kernel's, equal to the image.
        for n in ["n2", "n3"] {
            try MirrorIntegrationTests.mount(c.tmp, c.ref, label: n, hostsDir: c.tmp.sub("no-hosts"), ["--mode", "auto"])
            #expect(MountControl.mountedType(c.tmp.sub("mp-" + n)) == "erofs", "node \(n)'s cache is not complete")
            try expectSameTree(c.tmp.sub("kernel"), c.tmp.sub("mp-" + n), "node \(n) after preheat")
            try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-" + n)])
        }
        // Without the token: refused. A bad reference: the job fails with a message.
        let stranger = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{\"reference\":\"\(c.ref)\",\"all\":true}",
                                        "http://\(peers[0].address)/v1/preheat"])
        #expect(stranger.stdout == "401")
        let bad = try run(TestEnv.kangaroo, ["image", "preheat", "--nodes", peers[0].address, "--peer-token-file", c.tokenFile,
                                             "\(c.origin.host)/no/such:image"], check: false)
        #expect(bad.status != 0)
        #expect(bad.stdout.contains("failed") && bad.stderr.contains("preheat failed on 1 of 1 nodes"), "\(bad.stdout) \(bad.stderr)")
    }

    @Test("a dead parent and a crawling parent: children finish from other parents or the registry, trees equal")
    func deadAndSlowParents() throws {
        let c = try Cluster("p2p-faults")
        // A parent whose peer died: the child is told about it, is refused,
        // excludes it and seeds from the registry.
        try c.mountNode("dead")
        c.read(["dead"])
        c.peers["dead"]!.stop()
        var start = Date()
        try c.mountNode("orphan")
        c.read(["orphan"])
        let orphan = try c.bytes("orphan")
        #expect(orphan.origin > 0 && orphan.peer == 0, "\(orphan.stats)")
        #expect(Date().timeIntervalSince(start) < 20, "a dead parent cost \(Date().timeIntervalSince(start)) s")
        // A parent capped at 2 mbit: a range it cannot deliver within
        // --peer-wait (3 s) is asked of the next parent.
        try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-dead")])
        try c.mountNode("slow", peer: ["--max-upload-rate", "256K"])
        c.read(["slow"])
        start = Date()
        try c.mountNode("child")
        c.read(["child"])
        let child = try c.bytes("child")
        let elapsed = Date().timeIntervalSince(start)
        #expect(child.peer > 0, "\(child.stats)")
        let total = child.peer + child.origin
        // At 256 KiB/s the slow parent alone would take total/256K seconds.
        #expect(elapsed < Double(total) / 262_144, "the child took \(elapsed) s for \(total) bytes")
        for n in ["orphan", "slow", "child"] { try c.tmp.kangaroo(["image", "umount", c.tmp.sub("mp-" + n)]) }
    }
}
