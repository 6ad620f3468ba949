import Foundation
import KangarooTestSupport
import Testing

/// Pods through containerd's CRI plugin, as the kubelet drives them
/// (scripts/cri-pod.py: PyPI's CRI v1 stubs), with the runtime handler
/// `kangaroo` (io.containerd.kangaroo.v2) against `runc` as the oracle; host
/// network pods (pod networks come with issue 10).
@Suite("CRI", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                    "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class CRITests {
    let node: TempDir
    let containerd: TestContainerd
    let image = "kangaroo.test/sample:latest"
    var script: String { TestEnv.repoRoot + "/scripts/cri-pod.py" }

    init() throws {
        node = try TempDir("cri-node")
        let cri = criConfig(node: node, snapshotter: "overlayfs")
        containerd = try TestContainerd.forKangaroo(node: node, extraConfig: cri, cri: true)
        try importPauseAndSample(containerd)
    }

    deinit {
        _ = try? run("python3", [script, containerd.socket, "--remove-all"])
        tearDownNode(node, containerd: containerd)
    }

    func daemons() -> [Int32] { nodeDaemons(socket: node.sub("shim.sock")) }

    func pod(_ handler: String, _ name: String, extra: [String] = []) throws -> [String: Any] {
        let r = try run("python3", [script, containerd.socket, handler, image, name, "--log-dir", node.sub("logs/" + name)] + extra)
        #expect(r.status == 0, "\(handler): \(r.output)")
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    @Test("a pod's whole lifecycle observes the same under kangaroo as under runc")
    func lifecycleMatchesRunc() throws {
        var r = try pod("runc", "pod-r")
        var k = try pod("kangaroo", "pod-k")
        #expect(k["error"] == nil, "\(k)")
        r["start_seconds"] = nil
        k["start_seconds"] = nil
        func canonical(_ o: [String: Any]) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        }
        #expect(canonical(k) == canonical(r), "kangaroo \(canonical(k))\nrunc \(canonical(r))")
        #expect(k["sandbox_ready"] as? Bool == true)
        #expect((k["exec"] as? [String: Any])?["exit_code"] as? Int == 3)
        #expect(k["memory_limit_after_update"] as? String == "67108864")
        #expect(k["pods_left"] as? Int == 0)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: node.sub("state/runtime/k8s.io"))) ?? []
        #expect(left.isEmpty, "container state left: \(left)")
    }

    @Test("several pods and containers share the one daemon, with no shim process")
    func podsShareOneDaemon() throws {
        var ids: [String] = []
        for i in 0..<3 {
            let p = try pod("kangaroo", "pod-many-\(i)", extra: ["--containers", "2", "--keep"])
            #expect((p["containers"] as? [Any])?.count == 2, "\(p)")
            ids += [p["sandbox"] as? String ?? "?"] + ((p["containers"] as? [String]) ?? [])
        }
        #expect(daemons().count == 1)
        // Other suites run runc pods meanwhile: only a shim serving one of
        // these pods (its command line names the pod or a container) counts.
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        let shims = pids.filter { pid in
            guard ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? "").contains("containerd-shim"),
                  let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8) else { return false }
            return ids.contains { cmdline.contains($0) }
        }
        #expect(shims.isEmpty, "shim processes serving these pods: \(shims)")
        let tasks = try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "task", "ls"]).stdout
        #expect(tasks.split(separator: "\n").filter { $0.contains("RUNNING") }.count == 9, "\(tasks)")  // 3 sandboxes + 6 containers
        let removed = try run("python3", [script, containerd.socket, "--remove-all"])
        #expect(removed.stdout.contains("\"removed\": 3"), "\(removed.output)")
        #expect(try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "task", "ls", "-q"]).stdout.isEmpty)
        let mounts = (procText("/proc/self/mountinfo") ?? "")
            .split(separator: "\n").filter { $0.contains(" " + containerd.dir.path + "/") }
        #expect(mounts.isEmpty, "\(mounts)")
    }

    @Test("bad input through CRI fails under both handlers with a message naming what is wrong, and leaves nothing",
          arguments: [("image", "no-such-image"), ("command", "/no/such/binary"), ("mount", "/bin"), ("resources", "cpu")])
    func badInput(kind: String, named: String) throws {
        for handler in ["runc", "kangaroo"] {
            let r = try run("python3", [script, containerd.socket, handler, image, "bad-\(kind)-\(handler)",
                                        "--log-dir", node.sub("logs/bad-\(kind)-\(handler)"), "--bad", kind])
            let o = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
            #expect(r.status == 0 && o["code"] != nil, "\(handler) \(kind): \(r.output)")
            #expect(o["running_after"] as? Int == 0, "\(handler) \(kind): \(o)")
            if handler == "kangaroo" {
                let details = (o["details"] as? String ?? "").lowercased()
                #expect(details.contains(named.lowercased()), "\(kind): \(o)")
            }
        }
        #expect(try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "task", "ls", "-q"]).stdout.isEmpty)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: node.sub("state/runtime/k8s.io"))) ?? []
        #expect(left.isEmpty, "container state left: \(left)")
        let mounts = (procText("/proc/self/mountinfo") ?? "")
            .split(separator: "\n").filter { $0.contains(" " + containerd.dir.path + "/") }
        #expect(mounts.isEmpty, "\(mounts)")
    }
}

