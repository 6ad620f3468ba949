import Foundation
import Testing
import KangarooSystem
@testable import KangarooRuntime

@Suite(.enabled(if: integrationEnabled), .serialized)
struct RuntimeLifecycleTests {
    func status(_ root: String, _ id: String) throws -> String {
        let r = try Harness.kr(root, ["state", id])
        let j = try JSON.parse(r.out)
        guard case let .string(s)? = j["status"] else { return "?" }
        return s
    }

    @Test func createStartExecPauseKillDelete() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("life", args: ["sleep", "1000"]) { c in
            c.set(["linux", "cgroupsPath"], .string("/kangaroo-test-life"))
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "life"]); try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }

        let created = try Harness.kr(root, ["create", "--bundle", bundle, "--pid-file", bundle + "/pid", "life"])
        #expect(created.code == 0, "\(created.err)")
        #expect(try status(root, "life") == "created")
        let pid = Int32(try String(contentsOfFile: bundle + "/pid", encoding: .utf8)) ?? 0
        #expect(pid > 0)
        // Before start the user process has not run: the init still waits.
        let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline").map { String(decoding: $0, as: UTF8.self) } ?? ""
        #expect(cmdline.contains("kangaroo-runtime") && !cmdline.hasPrefix("sleep"))
        #expect(try Harness.kr(root, ["start", "life"]).code == 0)
        #expect(try status(root, "life") == "running")
        #expect(try Harness.kr(root, ["start", "life"]).code == 1)
        let exec = try Harness.kr(root, ["exec", "life", "sh", "-c", "echo $$; hostname; exit 3"])
        #expect(exec.code == 3)
        #expect(exec.out.hasSuffix("runc\n"))
        let ps = try Harness.kr(root, ["ps", "--format", "json", "life"])
        #expect(ps.out.contains(String(pid)))
        #expect(try Harness.kr(root, ["pause", "life"]).code == 0)
        #expect(try status(root, "life") == "paused")
        #expect(try Harness.kr(root, ["resume", "life"]).code == 0)
        #expect(try status(root, "life") == "running")
        let upd = try Harness.kr(root, ["update", "--memory", "64m", "--pids-limit", "42", "life"])
        #expect(upd.code == 0, "\(upd.err)")
        #expect(try String(contentsOfFile: "/sys/fs/cgroup/pids/kangaroo-test-life/pids.max", encoding: .utf8) == "42\n")
        #expect(try String(contentsOfFile: "/sys/fs/cgroup/memory/kangaroo-test-life/memory.limit_in_bytes", encoding: .utf8) == "67108864\n")
        let list = try Harness.kr(root, ["list", "--format", "json"])
        #expect(list.out.contains("\"id\":\"life\""))
        let del = try Harness.kr(root, ["delete", "life"])
        #expect(del.code == 1)  // running: needs --force
        #expect(try Harness.kr(root, ["kill", "life", "KILL"]).code == 0)
        for _ in 0..<200 { if try status(root, "life") == "stopped" { break }; usleep(10000) }
        #expect(try status(root, "life") == "stopped")
        #expect(try Harness.kr(root, ["kill", "life", "TERM"]).code == 1)
        #expect(try Harness.kr(root, ["delete", "life"]).code == 0)
        #expect(!FileManager.default.fileExists(atPath: root + "/life"))
        #expect(!Harness.cgroupExists("/kangaroo-test-life"))
        #expect(try Harness.kr(root, ["state", "life"]).code == 1)
    }

    @Test("a created container's init holds none of its caller's other descriptors while it waits for start")
    func createdInitHoldsNoInheritedDescriptors() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("fds", args: ["sleep", "1000"]) { c in
            c.set(["linux", "cgroupsPath"], .string("/kangaroo-test-fds"))
        }
        defer { _ = try? Harness.kr(root, ["delete", "--force", "fds"]); try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        // The caller has a file and a pipe open (not close-on-exec), as a
        // daemon cloning inits from many threads has other containers'.
        let created = try Harness.run(["/bin/sh", "-c", "exec 7</etc/hostname 8</etc/hostname 9>/dev/null; exec \"$0\" --root \"$1\" create --bundle \"$2\" --pid-file \"$2/pid\" fds",
                                       Harness.runtimeBinary, root, bundle])
        #expect(created.code == 0, "\(created.err)")
        let pid = Int32((try? String(contentsOfFile: bundle + "/pid", encoding: .utf8)) ?? "") ?? 0
        #expect(pid > 0)
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap { Int($0) }.sorted()
        let targets = fds.map { ($0, (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "?") }
        #expect(!targets.contains { $0.1 == "/etc/hostname" }, "the init holds its caller's files: \(targets)")
        // 0-2, the sync socket and the exec fifo.
        #expect(fds.count <= 5, "\(targets)")
        #expect(try Harness.kr(root, ["start", "fds"]).code == 0)
        let after = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap { Int($0) }.sorted()
        #expect(after == [0, 1, 2], "after exec: \(after)")
    }

    @Test(arguments: [("exit 7", Int32(7)), ("sh -c 'kill -9 $$'; exit $?", Int32(137)), ("true", Int32(0))])
    func runReturnsExitCodeLikeRunc(script: String, expected: Int32) throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("exit", args: ["sh", "-c", script])
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let r = try Harness.kr(root, ["run", "--bundle", bundle, "exit1"])
        #expect(r.code == expected, "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/exit1"))
    }

    /// A container killed by a signal: `run` exits with 128+signal, as runc.
    @Test func runReportsDeathBySignal() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("sig", args: ["sleep", "1000"])
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let pid = try Harness.spawn([Harness.runtimeBinary, "--root", root, "run", "--bundle", bundle, "sig1"])
        for _ in 0..<500 { if (try? status(root, "sig1")) == "running" { break }; usleep(10000) }
        #expect(try status(root, "sig1") == "running")
        // sleep as pid 1 ignores TERM (no handler); KILL always works.
        #expect(try Harness.kr(root, ["kill", "sig1", "KILL"]).code == 0)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        #expect((st & 0x7f) == 0 && (st >> 8) & 0xff == 137)
        #expect(!FileManager.default.fileExists(atPath: root + "/sig1"))
    }

    @Test(arguments: [
        (["linux", "namespaces", "0", "type"], JSON.number("1"), "linux.namespaces[0].type"),
        (["process", "args"], JSON.array([]), "process.args"),
        (["mounts", "1", "destination"], JSON.string("dev"), "mounts[1].destination"),
        (["process", "capabilities", "effective"], JSON.array([.string("CAP_BOGUS")]), "process.capabilities.effective[0]"),
        (["linux", "resources", "pids", "limit"], JSON.string("ten"), "linux.resources.pids.limit"),
    ])
    func invalidConfigNamesPathAndLeavesNothing(path: [String], value: JSON, field: String) throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("bad", args: ["true"]) { c in
            c.set(["linux", "cgroupsPath"], .string("/kangaroo-test-bad"))
            c.set(path, value)
        }
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let r = try Harness.kr(root, ["create", "--bundle", bundle, "bad"])
        #expect(r.code == 1)
        #expect(r.err.contains("config.json: \(field)"), "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/bad"))
        #expect(!Harness.cgroupExists("/kangaroo-test-bad"))
        #expect(Harness.mountCount(below: [bundle, root]) == 0)
    }

    @Test func failingSetupCleansUp() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("fail", args: ["/no/such/binary"]) { c in
            c.set(["linux", "cgroupsPath"], .string("/kangaroo-test-fail"))
        }
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let r = try Harness.kr(root, ["create", "--bundle", bundle, "fail"])
        #expect(r.code == 1)
        #expect(r.err.contains("/no/such/binary"))
        #expect(!FileManager.default.fileExists(atPath: root + "/fail"))
        #expect(!Harness.cgroupExists("/kangaroo-test-fail"))
    }

    @Test func hooksRunWithStateOnStdin() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let out = try Harness.tempDir("hooks")
        let hook = out + "/hook.sh"
        try "#!/bin/sh\nread -r s; echo \"$1 $s\" >> \(out)/log\n".write(toFile: hook, atomically: true, encoding: .utf8)
        chmod(hook, 0o755)
        let bundle = try Harness.bundle("hooks", args: ["true"]) { c in
            for kind in ["prestart", "createRuntime", "createContainer", "poststart", "poststop"] {
                c.append(["hooks", kind], .object([("path", .string(hook)), ("args", .array([.string(hook), .string(kind)]))]))
            }
            // startContainer runs inside the container: log through a bind mount.
            c.append(["hooks", "startContainer"], .object([("path", .string("/bin/sh")), ("args", .array([
                .string("sh"), .string("-c"), .string("read -r s; echo \"startContainer $s\" >> /hooks/log")]))]))
            c.append(["mounts"], .object([("destination", .string("/hooks")), ("type", .string("bind")), ("source", .string(out)),
                                          ("options", .array([.string("rbind"), .string("rw")]))]))
        }
        defer {
            try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root)
            try? FileManager.default.removeItem(atPath: out)
        }
        #expect(try Harness.kr(root, ["create", "--bundle", bundle, "hk"]).code == 0)
        #expect(try Harness.kr(root, ["start", "hk"]).code == 0)
        usleep(100_000)
        #expect(try Harness.kr(root, ["delete", "hk"]).code == 0)
        let log = try String(contentsOfFile: out + "/log", encoding: .utf8).split(separator: "\n")
        let kinds = log.map { $0.split(separator: " ").first.map(String.init) ?? "" }
        // startContainer runs in the init after `start` unblocks exec.fifo,
        // while `start` runs poststart: like runc, the two may interleave, so
        // only their set is fixed; everything else is strictly ordered.
        #expect(kinds.count == 6)
        #expect(Array(kinds.prefix(3)) == ["prestart", "createRuntime", "createContainer"])
        #expect(Set(kinds.dropFirst(3).prefix(2)) == ["startContainer", "poststart"])
        #expect(kinds.last == "poststop")
        #expect(log.first?.contains("\"id\":\"hk\"") == true)
        // Every hook but poststop sees the init's pid.
        #expect(log.dropLast().allSatisfy { $0.contains("\"pid\":") && !$0.contains("\"pid\":0") })
        #expect(log.last?.contains("\"status\":\"stopped\"") == true)
        // runtime-spec (and crun): prestart sees "created", createRuntime "creating".
        #expect(log.first { $0.hasPrefix("prestart ") }?.contains("\"status\":\"created\"") == true)
        #expect(log.first { $0.hasPrefix("createRuntime ") }?.contains("\"status\":\"creating\"") == true)
        #expect(log.first { $0.hasPrefix("poststart ") }?.contains("\"status\":\"running\"") == true)
    }

    @Test func killedDuringCreateIsCleanedByForceDelete() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        // A createRuntime hook that blocks keeps the runtime inside create.
        let bundle = try Harness.bundle("k9", args: ["true"]) { c in
            c.set(["linux", "cgroupsPath"], .string("/kangaroo-test-k9"))
            c.append(["hooks", "createRuntime"], .object([("path", .string("/bin/sleep")),
                                                           ("args", .array([.string("sleep"), .string("30")]))]))
        }
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let pid = try Harness.spawn([Harness.runtimeBinary, "--root", root, "create", "--bundle", bundle, "k9"])
        var waited = 0
        while !FileManager.default.fileExists(atPath: root + "/k9/state.json") || Harness.processes(matching: "sleep\u{0}30").isEmpty {
            usleep(10000); waited += 1
            if waited > 500 { break }
        }
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        for pid in Harness.processes(matching: "sleep\u{0}30") { kill(pid, SIGKILL) }
        #expect(FileManager.default.fileExists(atPath: root + "/k9"))
        let r = try Harness.kr(root, ["delete", "--force", "k9"])
        #expect(r.code == 0, "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: root + "/k9"))
        #expect(!Harness.cgroupExists("/kangaroo-test-k9"))
    }

    @Test func seccompDeniesWithConfiguredErrno() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("sc", args: ["sh", "-c", "mkdir /tmp/x 2>&1; echo rc=$?"]) { c in
            c.set(["root", "readonly"], .bool(false))
            c.append(["mounts"], .object([("destination", .string("/tmp")), ("type", .string("tmpfs")), ("source", .string("tmpfs"))]))
            c.set(["linux", "seccomp"], try JSON.parse("""
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
             "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
            """))
        }
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let r = try Harness.kr(root, ["run", "--bundle", bundle, "sc"])
        #expect(r.code == 0, "\(r.err)")
        #expect(r.out.contains("Permission denied"))
        #expect(r.out.contains("rc=1"))
    }

    @Test func userNamespaceMapsRootToHostRange() throws {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("root")
        let bundle = try Harness.bundle("userns", args: ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"]) { c in
            c.append(["linux", "namespaces"], .object([("type", .string("user"))]))
            let map: JSON = .array([.object([("containerID", .int(0)), ("hostID", .int(100000)), ("size", .int(65536))])])
            c.set(["linux", "uidMappings"], map)
            c.set(["linux", "gidMappings"], map)
            // sysfs and cgroup need a network namespace owner; keep them out.
            if case let .array(mounts)? = c["mounts"] {
                c.set(["mounts"], .array(mounts.filter { $0["destination"] != .string("/sys/fs/cgroup") && $0["destination"] != .string("/sys") }))
            }
        }
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        let r = try Harness.kr(root, ["run", "--bundle", bundle, "userns"])
        #expect(r.code == 0, "\(r.err)")
        let fields = r.out.split(whereSeparator: { $0 == " " || $0 == "\n" })
        #expect(Array(fields.prefix(3)) == ["0", "100000", "65536"])
        #expect(fields.last == "0")
    }
}
