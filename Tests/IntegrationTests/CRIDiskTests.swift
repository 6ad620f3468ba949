import Foundation
import KangarooTestSupport
import Testing

/// Sandbox disks under containerd's CRI: the node daemon with `--disks`
/// (KANGAROO_NODE_DISKS=1 in containerd's environment, which the shim's
/// daemon inherits), the pod annotation io.kangaroo.disk-size passed on by
/// the runtime's pod_annotations.
/// (In the serialized suite of the disk tests: tests that attach and detach
/// loop devices do not run beside each other.)
extension DiskTests {
    var image: String { "kangaroo.test/sample:latest" }
    var script: String { TestEnv.repoRoot + "/scripts/cri-pod.py" }

    @Test("CRI: each pod writes on a disk of its own: df shows its size, filling it gives ENOSPC and leaves the other pod's disk alone; removal gives it back",
          .enabled(if: FileManager.default.fileExists(atPath: "/usr/bin/containerd"), "needs containerd"))
    func podsHaveTheirOwnDisks() throws {
        try criPodsHaveTheirOwnDisks()
    }

    /// A node daemon's environment with sandbox disks on (a pool of two)
    /// from a node file in `node`.
    func diskNodeEnvironment(_ node: TempDir, nodeSize: String, diskSize: String) throws -> [String: String] {
        var env = TestContainerd.nodeEnvironment(node)
        env["KANGAROO_NODE_DISKS"] = "1"
        env["KANGAROO_DISK_FILE"] = node.sub("disks/node.img")
        env["KANGAROO_DISK_STATE"] = node.sub("disks/state")
        env["KANGAROO_DISK_NODE_SIZE"] = nodeSize
        env["KANGAROO_DISK_SIZE"] = diskSize
        env["KANGAROO_DISK_POOL"] = "2"
        try FileManager.default.createDirectory(atPath: node.sub("disks"), withIntermediateDirectories: true)
        return env
    }

    func criPodsHaveTheirOwnDisks() throws {
        let node = try TempDir("cri-disk")
        let env = try diskNodeEnvironment(node, nodeSize: "2G", diskSize: "96M")
        let cri = criConfig(node: node, snapshotter: "overlayfs")
            .replacingOccurrences(of: "runtime_type = \"io.containerd.kangaroo.v2\"",
                                  with: "runtime_type = \"io.containerd.kangaroo.v2\"\n          pod_annotations = [\"io.kangaroo.*\"]")
        let containerd = try TestContainerd(extraConfig: cri, cri: true, environment: env)
        func disks() throws -> [String: Any] {
            let r = try run(TestEnv.kangaroo, ["disk", "status", "--json"], env: env)
            return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        }
        defer {
            _ = try? run("python3", [script, containerd.socket, "--remove-all"])
            tearDownNode(node, containerd: containerd)
            _ = try? run(TestEnv.kangaroo, ["disk", "remove"], env: env)
            if let debug = ProcessInfo.processInfo.environment["KANGAROO_TEST_KEEP_LOG"] {
                _ = try? run("/bin/cp", [node.sub("state/node.log"), debug])
            }
        }
        try importPauseAndSample(containerd)
        func pod(_ name: String, _ extra: [String]) throws -> [String: Any] {
            let r = try run("python3", [script, containerd.socket, "kangaroo", image, name, "--keep", "--log-dir", node.sub("logs/" + name)] + extra)
            #expect(r.status == 0, "\(name): \(r.output)\n\(containerd.log.suffix(2000))")
            return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        }
        func outputs(_ p: [String: Any]) -> [String] { (p["exec"] as? [[String: Any]] ?? []).map { ($0["stdout"] as? String ?? "") + ($0["stderr"] as? String ?? "") } }
        let a = try pod("disk-a", ["--annotation", "io.kangaroo.disk-size=64M",
                                   "--exec", "df -k / | tail -1", "--exec", "dd if=/dev/zero of=/fill bs=1M count=200 2>&1; echo status=$?"])
        let outA = outputs(a)
        let total = Int(outA.first?.split(separator: " ").filter { !$0.isEmpty }.dropFirst().first ?? "") ?? 0
        #expect(total > 48 * 1024 && total <= 64 * 1024, "df in the pod asking for 64M: \(outA)")
        #expect(outA.count == 2 && outA[1].contains("No space left on device") && !outA[1].contains("status=0"), "\(outA)")
        let b = try pod("disk-b", ["--exec", "df -k / | tail -1", "--exec", "dd if=/dev/zero of=/ok bs=1M count=30 2>&1; echo status=$?"])
        let outB = outputs(b)
        let totalB = Int(outB.first?.split(separator: " ").filter { !$0.isEmpty }.dropFirst().first ?? "") ?? 0
        #expect(totalB > 72 * 1024 && totalB <= 96 * 1024, "df in the pod of the pool's size: \(outB)")
        #expect(outB.count == 2 && outB[1].contains("status=0"), "the other pod writes on: \(outB)")
        let during = try disks()
        #expect(during["attached"] as? Int == 2, "\(during)")
        let status = try run(TestEnv.kangaroo, ["node", "status", "--shim-socket", node.sub("shim.sock")]).stdout
        #expect(status.contains("DISKS") && status.contains("2 attached"), "\(status)")
        let removed = try run("python3", [script, containerd.socket, "--remove-all"])
        #expect(removed.stdout.contains("\"removed\": 2"), "\(removed.output)")
        // The daemon refills the pool meanwhile. Every loop device over the
        // node file is a disk of the pool's state (a disk whose device a
        // process elsewhere still holds stays reserved as releasing, never
        // forgotten), and none is a pod's any more.
        func loops() throws -> [Int] {
            try run("/usr/sbin/losetup", ["-a"]).stdout.split(separator: "\n").filter { $0.contains(node.sub("disks/node.img")) }
                .compactMap { Int($0.split(separator: ":").first?.dropFirst("/dev/loop".count) ?? "") }
        }
        func known(_ status: [String: Any]) -> Set<Int> {
            Set((status["disks"] as? [[String: Any]] ?? []).compactMap { ($0["device"] as? String).flatMap { Int($0.dropFirst("/dev/loop".count)) } })
        }
        var after = try disks()
        for _ in 0..<100 where try after["free"] as? Int != 2 || !Set(loops()).isSubset(of: known(after)) {
            usleep(100_000)
            after = try disks()
        }
        #expect(after["attached"] as? Int == 0 && after["free"] as? Int == 2, "\(after)")
        let left = try loops()
        #expect(Set(left).isSubset(of: known(after)), "loop devices \(left) vs disks \(after)")
        let mounts = (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").filter { $0.contains(node.sub("state/disks")) }
        #expect(mounts.isEmpty, "\(mounts)")
    }
}
