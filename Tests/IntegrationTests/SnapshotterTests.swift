import Foundation
import KangarooTestSupport
import Testing

/// The node daemon as containerd's remote snapshotter `kangaroo` (proxy
/// plugin): ordinary OCI images unpacked into its overlay snapshots, and a
/// Kangaroo image pulled from a docker-registry on 127.0.0.1 without any
/// layer download, its containers on one lazy mount. containerd's overlayfs
/// snapshotter with runc's shim is the oracle.
@Suite("snapshotter", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                            "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class SnapshotterTests {
    let node: TempDir
    let containerd: TestContainerd
    let kangaroo = ["--runtime", "io.containerd.kangaroo.v2", "--snapshotter", "kangaroo"]
    let runc = ["--runtime", "io.containerd.runc.v2", "--snapshotter", "overlayfs"]
    let image = "kangaroo.test/sample:latest"
    /// Every regular file of the image's main directories with its checksum.
    let probe = "find /bin /etc /usr -xdev -type f 2>/dev/null | sort | xargs md5sum | md5sum; ls -ln /etc | md5sum; id"

    init() throws {
        node = try TempDir("snap-node")
        containerd = try TestContainerd.forKangaroo(node: node, snapshotter: true)
    }

    deinit { tearDownNode(node, containerd: containerd) }

    func daemons() -> [Int32] { nodeDaemons(socket: node.sub("shim.sock")) }

    /// The end of the node daemon's log, for failure messages.
    var nodeLog: String { String(((try? String(contentsOfFile: node.sub("node.log"), encoding: .utf8)) ?? "").suffix(3000)) }

    @discardableResult
    func ctr(_ args: [String], check: Bool = false) throws -> CommandResult {
        try run("/usr/bin/ctr", containerd.ctr + args, check: check)
    }

    func importSample(snapshotter: String) throws {
        let tar = containerd.dir.sub("sample.tar")
        if !FileManager.default.fileExists(atPath: tar) {
            try run("/bin/tar", ["-C", TestEnv.images + "/sample", "-cf", tar, "."], check: true)
        }
        try ctr(["images", "import", "--snapshotter", snapshotter, "--index-name", image, tar], check: true)
    }

    var snapshotDirectories: Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: node.sub("root/snapshotter/snapshots"))) ?? []).count
    }

    /// Mount points below `dir` (a point counted once, whatever is stacked
    /// on it), of `type` only if given.
    func mounts(below dir: String, type: String? = nil) -> Int {
        let points = (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").compactMap { line -> Substring? in
            let f = line.split(separator: " ")
            guard f.count > 4, f[4].hasPrefix(dir + "/") else { return nil }
            guard let type else { return f[4] }
            guard let dash = f.firstIndex(of: "-"), dash + 1 < f.count else { return nil }
            return f[dash + 1] == type ? f[4] : nil
        }
        return Set(points).count
    }

    @Test("an OCI image unpacked into kangaroo's snapshots runs as on overlayfs; snapshots ls/info/usage; all removed with the image")
    func ociImageThroughTheSnapshotter() throws {
        try importSample(snapshotter: "kangaroo")
        try importSample(snapshotter: "overlayfs")
        let k = try ctr(["run", "--rm"] + kangaroo + [image, "snap-k", "sh", "-c", probe])
        let r = try ctr(["run", "--rm"] + runc + [image, "snap-r", "sh", "-c", probe])
        #expect(k.status == 0, "\(k.output)\n\(containerd.log.suffix(1500))")
        #expect(k.stdout == r.stdout && !k.stdout.isEmpty)

        // The committed layers as containerd lists them, with usage.
        let ls = try ctr(["snapshots", "--snapshotter", "kangaroo", "ls"], check: true).stdout
        let committed = ls.split(separator: "\n").map { $0.split(separator: " ") }.filter { $0.last == "Committed" }
        #expect(committed.count >= 1, "\(ls)")
        // The top layer: the one no other lists as parent.
        let parents = Set(committed.compactMap { $0.count == 3 ? $0[1] : nil })
        let top = String(try #require(committed.first { !parents.contains($0[0]) })[0])
        let info = try ctr(["snapshots", "--snapshotter", "kangaroo", "info", top], check: true).stdout
        #expect(info.contains("\"Kind\": \"Committed\""), "\(info)")
        let usage = try ctr(["snapshots", "--snapshotter", "kangaroo", "usage", top], check: true).stdout
        #expect(usage.contains(top), "\(usage)")
        // A container's snapshot: prepare, label, write, commit, view.
        try ctr(["snapshots", "--snapshotter", "kangaroo", "prepare", "work", top], check: true)
        try ctr(["snapshots", "--snapshotter", "kangaroo", "label", "work", "team=kangaroo"], check: true)
        #expect(try ctr(["snapshots", "--snapshotter", "kangaroo", "info", "work"]).stdout.contains("\"team\": \"kangaroo\""))
        let removeBusy = try ctr(["snapshots", "--snapshotter", "kangaroo", "rm", top])
        #expect(removeBusy.status != 0 && removeBusy.output.contains("child"), "\(removeBusy.output)")
        try ctr(["snapshots", "--snapshotter", "kangaroo", "commit", "done", "work"], check: true)
        try ctr(["snapshots", "--snapshotter", "kangaroo", "view", "peek", "done"], check: true)
        let view = try ctr(["snapshots", "--snapshotter", "kangaroo", "mounts", "/mnt", "peek"], check: true).stdout
        #expect(view.contains("overlay") && view.contains("lowerdir=") && !view.contains("upperdir="), "\(view)")
        for key in ["peek", "done"] { try ctr(["snapshots", "--snapshotter", "kangaroo", "rm", key], check: true) }

        // Removing the images lets containerd's GC remove every snapshot.
        let images = try ctr(["images", "ls", "-q"], check: true).stdout.split(separator: "\n").map(String.init)
        try ctr(["images", "rm", "--sync"] + images, check: true)
        for _ in 0..<50 where snapshotDirectories > 0 { usleep(100_000) }
        let left = (try? ctr(["snapshots", "--snapshotter", "kangaroo", "ls"]).stdout) ?? ""
        #expect(snapshotDirectories == 0, "\(left)")
        #expect(mounts(below: node.path) == 0)
    }

    @Test("a Kangaroo image pulled with ctr-remote downloads no layer but the bootstrap and is mounted; its containers share the one lazy mount, gone with the image")
    func kangarooImageIsLazy() throws {
        let registry = try TestRegistry(accessLog: true)
        let store = try TempDir("snap-store")
        let ref = "\(registry.host)/lazy/sample:kangaroo"
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", ref], check: true)
        let manifestJSON = try run("curl", ["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                                            "http://\(registry.host)/v2/lazy/sample/manifests/kangaroo"], check: true).stdout
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(manifestJSON.utf8)) as? [String: Any])
        let layers = try #require(manifest["layers"] as? [[String: Any]]).compactMap { $0["digest"] as? String }
        #expect(layers.count >= 2)
        let before = registry.requests(matching: "/blobs/").count

        let pull = try run("/usr/bin/ctr-remote", containerd.ctr + ["image", "rpull", "--plain-http", "--snapshotter", "kangaroo", ref])
        #expect(pull.status == 0, "\(pull.output)\n\(containerd.log.suffix(1500))")
        // Mounted at the pull (in the background): the bootstrap, no chunk.
        for _ in 0..<100 where mounts(below: node.sub("root/snapshotter/images")) == 0 { usleep(50_000) }
        #expect(mounts(below: node.sub("root/snapshotter/images")) == 1)
        let afterPull = registry.requests(matching: "/blobs/").dropFirst(before)
        #expect(afterPull.allSatisfy { request in !layers.dropFirst().contains { request.contains($0) } }, "\(afterPull)")

        // Two containers at once: one lazy mount under them.
        for id in ["lazy-1", "lazy-2"] {
            try ctr(["run", "-d"] + kangaroo + [ref, id, "sleep", "1000"], check: true)
        }
        // One lazy mount (FUSE, or the kernel's EROFS once prefetch completed the cache).
        #expect(mounts(below: node.sub("root/snapshotter/images")) == 1, "\(procText("/proc/self/mountinfo") ?? "")")
        let k = try ctr(["task", "exec", "--exec-id", "probe", "lazy-1", "sh", "-c", probe])
        try importSample(snapshotter: "overlayfs")
        let r = try ctr(["run", "--rm"] + runc + [image, "lazy-r", "sh", "-c", probe])
        #expect(k.status == 0 && k.stdout == r.stdout, "\(k.output)")
        // The bootstrap once, then chunk ranges.
        let bootstrapGets = registry.requests(matching: layers[0]).filter { $0.hasPrefix("GET") }
        #expect(bootstrapGets.count == 1, "\(bootstrapGets)")
        #expect(!registry.requests(matching: layers[1]).isEmpty, "the chunks came from the registry")

        for id in ["lazy-1", "lazy-2"] {
            try ctr(["task", "delete", "--force", id], check: true)
            try ctr(["containers", "delete", id], check: true)
            if id == "lazy-1" {
                #expect(mounts(below: node.sub("root/snapshotter/images")) == 1)
            }
        }
        // The image's mount outlives its containers and goes with the image.
        #expect(mounts(below: node.sub("root/snapshotter/images")) == 1)
        try ctr(["images", "rm", "--sync", ref], check: true)
        for _ in 0..<50 where mounts(below: node.sub("root/snapshotter/images")) > 0 { usleep(100_000) }
        #expect(mounts(below: node.path) == 0, "\(procText("/proc/self/mountinfo") ?? "")")
    }

    @Test("a node daemon with --peer-listen serves the chunks its lazy mounts fetched, as the registry has them, to token holders only")
    func nodeServesItsCacheToPeers() throws {
        let peerNode = try TempDir("snap-peer-node")
        let port = try TestRegistry.freePort()
        let token = String(repeating: "t0k3n", count: 5)
        try token.write(toFile: peerNode.sub("token"), atomically: true, encoding: .utf8)
        let peerContainerd = try TestContainerd.forKangaroo(node: peerNode, snapshotter: true, daemonEnvironment: [
            "KANGAROO_NODE_PEER": "127.0.0.1:\(port)", "KANGAROO_NODE_PEER_TOKEN_FILE": peerNode.sub("token"),
            "KANGAROO_HOSTS_DIR": peerNode.sub("no-hosts"),
        ])
        defer { tearDownNode(peerNode, containerd: peerContainerd) }
        let registry = try TestRegistry()
        let store = try TempDir("snap-peer-store")
        let ref = "\(registry.host)/lazy/sample:kangaroo"
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", ref], check: true)
        let pull = try run("/usr/bin/ctr-remote", peerContainerd.ctr + ["image", "rpull", "--plain-http", "--snapshotter", "kangaroo", ref])
        #expect(pull.status == 0, "\(pull.output)")
        let run1 = try run("/usr/bin/ctr", peerContainerd.ctr + ["run", "--rm"] + kangaroo + [ref, "peer-probe", "sh", "-c", probe])
        #expect(run1.status == 0, "\(run1.output)")
        // The mount process kept compressed chunks for the peer (--keep-compressed).
        let cache = peerNode.sub("root/cache")
        let held = try cachedChunks(cache).flatMap { hex, chunks in chunks.filter(\.held).map { (hex, $0) } }
        let compressedHeld = held.filter { $0.1.compression != 0 }
        #expect(!compressedHeld.isEmpty, "no compressed chunk held with its compressed bytes: \(held.count) held")
        for (hex, chunk) in (compressedHeld + held).prefix(4) {
            let url = "/v2/lazy/sample/blobs/sha256:\(hex)"
            let range = "Range: bytes=\(chunk.offset)-\(chunk.range.upperBound - 1)"
            let a = try run("bash", ["-c", "set -o pipefail; curl -sf -H 'Authorization: Bearer \(token)' -H '\(range)' http://127.0.0.1:\(port)\(url) | sha256sum"])
            let b = try run("bash", ["-c", "set -o pipefail; curl -sfL -H '\(range)' http://\(registry.host)\(url) | sha256sum"])
            #expect(a.status == 0 && b.status == 0 && a.stdout == b.stdout, "\(hex) \(range): \(a.output) \(b.output)")
            let stranger = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", range, "http://127.0.0.1:\(port)\(url)"])
            #expect(stranger.stdout == "401")
        }
        #expect(try run("/usr/bin/ctr", peerContainerd.ctr + ["images", "rm", "--sync", ref]).status == 0)
    }

    @Test("a plain `ctr pull` of a Kangaroo image (no labels, layers applied as tars) fails and leaves nothing once the image is removed")
    func plainPullOfAKangarooImageFails() throws {
        let registry = try TestRegistry()
        let store = try TempDir("snap-store2")
        let ref = "\(registry.host)/plain/sample:kangaroo"
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", ref], check: true)
        // ctr 1.6's pull fetches every layer, then applies each through a
        // Prepare without labels: nothing tells a snapshotter what it is.
        let pull = try ctr(["images", "pull", "--plain-http", "--snapshotter", "kangaroo", ref])
        #expect(pull.status != 0)
        #expect(pull.output.contains("application/vnd.oci.image.layer.kangaroo.bootstrap.v1"), "\(pull.output)\n\(nodeLog)")
        #expect(try ctr(["snapshots", "--snapshotter", "kangaroo", "ls"]).stdout.split(separator: "\n").count <= 1)
        try ctr(["images", "rm", "--sync", ref], check: true)
        for _ in 0..<50 where snapshotDirectories > 0 { usleep(100_000) }
        #expect(snapshotDirectories == 0, "\(nodeLog)")
    }
}
