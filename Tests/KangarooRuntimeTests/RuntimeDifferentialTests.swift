import Foundation
import Testing
import KangarooSystem
@testable import KangarooRuntime

/// Runs the same bundle under crun and kangaroo-runtime and compares what the
/// container observes.
@Suite(.enabled(if: integrationEnabled && FileManager.default.fileExists(atPath: "/usr/bin/crun")), .serialized)
struct RuntimeDifferentialTests {
    /// What the probe prints: identity, credentials, namespaces (new or
    /// host's), normalised mounts, limits, masked/read-only paths, seccomp.
    static let probe = #"""
    id; hostname; cat /proc/sys/kernel/domainname
    grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status
    for ns in cgroup ipc mnt net pid user uts; do
      eval h=\$HOST_$ns; [ "$(readlink /proc/self/ns/$ns)" = "$h" ] && echo "$ns host" || echo "$ns new"
    done
    awk '{ for (i = 7; $i != "-"; i++); print $5, $6, $(i+1) }' /proc/self/mountinfo | grep -v '^/sys/fs/cgroup' | sort
    ulimit -n; ulimit -u; umask; pwd
    cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.shares 2>&1
    cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>&1
    wc -c < /proc/keys; ls /sys/firmware | wc -l
    (echo x > /proc/sys/kernel/domainname) 2>&1 | sed 's/.*: //'
    (touch /newfile) 2>&1 | sed 's/.*: //'
    (mkdir /tmp/d && echo mkdir-ok) 2>&1 | sed 's/.*: //'
    echo "$FOO"; ls /dev | tr '\n' ' '; echo
    cat /proc/self/uid_map /proc/self/gid_map
    echo "cgroup dirs: $(find /sys/fs/cgroup/ -mindepth 2 -type d 2>/dev/null | wc -l)"
    """#

    static func hostNamespaces() -> [(String, String)] {
        ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"].map { ns in
            ("HOST_" + ns, (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/" + ns)) ?? "")
        }
    }

    typealias Edit = @Sendable (inout JSON) throws -> Void

    static let cases: [(String, Edit)] = [
        ("default", { _ in }),
        ("user-caps-rlimits", { c in
            c.set(["process", "user"], .object([("uid", .int(1000)), ("gid", .int(1000)), ("umask", .int(0o27)),
                                                ("additionalGids", .array([.int(5), .int(7)]))]))
            c.set(["process", "rlimits"], .array([.object([("type", .string("RLIMIT_NOFILE")), ("hard", .int(512)), ("soft", .int(256))]),
                                                  .object([("type", .string("RLIMIT_NPROC")), ("hard", .int(77)), ("soft", .int(77))])]))
            let caps: JSON = .array([.string("CAP_CHOWN"), .string("CAP_NET_RAW"), .string("CAP_KILL")])
            c.set(["process", "capabilities"], .object([("bounding", caps), ("effective", caps), ("permitted", caps),
                                                        ("inheritable", caps), ("ambient", caps)]))
            c.set(["process", "noNewPrivileges"], .bool(false))
            c.set(["process", "cwd"], .string("/tmp"))
        }),
        ("hostname-env-writable", { c in
            c.set(["hostname"], .string("kangaroo-box"))
            c.set(["domainname"], .string("example.test"))
            c.set(["root", "readonly"], .bool(false))
            c.append(["process", "env"], .string("FOO=bar baz"))
            c.append(["mounts"], .object([("destination", .string("/tmp")), ("type", .string("tmpfs")), ("source", .string("tmpfs")),
                                          ("options", .array([.string("nosuid"), .string("nodev"), .string("size=1m")]))]))
        }),
        ("host-network-ipc", { c in
            if case let .array(ns)? = c["linux"]?["namespaces"] {
                c.set(["linux", "namespaces"], .array(ns.filter { $0["type"] != .string("network") && $0["type"] != .string("ipc") }))
            }
            if case let .array(mounts)? = c["mounts"] {
                // Without its own network namespace sysfs cannot be mounted fresh.
                c.set(["mounts"], .array(mounts.filter { $0["destination"] != .string("/dev/mqueue") }))
            }
        }),
        ("cgroup-limits", { c in
            c.set(["linux", "resources", "memory"], .object([("limit", .int(64 << 20))]))
            c.set(["linux", "resources", "pids"], .object([("limit", .int(33))]))
            c.set(["linux", "resources", "cpu"], .object([("shares", .int(512)), ("quota", .int(50000)), ("period", .int(100000))]))
        }),
        ("seccomp-errno", { c in
            c.set(["root", "readonly"], .bool(false))
            c.append(["mounts"], .object([("destination", .string("/tmp")), ("type", .string("tmpfs")), ("source", .string("tmpfs"))]))
            c.set(["linux", "seccomp"], try JSON.parse("""
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
             "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                          {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}
            """))
        }),
        ("userns", { c in
            c.append(["linux", "namespaces"], .object([("type", .string("user"))]))
            let map: JSON = .array([.object([("containerID", .int(0)), ("hostID", .int(300000)), ("size", .int(65536))])])
            c.set(["linux", "uidMappings"], map)
            c.set(["linux", "gidMappings"], map)
            c.set(["linux", "resources", "memory"], .object([("limit", .int(48 << 20))]))
        }),
        ("no-cgroupns-limits", { c in
            if case let .array(ns)? = c["linux"]?["namespaces"] {
                c.set(["linux", "namespaces"], .array(ns.filter { $0["type"] != .string("cgroup") }))
            }
            c.set(["linux", "resources", "memory"], .object([("limit", .int(64 << 20))]))
            c.set(["linux", "resources", "pids"], .object([("limit", .int(42))]))
            c.set(["linux", "resources", "cpu"], .object([("quota", .int(25000)), ("period", .int(100000))]))
        }),
        ("userns-no-cgroupns", { c in
            if case let .array(ns)? = c["linux"]?["namespaces"] {
                c.set(["linux", "namespaces"], .array(ns.filter { $0["type"] != .string("cgroup") } + [.object([("type", .string("user"))])]))
            }
            let map: JSON = .array([.object([("containerID", .int(0)), ("hostID", .int(400000)), ("size", .int(65536))])])
            c.set(["linux", "uidMappings"], map)
            c.set(["linux", "gidMappings"], map)
            c.set(["linux", "resources", "pids"], .object([("limit", .int(55))]))
        }),
        ("masked-readonly-devices", { c in
            c.append(["linux", "maskedPaths"], .string("/etc/passwd"))
            c.append(["linux", "readonlyPaths"], .string("/proc/sysrq-trigger"))
            c.append(["linux", "devices"], .object([("type", .string("c")), ("path", .string("/dev/fuse")), ("major", .int(10)),
                                                    ("minor", .int(229)), ("fileMode", .int(0o666))]))
        }),
    ]

    static func runBoth(_ name: String, _ edit: Edit, args: [String]) throws -> (crun: Harness.Result, kangaroo: Harness.Result) {
        try Harness.ensureDeps()
        let root = try Harness.tempDir("diffroot")
        let bundle = try Harness.bundle("diff-\(name)", args: args) { c in
            for (k, v) in hostNamespaces() { c.append(["process", "env"], .string("\(k)=\(v)")) }
            try edit(&c)
        }
        defer { try? FileManager.default.removeItem(atPath: bundle); try? FileManager.default.removeItem(atPath: root) }
        var config = try JSON.parse(String(contentsOfFile: bundle + "/config.json", encoding: .utf8))
        config.set(["linux", "cgroupsPath"], .string("/kangaroo-test-diff-crun-\(name)"))
        try config.serialized().write(toFile: bundle + "/config.json", atomically: true, encoding: .utf8)
        let crun = try Harness.crun(root + "/crun", ["run", "-b", bundle, "diff-\(name)"])
        config.set(["linux", "cgroupsPath"], .string("/kangaroo-test-diff-kr-\(name)"))
        try config.serialized().write(toFile: bundle + "/config.json", atomically: true, encoding: .utf8)
        let kr = try Harness.kr(root + "/kr", ["run", "--bundle", bundle, "diff-\(name)"])
        return (crun, kr)
    }

    @Test(arguments: cases.map(\.0))
    func containerObservesTheSameAsUnderCrun(_ name: String) throws {
        let edit = Self.cases.first { $0.0 == name }!.1
        let (crun, kr) = try Self.runBoth(name, edit, args: ["sh", "-c", Self.probe])
        #expect(crun.code == 0, "crun failed: \(crun.err)")
        #expect(kr.code == crun.code, "kangaroo-runtime: \(kr.err)")
        let a = crun.out.split(separator: "\n", omittingEmptySubsequences: false)
        let b = kr.out.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(a.count == b.count)
        for (i, (x, y)) in zip(a, b).enumerated() where x != y {
            Issue.record("line \(i): crun «\(x)» kangaroo «\(y)»")
        }
    }

    @Test(arguments: [("exit 5", 5), ("sh -c 'kill -KILL $$'; exit $?", 137), ("sh -c 'kill -USR1 $$'; exit $?", 138)] as [(String, Int32)])
    func exitStatusMatchesCrun(_ script: String, _ expected: Int32) throws {
        let (crun, kr) = try Self.runBoth("exit", { _ in }, args: ["sh", "-c", script])
        #expect(crun.code == expected)
        #expect(kr.code == crun.code)
    }
}
