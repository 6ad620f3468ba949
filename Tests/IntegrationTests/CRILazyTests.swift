import Foundation
import KangarooTestSupport
import Testing

/// CRI with the Kangaroo snapshotter as containerd's CRI snapshotter
/// (`disable_snapshot_annotations = false`, so CRI passes the image
/// reference with every layer): PullImage of a Kangaroo image from a
/// docker-registry on 127.0.0.1 downloads no layer, pods run on its lazy
/// mount under both runtime handlers.
@Suite("CRI lazy", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                         "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class CRILazyTests {
    let node: TempDir
    let containerd: TestContainerd
    let registry: TestRegistry
    let reference: String
    var script: String { TestEnv.repoRoot + "/scripts/cri-pod.py" }

    init() throws {
        node = try TempDir("cri-lazy-node")
        let cri = criConfig(node: node, snapshotter: "kangaroo")
        containerd = try TestContainerd.forKangaroo(node: node, extraConfig: cri, cri: true, snapshotter: true)
        let tar = containerd.dir.sub("pause.tar")
        try run("/bin/tar", ["-C", TestEnv.images + "/pause", "-cf", tar, "."], check: true)
        try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "import", "--snapshotter", "kangaroo",
                                                  "--base-name", "kangaroo.test/pause", tar], check: true)
        registry = try TestRegistry(accessLog: true)
        reference = "\(registry.host)/lazy/sample:kangaroo"
        let store = try TempDir("cri-lazy-store")
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", reference],
                check: true)
    }

    deinit {
        _ = try? run("python3", [script, containerd.socket, "--remove-all"])
        tearDownNode(node, containerd: containerd)
    }

    var nodeLog: String { String(((try? String(contentsOfFile: node.sub("node.log"), encoding: .utf8)) ?? "").suffix(3000)) }

    func json(_ r: CommandResult) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    /// containerd removes snapshots from a snapshotter at garbage collection,
    /// which deleting an image with --sync runs at once; then waits up to 5 s
    /// for the image mount to go.
    func collectGarbage() {
        _ = try? run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "tag", "kangaroo.test/pause:pause", "kangaroo.test/gc:now"])
        _ = try? run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "rm", "--sync", "kangaroo.test/gc:now"])
        for _ in 0..<50 where lazyMounts() > 0 { usleep(100_000) }
    }

    /// Removes the Kangaroo image (and runs the GC): its lazy mount goes
    /// with its layers.
    func removeImage() {
        // CRI names it by tag, by digest and by config digest (its id).
        let config = configDigest
        let names = ((try? run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "ls", "-q"]).stdout) ?? "")
            .split(separator: "\n").map(String.init)
            .filter { name in name.contains("/lazy/sample") || name == config }
        if !names.isEmpty { _ = try? run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "rm", "--sync"] + names) }
        for _ in 0..<50 where lazyMounts() > 0 { usleep(100_000) }
    }

    /// The Kangaroo image's config digest, from the registry.
    var configDigest: String? {
        guard let text = try? run("curl", ["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                                          "http://\(registry.host)/v2/lazy/sample/manifests/kangaroo"]).stdout,
              let m = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return nil }
        return (m["config"] as? [String: Any])?["digest"] as? String
    }

    func lazyMounts() -> Int {
        (procText("/proc/self/mountinfo") ?? "").split(separator: "\n")
            .filter { $0.contains(" " + node.sub("root/snapshotter/images") + "/") }.count
    }

    @Test("PullImage fetches manifest, config and bootstrap only and mounts the image; pods under kangaroo and runc observe the same on the lazy mount; it goes with the image")
    func pullIsLazyAndPodsRun() throws {
        let manifestJSON = try run("curl", ["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                                            "http://\(registry.host)/v2/lazy/sample/manifests/kangaroo"], check: true).stdout
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(manifestJSON.utf8)) as? [String: Any])
        let layers = try #require(manifest["layers"] as? [[String: Any]]).compactMap { $0["digest"] as? String }
        let before = registry.requests(matching: "/blobs/").count
        let pulled = try run("python3", [script, containerd.socket, "--pull", reference])
        #expect(pulled.status == 0, "\(pulled.output)\n\(containerd.log.suffix(2000))\n\(nodeLog)")
        // The image is mounted at the pull, in the background: the config
        // and the bootstrap come from the registry, no chunk.
        for _ in 0..<100 where lazyMounts() == 0 { usleep(50_000) }
        #expect(lazyMounts() == 1, "\(nodeLog)")
        let duringPull = Array(registry.requests(matching: "/blobs/").dropFirst(before)).filter { $0.hasPrefix("GET") }
        let config = try #require((manifest["config"] as? [String: Any])?["digest"] as? String)
        #expect(duringPull.filter { request in !request.contains(layers[0]) }.allSatisfy { $0.contains(config) },
                "the config (containerd's and the mount's): \(duringPull)")
        #expect(duringPull.filter { $0.contains(layers[0]) }.count == 1, "the bootstrap: \(duringPull)")
        #expect(duringPull.allSatisfy { request in !layers.dropFirst().contains { request.contains($0) } }, "no chunk: \(duringPull)")

        var k = json(try run("python3", [script, containerd.socket, "kangaroo", reference, "lazy-k", "--log-dir", node.sub("logs/k")]))
        var r = json(try run("python3", [script, containerd.socket, "runc", reference, "lazy-r", "--log-dir", node.sub("logs/r")]))
        #expect(k["error"] == nil && k["sandbox_ready"] as? Bool == true, "\(k)\n\(nodeLog)")
        k["start_seconds"] = nil
        r["start_seconds"] = nil
        func canonical(_ o: [String: Any]) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        }
        #expect(canonical(k) == canonical(r), "kangaroo \(canonical(k))\nrunc \(canonical(r))")
        #expect((k["exec"] as? [String: Any])?["exit_code"] as? Int == 3)
        #expect(registry.requests(matching: layers[0]).filter { $0.hasPrefix("GET") }.count == 1, "one bootstrap download")
        // Every container removed and collected: the mount stays with the
        // image, and goes with it.
        collectGarbage()
        #expect(lazyMounts() == 1, "\(nodeLog)")
        removeImage()
        #expect(lazyMounts() == 0, "\(nodeLog)")
    }

    /// What a node daemon holds: its descendants, descriptors, RSS (KiB).
    func daemonFootprint() -> (descendants: Int, fds: Int, rssKiB: Int) {
        guard let pid = nodeDaemons(socket: node.sub("shim.sock")).first else { return (-1, -1, -1) }
        let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        var parent: [Int32: Int32] = [:]
        for p in all {
            guard let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            if fields.count > 1, let pp = Int32(fields[1]) { parent[p] = pp }
        }
        func descends(_ p: Int32) -> Bool {
            var c = parent[p]
            while let x = c, x > 1 { if x == pid { return true }; c = parent[x] }
            return false
        }
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let rss = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }.flatMap { Int($0.split(separator: " ")[1]) } ?? -1
        return (all.filter(descends).count, fds, rss)
    }

    func files(below dir: String) -> Int {
        (FileManager.default.enumerator(atPath: dir)?.allObjects.count) ?? 0
    }

    func cgroups(named parent: String) -> Int {
        let out = (try? run("/bin/sh", ["-c", "find /sys/fs/cgroup -mindepth 2 -path '*/\(parent)/*' -type d 2>/dev/null | wc -l"]).stdout) ?? ""
        return Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    @Test("200 pod create/remove cycles leave no process, mount, cgroup, state file or descriptor behind; the daemon's RSS stays flat")
    func noLeaksOver200Pods() throws {
        let pulled = try run("python3", [script, containerd.socket, "--pull", reference])
        #expect(pulled.status == 0, "\(pulled.output)")
        let burst = TestEnv.repoRoot + "/bench/node/cri-burst.py"
        let parent = "kangaroo-leak-\(getpid())"
        // The pods' parent cgroup (containerd makes it) goes with the test.
        defer { _ = try? run("/bin/sh", ["-c", "for d in /sys/fs/cgroup/*/\(parent) /sys/fs/cgroup/*/*/\(parent); do [ -d \"$d\" ] && rmdir \"$d\"; done; true"]) }
        func round() throws {
            let r = try run("python3", [burst, containerd.socket, "kangaroo", reference, "10", "/" + parent])
            let o = json(r)
            #expect(o["ok"] as? Int == 10, "\(r.output)\n\(nodeLog)")
        }
        try round()  // warm-up: the daemon's pools, caches and threads
        let before = daemonFootprint()
        let stateFiles = files(below: node.sub("state"))
        for _ in 0..<19 { try round() }
        let after = daemonFootprint()
        #expect(after.descendants == before.descendants, "processes under the daemon: \(before.descendants) -> \(after.descendants)")
        #expect(after.fds <= before.fds + 2, "descriptors: \(before.fds) -> \(after.fds)")
        #expect(files(below: node.sub("state")) == stateFiles)
        let mounts = (procText("/proc/self/mountinfo") ?? "").split(separator: "\n")
            .filter { ($0.contains(" " + node.path + "/") || $0.contains(" " + containerd.dir.path + "/")) && !$0.contains("fuse.kangaroo") }
        #expect(mounts.isEmpty, "\(mounts)")
        #expect(cgroups(named: parent) == 0)
        let pods = try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "task", "ls", "-q"]).stdout
        #expect(pods.isEmpty, "\(pods)")
        collectGarbage()
        removeImage()
        #expect(lazyMounts() == 0, "the image mount goes with the image")
        // RSS: flat means at most 25 % (and 8 MiB) above the warmed-up value.
        #expect(after.rssKiB <= before.rssKiB + max(8192, before.rssKiB / 4), "daemon RSS \(before.rssKiB) KiB -> \(after.rssKiB) KiB")
        print("leak check: daemon RSS \(before.rssKiB) -> \(after.rssKiB) KiB, fds \(before.fds) -> \(after.fds), descendants \(before.descendants) -> \(after.descendants)")
    }
}
