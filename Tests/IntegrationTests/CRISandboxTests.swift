import Foundation
import KangarooTestSupport
import Testing

/// Whole sandboxes through containerd's CRI, every part of issue 10 at once:
/// the node daemon with a kangaroo-cni pool, sandbox disks and the
/// user-namespace handler, pods of a lazy Kangaroo image (the Kangaroo
/// snapshotter, chunks fetched from a docker-registry on 127.0.0.1).
@Suite("CRI sandboxes", .serialized, .enabled(if: TestEnv.enabled && FileManager.default.fileExists(atPath: "/usr/bin/containerd"),
                                             "needs root, KANGAROO_INTEGRATION=1 and containerd"))
final class CRISandboxTests {
    let node: TempDir
    let containerd: TestContainerd
    let registry: TestRegistry
    let reference: String
    let environment: [String: String]
    let conflist: String
    var script: String { TestEnv.repoRoot + "/scripts/cri-pod.py" }
    static let subnet = "10.241.4."

    init() throws {
        node = try TempDir("cri-sandbox")
        // Walkable by a mapped root (as /run is); the test's directory is 0700.
        chmod(node.path, 0o711)
        let bin = node.sub("cni-bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: bin + "/loopback", withDestinationPath: "/usr/lib/cni/loopback")
        try FileManager.default.createSymbolicLink(atPath: bin + "/kangaroo-cni", withDestinationPath: TestNetwork.plugin)
        try FileManager.default.createDirectory(atPath: node.sub("cni"), withIntermediateDirectories: true)
        conflist = node.sub("cni/10-pods.conflist")
        try """
            {"cniVersion":"1.0.0","name":"kgt-sandboxes","plugins":[{"type":"kangaroo-cni","bridge":"kgts0","subnet":"\(Self.subnet)0/24",
             "ifPrefix":"kt44x","poolSize":8,"stateDir":"\(node.sub("netstate"))"}]}
            """.write(toFile: conflist, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: node.sub("disks"), withIntermediateDirectories: true)
        environment = [
            "KANGAROO_NODE_NETWORK": conflist,
            "KANGAROO_NODE_DISKS": "1", "KANGAROO_DISK_FILE": node.sub("disks/node.img"), "KANGAROO_DISK_STATE": node.sub("disks/state"),
            "KANGAROO_DISK_NODE_SIZE": "2G", "KANGAROO_DISK_SIZE": "64M", "KANGAROO_DISK_POOL": "8",
        ]
        try #"{"userns": true}"#.write(toFile: node.sub("userns.json"), atomically: true, encoding: .utf8)
        let cri = criConfig(node: node, snapshotter: "kangaroo", cniBin: bin) + criUserNamespaceHandler(configPath: node.sub("userns.json"))
        containerd = try TestContainerd.forKangaroo(node: node, extraConfig: cri, cri: true, snapshotter: true,
                                                    daemonEnvironment: environment)
        let tar = containerd.dir.sub("pause.tar")
        try run("/bin/tar", ["-C", TestEnv.images + "/pause", "-cf", tar, "."], check: true)
        try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "images", "import", "--snapshotter", "kangaroo",
                                                  "--base-name", "kangaroo.test/pause", tar], check: true)
        registry = try TestRegistry()
        reference = "\(registry.host)/sandbox/sample:kangaroo"
        let store = try TempDir("cri-sandbox-store")
        try run(TestEnv.kangaroo, ["image", "convert", "--quiet", "--store", store.path, "oci:\(TestEnv.images)/sample:latest", reference],
                check: true)
        let pulled = try run("python3", [script, containerd.socket, "--pull", reference])
        guard pulled.status == 0 else {
            throw NSError(domain: "CRISandboxTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "pull \(reference): \(pulled.output)"])
        }
    }

    deinit {
        _ = try? run("python3", [script, containerd.socket, "--remove-all"])
        // Whatever a failed removal left running under a range (this node's
        // daemon's descendants: other suites' nodes use the same ranges).
        let left = processesUnderIDRanges(descendingFrom: nodeProcessTree(node))
        tearDownNode(node, containerd: containerd)
        for pid in left { kill(pid, SIGKILL) }
        _ = try? run(TestEnv.kangaroo, ["network", "remove", conflist])
        _ = try? run(TestEnv.kangaroo, ["disk", "remove"], env: TestContainerd.nodeEnvironment(node).merging(environment) { $1 })
    }

