import Foundation
import KangarooSystem
import Testing
@testable import KangarooRuntime

/// User namespaces, namespaces joined by path, inits that die before they
/// are ready, the container's own cgroup view, mounts without a mount
/// namespace, and settings this host cannot honour.
@Suite(.enabled(if: integrationEnabled), .serialized)
struct RuntimeNamespaceTests {
    static let idMap: JSON = .array([.object([("containerID", .int(0)), ("hostID", .int(200000)), ("size", .int(65536))])])

    func state(_ root: String, _ id: String) throws -> (status: String, pid: Int32) {
        let j = try JSON.parse(try Harness.kr(root, ["state", id]).out)
        guard case let .string(s)? = j["status"], case let .number(p)? = j["pid"] else { return ("?", 0) }
        return (s, Int32(p) ?? 0)
    }

    func waitStopped(_ root: String, _ id: String) throws {
        for _ in 0..<300 { if try state(root, id).status == "stopped" { return }; usleep(10000) }
    }

    func cleanup(_ paths: String...) { for p in paths { try? FileManager.default.removeItem(atPath: p) } }

    /// Host mounts at or below `path` (other tests mount and unmount
    /// elsewhere meanwhile, so the whole table is no measure).
    func mounts(below path: String) -> Int {
        let resolved = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? path
        return ((try? Mounts.mountPoints()) ?? []).filter { $0 == resolved || $0.hasPrefix(resolved + "/") }.count
    }

    func hostUID(_ pid: Int32) -> String {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return status.split(separator: "\n").first { $0.hasPrefix("Uid:") }?.split(separator: "\t").dropFirst().first.map(String.init) ?? ""
    }