/// The pause and sample images into CRI's namespace, named by their
/// ref.name under a base name: kangaroo.test/pause:pause,
/// kangaroo.test/sample:latest (no extra import-* names for CRI to trip on).
func importPauseAndSample(_ containerd: TestContainerd) throws {
    for (layout, base) in [("pause", "kangaroo.test/pause"), ("sample", "kangaroo.test/sample")] {
        let tar = containerd.dir.sub(layout + ".tar")
        try run("/bin/tar", ["-C", TestEnv.images + "/" + layout, "-cf", tar, "."], check: true)
        try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "import", "--base-name", base, tar], check: true)
    }
}

/// containerd deletes a task on its exit event and then closes the task's
/// connection: an answer to the Kill (or Start) that caused the exit, still
/// to be written then, fails with "ttrpc: closed" (StopPodSandbox: "failed
/// to kill sandbox container"). The daemon holds an exit event until that
/// answer is out; here every Kill and Start answer is held back (the
/// daemon's fault injection), as a loaded machine's scheduler may.
@Suite("CRI answers before exits", .serialized,
       .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class CRIAnswerOrderTests {
    let node: TempDir
    let containerd: TestContainerd
    var script: String { TestEnv.repoRoot + "/scripts/cri-pod.py" }

    init() throws {
        node = try TempDir("cri-order-node")
        containerd = try TestContainerd.forKangaroo(node: node, extraConfig: criConfig(node: node, snapshotter: "overlayfs"), cri: true,
                                                    daemonEnvironment: ["KANGAROO_FAULT_ANSWER_DELAY": "Kill=0.4,Start=0.2"])
        try importPauseAndSample(containerd)
    }

    deinit {
        _ = try? run("python3", [script, containerd.socket, "--remove-all"])
        tearDownNode(node, containerd: containerd)
    }

    @Test("pods stop and go while every Kill and Start answer is slower than the exit it causes")
    func killAnswersPrecedeExitEvents() throws {
        for i in 0..<3 {
            let r = try run("python3", [script, containerd.socket, "kangaroo", "kangaroo.test/sample:latest", "pod-order-\(i)",
                                        "--log-dir", node.sub("logs/pod-order-\(i)")])
            let o = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
            #expect(r.status == 0 && o["error"] == nil && o["pods_left"] as? Int == 0, "pod \(i): \(r.output)")
        }
        // The answers were held (the fault was in effect): each Kill that
        // succeeded took its 0.4 s.
        let status = try run(TestEnv.kangaroo, ["node", "status", "--json", "--shim-socket", node.sub("shim.sock")], check: true).stdout
        let requests = ((try? JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])?["requests"] as? [[String: Any]]) ?? []
        let kill = requests.first { $0["method"] as? String == "Kill" }
        let answered = (kill?["count"] as? Int ?? 0) - (kill?["failed"] as? Int ?? 0), seconds = kill?["seconds"] as? Double ?? 0
        #expect(answered > 0 && seconds >= 0.4 * Double(answered), "Kill answers: \(kill ?? [:])")
        #expect(try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "task", "ls", "-q"]).stdout.isEmpty)
    }
}