    var nodeLog: String { String(((try? String(contentsOfFile: node.sub("node.log"), encoding: .utf8)) ?? "").suffix(3000)) }

    func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    func pod(_ name: String, _ exec: [String]) throws -> [String: Any] {
        let r = try run("python3", [script, containerd.socket, "kangaroo-userns", reference, name, "--pod-network", "--keep",
                                    "--log-dir", node.sub("logs/" + name)] + exec.flatMap { ["--exec", $0] })
        #expect(r.status == 0, "\(name): \(r.output)\n\(containerd.log.suffix(2000))\n\(nodeLog)")
        return json(r.stdout)
    }

    func outputs(_ p: [String: Any]) -> [String] {
        (p["exec"] as? [[String: Any]] ?? []).map { ($0["stdout"] as? String ?? "") + ($0["stderr"] as? String ?? "") }
    }

    /// The range's first host id, from a `cat /proc/self/uid_map` output.
    func base(_ uidMap: String) -> Int {
        let f = uidMap.split(separator: "\n").last?.split(separator: " ", omittingEmptySubsequences: true) ?? []
        return f.count == 3 && f[0] == "0" && f[2] == "65536" ? Int(f[1]) ?? -1 : -1
    }

    func mountinfo() -> [String] { (procText("/proc/self/mountinfo") ?? "").split(separator: "\n").map(String.init) }