    /// create/start/exec/kill/delete of a container whose root is host id
    /// 200000, with every default mount (sysfs, cgroup) and create's fifo.
    @Test func userNamespacedLifecycle() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("usernslife", args: ["sleep", "1000"]) { c in
            c.append(["linux", "namespaces"], .object([("type", .string("user"))]))
            c.set(["linux", "uidMappings"], Self.idMap)
            c.set(["linux", "gidMappings"], Self.idMap)
            c.set(["linux", "resources", "pids"], .object([("limit", .int(37))]))
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "ul"]); cleanup(bundle, root) }
        let created = try Harness.kr(root, ["create", "--bundle", bundle, "ul"])
        #expect(created.code == 0, "\(created.err)")
        let (status, pid) = try state(root, "ul")
        #expect(status == "created")
        #expect(pid > 0)
        #expect(try Harness.kr(root, ["start", "ul"]).code == 0)
        #expect(try state(root, "ul").status == "running")
        // Outside: the process runs as the mapped host id.
        #expect(hostUID(pid) == "200000")
        #expect(try String(contentsOfFile: "/proc/\(pid)/uid_map", encoding: .utf8).split(whereSeparator: \.isWhitespace) == ["0", "200000", "65536"])
        // Inside (through exec): root, the same map, its own pids limit.
        let inside = try Harness.kr(root, ["exec", "ul", "sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/gid_map; cat /sys/fs/cgroup/pids/pids.max"])
        #expect(inside.code == 0, "\(inside.err)")
        #expect(inside.out.split(whereSeparator: \.isWhitespace) == ["0", "0", "200000", "65536", "0", "200000", "65536", "37"])
        #expect(try Harness.kr(root, ["kill", "ul", "KILL"]).code == 0)
        try waitStopped(root, "ul")
        #expect(try Harness.kr(root, ["delete", "ul"]).code == 0)
        #expect(!FileManager.default.fileExists(atPath: root + "/ul"))
        #expect(!Harness.cgroupExists("/kangaroo-test-usernslife"))
        #expect(mounts(below: testRootfs) == 0)
    }

    /// A new user namespace whose container joins a network namespace the
    /// host's user namespace owns (a pod's, made by CNI): joined before the
    /// user namespace is made, through create, start, exec and delete.
    @Test func newUserNamespaceJoinsHostOwnedNetwork() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let holder = try Harness.spawn(["/usr/bin/unshare", "--net", "/bin/sleep", "1000"])
        defer { kill(holder, SIGKILL); var st: Int32 = 0; waitpid(holder, &st, 0) }
        var netns = ""
        for _ in 0..<300 {
            let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
            if let n = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(holder)/ns/net"), n != mine,
               (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(holder)/exe"))?.hasSuffix("/sleep") == true {
                netns = n; break
            }
            usleep(10000)
        }
        try #require(!netns.isEmpty)
        let bundle = try Harness.bundle("usernsnet", args: ["sleep", "1000"]) { c in
            guard case let .array(nss)? = c["linux"]?["namespaces"] else { return }
            c.set(["linux", "namespaces"], .array(nss.map { ns in
                ns["type"] == .string("network") ? .object([("type", .string("network")), ("path", .string("/proc/\(holder)/ns/net"))]) : ns
            } + [.object([("type", .string("user"))])]))
            c.set(["linux", "uidMappings"], Self.idMap)
            c.set(["linux", "gidMappings"], Self.idMap)
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "un"]); cleanup(bundle, root) }
        let created = try Harness.kr(root, ["create", "--bundle", bundle, "un"])
        #expect(created.code == 0, "\(created.err)")
        #expect(try Harness.kr(root, ["start", "un"]).code == 0)
        let (status, pid) = try state(root, "un")
        #expect(status == "running")
        // The init is the container's pid 1, in the holder's network
        // namespace, as host id 200000.
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net") == netns)
        #expect(hostUID(pid) == "200000")
        let nspid = (try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)).split(separator: "\n")
            .first { $0.hasPrefix("NSpid:") }?.split(whereSeparator: \.isWhitespace).last
        #expect(nspid == "1")
        // exec joins the network namespace before the user namespace too.
        let inside = try Harness.kr(root, ["exec", "un", "sh", "-c", "id -u; cat /proc/self/uid_map; readlink /proc/self/ns/net"])
        #expect(inside.code == 0, "\(inside.err)")
        #expect(inside.out.split(whereSeparator: \.isWhitespace).map(String.init) == ["0", "0", "200000", "65536", netns])
        let deleted = try Harness.kr(root, ["delete", "--force", "un"])
        #expect(deleted.code == 0, "\(deleted.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/un"))
        #expect(!Harness.cgroupExists("/kangaroo-test-usernsnet"))
        #expect(mounts(below: testRootfs) == 0)
    }

    /// Every namespace type joined by path (user first), through create and
    /// start: the container's namespaces are the holder's.
    @Test func joinsEveryNamespaceTypeByPath() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let holder = try Harness.spawn(["/usr/bin/unshare", "--user", "--map-root-user", "--mount", "--uts", "--ipc", "--net",
                                        "--pid", "--cgroup", "--time", "--fork", "--kill-child", "/bin/sleep", "1000"])
        var target: Int32 = 0
        defer {
            // The sleep is pid 1 of its own namespace: kill it, not only unshare.
            if target > 0 { kill(target, SIGKILL) }
            kill(holder, SIGKILL); var st: Int32 = 0; waitpid(holder, &st, 0)
        }
        // The namespaces are those of unshare's child (the sleep).
        for _ in 0..<300 {
            let children = (try? String(contentsOfFile: "/proc/\(holder)/task/\(holder)/children", encoding: .utf8)) ?? ""
            if let c = children.split(separator: " ").first.flatMap({ Int32($0) }),
               (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(c)/exe")) == "/bin/sleep"
                || (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(c)/exe")) == "/usr/bin/sleep" {
                target = c; break
            }
            usleep(10000)
        }
        try #require(target > 0)
        let types = [("user", "user"), ("mount", "mnt"), ("uts", "uts"), ("ipc", "ipc"), ("network", "net"),
                     ("pid", "pid"), ("cgroup", "cgroup"), ("time", "time")]
        let bundle = try Harness.bundle("joinns", args: ["sleep", "1000"]) { c in
            c.set(["linux", "namespaces"], .array(types.map { .object([("type", .string($0.0)), ("path", .string("/proc/\(target)/ns/\($0.1)"))]) }))
            // The holder's user namespace maps root only: devpts' gid=5 has no id there.
            if case let .array(mounts)? = c["mounts"] {
                c.set(["mounts"], .array(mounts.map { m in
                    guard m["destination"] == .string("/dev/pts") else { return m }
                    var m = m
                    m.set(["options"], .array([.string("nosuid"), .string("noexec"), .string("newinstance"), .string("ptmxmode=0666"), .string("mode=0620")]))
                    return m
                }))
            }
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "jn"]); cleanup(bundle, root) }
        let created = try Harness.kr(root, ["create", "--bundle", bundle, "jn"])
        #expect(created.code == 0, "\(created.err)")
        #expect(try Harness.kr(root, ["start", "jn"]).code == 0)
        let pid = try state(root, "jn").pid
        for (_, name) in types {
            let want = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(target)/ns/\(name)")
            let got = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(name)")
            #expect(got == want, "\(name)")
        }
        // The init is an orphan of this pid namespace once `create` exits:
        // delete waits for its reaping (this machine's init takes 1-2 s).
        let deleted = try Harness.kr(root, ["delete", "--force", "jn"])
        #expect(deleted.code == 0, "\(deleted.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/jn"))
    }

    /// An init that dies before it reports ready makes `create` fail with the
    /// init's own message, and nothing stays behind.
    @Test(arguments: [
        ("no-proc", "create needs /proc mounted"),
        ("bad-cwd", "chdir to cwd"),
        ("bad-uid-map", "cannot write id mappings"),
    ])
    func initDyingBeforeReadyFailsCreate(_ variant: String, _ message: String) throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("dies", args: ["true"]) { c in
            switch variant {
            case "no-proc":
                if case let .array(mounts)? = c["mounts"] { c.set(["mounts"], .array(mounts.filter { $0["destination"] != .string("/proc") })) }
                c.set(["linux", "maskedPaths"], .array([]))
                c.set(["linux", "readonlyPaths"], .array([]))
            case "bad-cwd":
                c.set(["process", "cwd"], .string("/etc/passwd/x"))
            default:
                c.append(["linux", "namespaces"], .object([("type", .string("user"))]))
                let overlapping: JSON = .array([.object([("containerID", .int(0)), ("hostID", .int(200000)), ("size", .int(10))]),
                                                .object([("containerID", .int(5)), ("hostID", .int(300000)), ("size", .int(10))])])
                c.set(["linux", "uidMappings"], overlapping)
                c.set(["linux", "gidMappings"], Self.idMap)
            }
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "dies"]); cleanup(bundle, root) }
        let r = try Harness.kr(root, ["create", "--bundle", bundle, "dies"])
        #expect(r.code == 1)
        #expect(r.err.contains(message), "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/dies"))
        #expect(!Harness.cgroupExists("/kangaroo-test-dies"))
        #expect(mounts(below: testRootfs) == 0)
        #expect(Harness.processes(matching: "kangaroo-test-dies").isEmpty)
    }

    /// The cgroup files a container reads are its own limits, with and
    /// without a cgroup namespace, with and without a user namespace, and no
    /// other container's cgroup is visible.
    @Test(arguments: [(true, false), (false, false), (true, true), (false, true)])
    func cgroupViewIsTheContainersOwn(cgroupNS: Bool, userNS: Bool) throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let neighbour = try Harness.bundle("cgneighbour", args: ["sleep", "1000"])
        let bundle = try Harness.bundle("cgview", args: ["sh", "-c", """
            cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us
            echo dirs=$(find /sys/fs/cgroup/ -mindepth 2 -type d | wc -l)
            """]) { c in
            if !cgroupNS, case let .array(ns)? = c["linux"]?["namespaces"] {
                c.set(["linux", "namespaces"], .array(ns.filter { $0["type"] != .string("cgroup") }))
            }
            if userNS {
                c.append(["linux", "namespaces"], .object([("type", .string("user"))]))
                c.set(["linux", "uidMappings"], Self.idMap)
                c.set(["linux", "gidMappings"], Self.idMap)
            }
            c.set(["linux", "resources", "memory"], .object([("limit", .int(64 << 20))]))
            c.set(["linux", "resources", "pids"], .object([("limit", .int(42))]))
            c.set(["linux", "resources", "cpu"], .object([("quota", .int(30000)), ("period", .int(100000))]))
        }
        defer {
            _ = try? Harness.kr(root, ["delete", "--force", "cgn"])
            cleanup(bundle, neighbour, root)
        }
        #expect(try Harness.kr(root, ["run", "-d", "--bundle", neighbour, "cgn"]).code == 0)
        let r = try Harness.kr(root, ["run", "--bundle", bundle, "cgv"])
        #expect(r.code == 0, "\(r.err)")
        #expect(r.out.split(separator: "\n") == ["67108864", "42", "30000", "dirs=0"])
        // The host's view is unchanged: the limits are applied there too.
        #expect(!r.out.contains("9223372036854771712"))
    }

    /// A config with mounts but no mount namespace: the mounts are made in
    /// the caller's namespace below the rootfs (as runc) and removed again by
    /// delete and by a failing create; masked paths need a mount namespace.
    @Test func mountsWithoutMountNamespaceLeaveNothing() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let rootfs = try Harness.tempDir("nomntns-rootfs")
        // A rootfs of its own: the mounts land below it on the host.
        #expect(try Harness.run(["/bin/cp", "-a", testRootfs + "/.", rootfs]).code == 0)
        func bundle(_ args: [String], masked: Bool = false) throws -> String {
            try Harness.bundle("nomntns", args: args) { c in
                c.set(["root", "path"], .string(rootfs))
                if case let .array(ns)? = c["linux"]?["namespaces"] {
                    c.set(["linux", "namespaces"], .array(ns.filter { $0["type"] != .string("mount") }))
                }
                if !masked {
                    c.set(["linux", "maskedPaths"], .array([]))
                    c.set(["linux", "readonlyPaths"], .array([]))
                }
            }
        }
        let b1 = try bundle(["sh", "-c", "cat /proc/self/comm; cat /sys/fs/cgroup/pids/pids.max"])
        let b2 = try bundle(["sleep", "1000"])
        let b3 = try bundle(["/no/such/binary"])
        let b4 = try bundle(["true"], masked: true)
        defer { _ = try? Harness.kr(root, ["delete", "--force", "nm2"]); Mounts.detachAll(under: [rootfs]); cleanup(b1, b2, b3, b4, rootfs, root) }
        let r = try Harness.kr(root, ["run", "--bundle", b1, "nm1"])
        #expect(r.code == 0, "\(r.err)")
        #expect(r.out.hasPrefix("cat\n"))
        #expect(mounts(below: rootfs) == 0)
        #expect(try Harness.kr(root, ["create", "--bundle", b2, "nm2"]).code == 0)
        #expect(mounts(below: rootfs) > 0)
        #expect(try Harness.kr(root, ["delete", "--force", "nm2"]).code == 0)
        #expect(mounts(below: rootfs) == 0)
        #expect(try Harness.kr(root, ["create", "--bundle", b3, "nm3"]).code == 1)
        #expect(mounts(below: rootfs) == 0)
        let refused = try Harness.kr(root, ["create", "--bundle", b4, "nm4"])
        #expect(refused.code == 1)
        #expect(refused.err.contains("config.json: linux.maskedPaths: masked and read-only paths need a mount namespace"), "\(refused.err)")
        #expect(mounts(below: rootfs) == 0)
    }

    /// Settings the host cannot honour are refused at create with the JSON
    /// path, before anything is made. Rows this host can honour are skipped.
    @Test(arguments: [
        (["process", "apparmorProfile"], JSON.string("kangaroo-test"), "process.apparmorProfile", "apparmor"),
        (["linux", "resources", "hugepageLimits"], JSON.array([.object([("pageSize", .string("2MB")), ("limit", .int(1 << 21))])]),
         "linux.resources.hugepageLimits", "hugetlb"),
        (["linux", "resources", "network"], JSON.object([("classID", .int(7))]), "linux.resources.network.classID", "net_cls"),
        (["linux", "resources", "network"], JSON.object([("priorities", .array([.object([("name", .string("lo")), ("priority", .int(2))])]))]),
         "linux.resources.network.priorities", "net_prio"),
        (["linux", "resources", "rdma"], JSON.object([("mlx5_0", .object([("hcaHandles", .int(3))]))]), "linux.resources.rdma", "rdma"),
    ])
    func unsupportedSettingsAreRefused(path: [String], value: JSON, field: String, facility: String) throws {
        let layout = try CgroupLayout.detect()
        let supported = facility == "apparmor" ? HostSupport.apparmorEnabled() : HostSupport.available(facility, layout: layout)
        guard !supported else { return }
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("refused", args: ["true"]) { c in c.set(path, value) }
        defer { cleanup(bundle, root) }
        let r = try Harness.kr(root, ["create", "--bundle", bundle, "refused"])
        #expect(r.code == 1)
        #expect(r.err.contains("config.json: \(field):"), "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/refused"))
        #expect(!Harness.cgroupExists("/kangaroo-test-refused"))
    }

    /// A hostname without a private UTS namespace would rename the host: refused, as runc does.
    @Test func hostnameWithoutUTSNamespaceIsRefused() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("nouts", args: ["true"]) { c in
            if case let .array(ns)? = c["linux"]?["namespaces"] {
                c.set(["linux", "namespaces"], .array(ns.filter { $0["type"] != .string("uts") }))
            }
            c.set(["hostname"], .string("not-the-host"))
        }
        defer { cleanup(bundle, root) }
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let r = try Harness.kr(root, ["run", "--bundle", bundle, "nouts"])
        #expect(r.code == 1)
        #expect(r.err.contains("config.json: hostname: setting it needs a private UTS namespace"), "\(r.err)")
        var after = [CChar](repeating: 0, count: 256)
        gethostname(&after, 255)
        #expect(String(cString: after) == String(cString: name))
        #expect(!FileManager.default.fileExists(atPath: root + "/nouts"))
    }

    /// memory.kernelTCP reaches memory.kmem.tcp.limit_in_bytes.
    @Test func kernelTCPLimitIsApplied() throws {
        guard FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/memory.kmem.tcp.limit_in_bytes") else { return }
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("ktcp", args: ["sleep", "1000"]) { c in
            c.set(["linux", "resources", "memory"], .object([("limit", .int(64 << 20)), ("kernelTCP", .int(16 << 20))]))
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "kt"]); cleanup(bundle, root) }
        #expect(try Harness.kr(root, ["create", "--bundle", bundle, "kt"]).code == 0)
        #expect(try String(contentsOfFile: "/sys/fs/cgroup/memory/kangaroo-test-ktcp/memory.kmem.tcp.limit_in_bytes", encoding: .utf8) == "16777216\n")
    }
}
