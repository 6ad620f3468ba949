import Foundation
import KangarooTestSupport
import Testing

/// User-namespaced sandboxes under containerd's CRI: a runtime handler
/// `kangaroo-userns` whose options name a handler file saying
/// {"userns": true} (containerd's runtimeoptions ConfigPath), with sandbox
/// disks. (In the serialized suite of the disk tests.)
extension DiskTests {
    @Test("CRI userns handler: root in each pod is a 65,536-id range of its own, its processes run under it on the host, files land on its disk as the mapped id; ranges and idmapped mounts go with the pods",
          .enabled(if: FileManager.default.fileExists(atPath: "/usr/bin/containerd"), "needs containerd"))
    func criUserNamespacedSandboxes() throws {
        let node = try TempDir("cri-userns")
        // The node daemon's state must be walkable by a mapped root (as
        // /run is); the test's own directory is 0700.
        chmod(node.path, 0o711)
        let env = try diskNodeEnvironment(node, nodeSize: "1G", diskSize: "64M")
        try #"{"userns": true}"#.write(toFile: node.sub("userns.json"), atomically: true, encoding: .utf8)
        let cri = criConfig(node: node, snapshotter: "overlayfs") + criUserNamespaceHandler(configPath: node.sub("userns.json"))
        let containerd = try TestContainerd(extraConfig: cri, cri: true, environment: env)
        defer {
            _ = try? run("python3", [TestEnv.repoRoot + "/scripts/cri-pod.py", containerd.socket, "--remove-all"])
            // Whatever a failed removal left running under a range (this
            // node's daemon's descendants: other suites' nodes use the same
            // ranges).
            let left = processesUnderIDRanges(descendingFrom: nodeProcessTree(node))
            tearDownNode(node, containerd: containerd)
            for pid in left { kill(pid, SIGKILL) }
            _ = try? run(TestEnv.kangaroo, ["disk", "remove"], env: env)
        }
        try importPauseAndSample(containerd)
        func pod(_ name: String, handler: String, _ exec: [String]) throws -> [String: Any] {
            let r = try run("python3", [TestEnv.repoRoot + "/scripts/cri-pod.py", containerd.socket, handler, "kangaroo.test/sample:latest", name,
                                        "--keep", "--log-dir", node.sub("logs/" + name)] + exec.flatMap { ["--exec", $0] })
            #expect(r.status == 0, "\(name): \(r.output)\n\(containerd.log.suffix(2000))")
            return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        }
        func outputs(_ p: [String: Any]) -> [String] { (p["exec"] as? [[String: Any]] ?? []).map { ($0["stdout"] as? String ?? "") + ($0["stderr"] as? String ?? "") } }
        let inside = ["id -u; cat /proc/self/uid_map; readlink /proc/self/ns/user /proc/1/ns/user; grep ^Uid /proc/self/status", "touch /made-inside && stat -c %u /made-inside",
                      "stat -c '%u %n' /bin/busybox", "mknod /tmp/dev b 7 0 2>&1; echo status=$?",
                      "cat /proc/1/status | grep ^Uid"]
        var bases: [Int] = []
        var sandboxes: [String] = []
        for name in ["userns-a", "userns-b"] {
            let p = try pod(name, handler: "kangaroo-userns", inside)
            let out = outputs(p)
            guard out.count == inside.count else { Issue.record("\(name): \(p)"); return }
            if !out[3].contains("status=1") {
                let log = (try? String(contentsOfFile: node.sub("state/node.log"), encoding: .utf8)) ?? ""
                let lines = log.split(separator: "\n").filter { $0.contains("user namespace") || $0.contains("error") || $0.contains("warning") }
                Issue.record(Comment(rawValue: "node log: \(lines.joined(separator: "\n"))"))
            }
            let map = out[0].split(separator: "\n").map(String.init)
            #expect(map.first == "0", "id -u in \(name): \(out[0])")
            let fields = map.dropFirst().first?.split(separator: " ", omittingEmptySubsequences: true).map(String.init) ?? []
            #expect(fields.count == 3 && fields[0] == "0" && fields[2] == "65536", "uid_map in \(name): \(out[0])")
            let base = Int(fields.count == 3 ? fields[1] : "") ?? -1
            #expect(base >= 1 << 30, "the range of \(name) starts at \(base)")
            bases.append(base)
            #expect(out[1].trimmingCharacters(in: .whitespacesAndNewlines) == "0", "a file made inside is root's inside: \(out[1])")
            #expect(out[2].hasPrefix("0 "), "the image's root-owned files are root's inside (idmapped layers): \(out[2])")
            #expect(out[3].contains("status=") && !out[3].contains("status=0"), "root inside cannot make device nodes: \(out[3])")
            #expect(out[4].contains("\t0\t0\t0\t0"), "the container's pid 1 runs as root inside: \(out[4])")
            let sandbox = p["sandbox"] as? String ?? ""
            let container = (p["containers"] as? [String])?.first ?? ""
            sandboxes.append(sandbox)
            // On the host: the file belongs to the range's first id, on the
            // pod's disk; the container's processes run under the range.
            let file = node.sub("state/disks/k8s.io/\(sandbox)/\(container)/upper/made-inside")
            var st = stat()
            #expect(stat(file, &st) == 0 && Int(st.st_uid) == base && Int(st.st_gid) == base, "\(file): uid \(st.st_uid), range \(base)")
            let tasks = try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "tasks", "ls"]).stdout
            for id in [sandbox, container] {
                let line = tasks.split(separator: "\n").first { $0.hasPrefix(id) } ?? ""
                let pid = line.split(separator: " ").filter { !$0.isEmpty }.dropFirst().first.map(String.init) ?? ""
                let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                let uid = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }?.split(separator: "\t").dropFirst().first.map(String.init)
                #expect(uid == String(base), "task \(id.prefix(12)) (pid \(pid)) runs as host uid \(uid ?? "?"), range \(base)")
            }
        }
        if bases.count == 2 {
            #expect(abs(bases[0] - bases[1]) >= 65536, "the two pods' ranges overlap: \(bases)")
        }
        // A pod of the plain handler: no user namespace.
        let plain = outputs(try pod("userns-none", handler: "kangaroo", ["cat /proc/self/uid_map"]))
        #expect(plain.first?.split(separator: " ").filter { !$0.isEmpty } == ["0", "0", "4294967295\n"], "\(plain)")
        let ranges = node.sub("state/idranges/idranges.json")
        #expect(((try? String(contentsOfFile: ranges, encoding: .utf8)) ?? "").contains(sandboxes.first ?? "-"), "ranges in use are recorded")
        let removed = try run("python3", [TestEnv.repoRoot + "/scripts/cri-pod.py", containerd.socket, "--remove-all"])
        #expect(removed.stdout.contains("\"removed\": 3"), "\(removed.output)")
        // The ranges are given back and the idmapped layers unmounted.
        let left = (try? String(contentsOfFile: ranges, encoding: .utf8)) ?? ""
        #expect(!sandboxes.contains { left.contains($0) }, "ranges left: \(left)")
        let mounts = (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").filter { $0.contains(node.sub("state/userns")) }
        #expect(mounts.isEmpty, "\(mounts)")
    }

    @Test("CRI userns handler: a handler file that is not JSON is refused with a message naming it",
          .enabled(if: FileManager.default.fileExists(atPath: "/usr/bin/containerd"), "needs containerd"))
    func criUserNamespaceBadHandlerFile() throws {
        let node = try TempDir("cri-userns-bad")
        try "userns = yes".write(toFile: node.sub("userns.json"), atomically: true, encoding: .utf8)
        let cri = criConfig(node: node, snapshotter: "overlayfs") + criUserNamespaceHandler(configPath: node.sub("userns.json"))
        let containerd = try TestContainerd(extraConfig: cri, cri: true, environment: TestContainerd.nodeEnvironment(node))
        defer {
            _ = try? run("python3", [TestEnv.repoRoot + "/scripts/cri-pod.py", containerd.socket, "--remove-all"])
            tearDownNode(node, containerd: containerd)
        }
        let tar = containerd.dir.sub("pause.tar")
        try run("/bin/tar", ["-C", TestEnv.images + "/pause", "-cf", tar, "."], check: true)
        try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "import", "--base-name", "kangaroo.test/pause", tar], check: true)
        try run("/bin/tar", ["-C", TestEnv.images + "/sample", "-cf", tar, "."], check: true)
        try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "import", "--base-name", "kangaroo.test/sample", tar], check: true)
        let r = try run("python3", [TestEnv.repoRoot + "/scripts/cri-pod.py", containerd.socket, "kangaroo-userns", "kangaroo.test/sample:latest", "bad"])
        #expect(r.status != 0 && r.output.contains(node.sub("userns.json")) && r.output.contains("is not a JSON object"), "\(r.output)")
    }
}