    @Test("a user-namespaced pod of a lazy image on kangaroo-cni: root inside is its range, the lazy image's files are root's, it reaches the other pod; an escaped process of one sandbox cannot open the other's disk, rootfs, image mounts, the node disk or the chunk cache")
    func userNamespacedLazyPodsAreIsolated() throws {
        let b = try pod("sandbox-b", ["cat /proc/self/uid_map", "echo secret-b > /made-inside && sync"])
        let ipB = b["ip"] as? String ?? "?", netnsB = b["netns"] as? String ?? "?"
        #expect(ipB.hasPrefix(Self.subnet), "\(b)")
        // A server in pod B's network namespace, for pod A to reach.
        let server = try NamespaceServer(netns: netnsB, port: 8080, dir: node)
        defer { withExtendedLifetime(server) {} }
        let inside = ["id -u; cat /proc/self/uid_map", "stat -c '%u %g' /bin/busybox", "echo secret-a > /made-inside && stat -c %u /made-inside",
                      "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \(ipB) 8080 | head -n 1"]
        let a = try pod("sandbox-a", inside)
        let out = outputs(a)
        let bOut = outputs(b)
        guard out.count == inside.count, bOut.count == 2 else { Issue.record("pods: \(a)\n\(b)"); return }
        #expect(out[0].hasPrefix("0\n"), "id -u: \(out[0])")
        let baseA = base(out[0]), baseB = base(bOut[0])
        #expect(baseA >= 1 << 30 && baseB >= 1 << 30 && abs(baseA - baseB) >= 65536, "ranges \(baseA), \(baseB)")
        #expect(out[1].trimmingCharacters(in: .whitespacesAndNewlines) == "0 0", "the lazy image's files are root's inside: \(out[1])")
        #expect(out[2].trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(out[2])")
        #expect(out[3].contains(" 200 "), "pod A reaches pod B at \(ipB): \(out[3])")
        #expect((a["ip"] as? String ?? "?").hasPrefix(Self.subnet), "\(a)")

        // What pod B has on the host: its disk's device and mount, its
        // upper and rootfs, its idmapped image layers; and the node's own.
        let sandboxB = b["sandbox"] as? String ?? "?", containerB = (b["containers"] as? [String])?.first ?? "?"
        let diskMount = node.sub("state/disks/k8s.io/\(sandboxB)")
        let mounts = mountinfo()
        let device = mounts.first { $0.split(separator: " ")[4] == diskMount }.flatMap { line in
            line.components(separatedBy: " - ").last?.split(separator: " ").dropFirst().first.map(String.init)
        } ?? "?"
        #expect(device.hasPrefix("/dev/loop"), "pod B's disk at \(diskMount): \(device)")
        let rootfsB = mounts.map { $0.split(separator: " ")[4] }.first { $0.hasSuffix("/\(containerB).mounts/rootfs") }.map(String.init) ?? "?"
        let layerB = mounts.map { $0.split(separator: " ")[4] }.first { $0.contains("/\(containerB).mounts/lower") }.map(String.init) ?? "?"
        // This node's lazy mounts (other suites' may be mounted meanwhile).
        let lazy = mounts.filter { $0.contains(" - fuse.kangaroo ") }.map { String($0.split(separator: " ")[4]) }
            .filter { $0.hasPrefix(node.path + "/") }
        let chunkFiles = (try? run("/usr/bin/find", [node.path, "-xdev", "-type", "f", "-path", "*cache*", "-size", "+0"]).stdout)?
            .split(separator: "\n").map(String.init) ?? []
        var targets: [(String, String)] = [
            ("pod B's disk device", device), ("the node disk file", node.sub("disks/node.img")),
            ("a file pod B wrote, on its disk", "\(diskMount)/\(containerB)/upper/made-inside"),
            ("pod B's rootfs", rootfsB + "/made-inside"), ("pod B's idmapped image layer", layerB + "/bin/busybox"),
            ("pod B's disk", diskMount),
        ]
        targets += lazy.prefix(1).map { ("the lazy image mount", $0 + "/bin/busybox") }
        targets += chunkFiles.prefix(2).map { ("the chunk cache", $0) }
        #expect(!lazy.isEmpty && !chunkFiles.isEmpty, "lazy mounts \(lazy), cache files \(chunkFiles)")
        for (what, path) in targets {
            // Root reads it (it exists), pod A's root escaped to the host does not.
            let open = ["/bin/sh", "-c", "if [ -d \"$1\" ]; then ls \"$1\"; else head -c 1 \"$1\"; fi >/dev/null", "-", path]
            let asRoot = try run(open[0], Array(open.dropFirst()))
            #expect(asRoot.status == 0, "\(what): \(path): \(asRoot.output)")
            let escaped = try run("/usr/bin/setpriv", ["--reuid=\(baseA)", "--regid=\(baseA)", "--clear-groups"] + open)
            #expect(escaped.status != 0 && escaped.output.contains("Permission denied"),
                    "pod A's host id \(baseA) opens \(what) \(path): status \(escaped.status) \(escaped.output)")
        }
        // Nothing of the node daemon's (state, image store, chunk cache,
        // disks, lazy mounts' runtime files, pool state) is readable by pod
        // A's host id but pod A's own.
        let sandboxA = a["sandbox"] as? String ?? "?", containerA = (a["containers"] as? [String])?.first ?? "?"
        let dirs = ["state", "root", "disks", "run", "netstate"].map { node.sub($0) }
        let readable = try run("/usr/bin/setpriv", ["--reuid=\(baseA)", "--regid=\(baseA)", "--clear-groups", "/usr/bin/find"] + dirs
                               + ["-readable", "-type", "f"]).stdout.split(separator: "\n")
            .filter { !$0.contains("/\(containerA).mounts/") && !$0.contains(sandboxA) }
        #expect(readable.isEmpty, "pod A's host id reads \(readable.count) of the node's files: \(readable.prefix(20))")
        // Pod B's processes are not pod A's to signal or trace.
        let tasks = try run("/usr/bin/ctr", containerd.ctr + ["-n", "k8s.io", "tasks", "ls"]).stdout
        let pidB = tasks.split(separator: "\n").first { $0.hasPrefix(containerB) }?.split(separator: " ").filter { !$0.isEmpty }.dropFirst().first
            .map(String.init) ?? "?"
        let signal = try run("/usr/bin/setpriv", ["--reuid=\(baseA)", "--regid=\(baseA)", "--clear-groups", "/bin/kill", "-0", pidB])
        #expect(signal.status != 0, "pod A's host id signals pod B's process \(pidB): \(signal.output)")
        let environ = try run("/usr/bin/setpriv", ["--reuid=\(baseA)", "--regid=\(baseA)", "--clear-groups", "/bin/cat", "/proc/\(pidB)/environ"])
        #expect(environ.status != 0, "pod A's host id reads pod B's environment: \(environ.output)")
    }

    /// What a pod cycle could leave behind, counted for this node only (other
    /// suites may run at the same time): the network's interfaces, nftables
    /// rules, addresses and pods; the node disk's loop devices and disks;
    /// mounts below the node and containerd (the image's lazy mount aside);
    /// id ranges; processes under a range; the pods' cgroups.
    struct Counts: Equatable, CustomStringConvertible {
        var values: [String: Int]
        var description: String { values.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") }
    }

    func counts(cgroupParent: String) throws -> Counts {
        var v: [String: Int] = [:]
        let links = try run("/usr/sbin/ip", ["-o", "link", "show"]).stdout.split(separator: "\n")
        v["interfaces"] = links.filter { $0.contains(": kt44x") }.count
        v["nftables rules"] = try run("/usr/sbin/nft", ["list", "table", "ip", "kangaroo_kgt_sandboxes"]).stdout.split(separator: "\n").count
        let net = json(try run(TestEnv.kangaroo, ["network", "status", "--json", conflist]).stdout)
        v["pods on the network"] = (net["pods"] as? [Any])?.count ?? -1
        v["addresses free"] = net["free"] as? Int ?? -1
        let disks = json(try run(TestEnv.kangaroo, ["disk", "status", "--json"], env: TestContainerd.nodeEnvironment(node).merging(environment) { $1 }).stdout)
        v["disks attached"] = disks["attached"] as? Int ?? -1
        v["disks free"] = disks["free"] as? Int ?? -1
        v["loop devices"] = try run("/usr/sbin/losetup", ["-j", node.sub("disks/node.img")]).stdout.split(separator: "\n").count
        v["mounts"] = mountinfo().filter { ($0.contains(" " + node.path + "/") || $0.contains(" " + containerd.dir.path + "/")) && !$0.contains(" - fuse.kangaroo ") }.count
        let ranges = json((try? String(contentsOfFile: node.sub("state/idranges/idranges.json"), encoding: .utf8)) ?? "{}")
        v["id ranges"] = (ranges["ranges"] as? [String: Any])?.count ?? 0
        v["processes under a range"] = processesUnderIDRanges(descendingFrom: nodeProcessTree(node)).count
        let cg = try run("/bin/sh", ["-c", "find /sys/fs/cgroup -mindepth 2 -path '*/\(cgroupParent)/*' -type d 2>/dev/null | wc -l"]).stdout
        v["pod cgroups"] = Int(cg.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        return Counts(values: v)
    }

    /// The counts once the daemon's pools are full again (it refills them in
    /// the background after a burst).
    func settledCounts(cgroupParent: String) throws -> Counts {
        var c = try counts(cgroupParent: cgroupParent)
        for _ in 0..<300 where c.values["disks free"] != 8 || c.values["addresses free"] != 8 {
            usleep(200_000)
            c = try counts(cgroupParent: cgroupParent)
        }
        return c
    }

    @Test("500 pod cycles, each pod with its own network, disk and user namespace, leave no namespace, interface, nftables rule, loop device, mount, address, disk or id range behind (counted)")
    func noLeaksOver500Pods() throws {
        let burst = TestEnv.repoRoot + "/bench/node/cri-burst.py"
        let parent = "kangaroo-sandbox-leak-\(getpid())"
        defer { _ = try? run("/bin/sh", ["-c", "for d in /sys/fs/cgroup/*/\(parent) /sys/fs/cgroup/*/*/\(parent); do [ -d \"$d\" ] && rmdir \"$d\"; done; true"]) }
        var namespaces: [String] = []
        var cycles = 0
        func round(_ n: Int) throws {
            let r = try run("python3", [burst, containerd.socket, "kangaroo-userns", reference, "\(n)", "/" + parent, "--pod-network"])
            let o = json(r.stdout)
            #expect(o["ok"] as? Int == n && (o["errors"] as? [Any])?.isEmpty == true, "\(r.output)\n\(nodeLog)")
            namespaces += o["netns"] as? [String] ?? []
            cycles += n
        }
        try round(8)  // warm-up: the daemon's pools, threads and caches
        let before = try settledCounts(cgroupParent: parent)
        #expect(before.values["pods on the network"] == 0 && before.values["disks attached"] == 0 && before.values["id ranges"] == 0
                && before.values["processes under a range"] == 0 && before.values["pod cgroups"] == 0, "after the warm-up: \(before)")
        while cycles < 508 { try round(20) }
        let after = try settledCounts(cgroupParent: parent)
        #expect(after == before, "before: \(before)\nafter:  \(after)")
        #expect(namespaces.count == cycles, "\(namespaces.count) network namespaces for \(cycles) pods")
        let left = namespaces.filter { FileManager.default.fileExists(atPath: $0) }
        #expect(left.isEmpty, "\(left.count) of the pods' network namespaces are left: \(left.prefix(5))")
        print("sandbox leak check, \(cycles) pods: \(after)")
    }
}
