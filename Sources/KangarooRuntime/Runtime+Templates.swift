import KangarooSystem

/// Documents printed by `spec` and `features`.
extension Runtime {
    static let defaultCaps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

    /// runc `spec`: a default config.json (runc's defaults).
    public static func specTemplate(args: [String] = ["sh"], terminal: Bool = true) -> String {
        func strs(_ l: [String]) -> JSON { .array(l.map(JSON.string)) }
        func mount(_ dest: String, _ type: String, _ source: String, _ opts: [String]) -> JSON {
            .object([("destination", .string(dest)), ("type", .string(type)), ("source", .string(source)),
                     ("options", strs(opts))])
        }
        let caps = strs(defaultCaps)
        let doc: JSON = .object([
            ("ociVersion", .string(specVersion)),
            ("process", .object([
                ("terminal", .bool(terminal)),
                ("user", .object([("uid", .int(0)), ("gid", .int(0))])),
                ("args", strs(args)),
                ("env", strs(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"])),
                ("cwd", .string("/")),
                ("capabilities", .object([("bounding", caps), ("effective", caps), ("permitted", caps), ("ambient", caps)])),
                ("rlimits", .array([.object([("type", .string("RLIMIT_NOFILE")), ("hard", .int(1024)), ("soft", .int(1024))])])),
                ("noNewPrivileges", .bool(true)),
            ])),
            ("root", .object([("path", .string("rootfs")), ("readonly", .bool(true))])),
            ("hostname", .string("runc")),
            ("mounts", .array([
                mount("/proc", "proc", "proc", []),
                mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
                mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
                mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
                mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
            ])),
            ("linux", .object([
                ("resources", .object([("devices", .array([.object([("allow", .bool(false)), ("access", .string("rwm"))])]))])),
                ("namespaces", .array(["pid", "network", "ipc", "uts", "mount", "cgroup"].map { .object([("type", .string($0))]) })),
                ("maskedPaths", strs(["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                      "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                                      "/proc/scsi"])),
                ("readonlyPaths", strs(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])),
            ])),
        ])
        return doc.serialized(indent: "\t") + "\n"
    }

    /// runc `features` (runtime-spec features.md).
    public static func features() -> String {
        func strs(_ l: [String]) -> JSON { .array(l.map(JSON.string)) }
        let doc: JSON = .object([
            ("ociVersionMin", .string("1.0.0")),
            ("ociVersionMax", .string(specVersion)),
            ("hooks", strs(["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"])),
            ("mountOptions", strs(Array(MountOptions.flags.keys).sorted() + Array(MountOptions.propagation.keys).sorted())),
            ("linux", .object([
                ("namespaces", strs(["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"])),
                ("capabilities", strs(Capability.names)),
                ("cgroup", .object([("v1", .bool(true)), ("v2", .bool(true)), ("systemd", .bool(false)),
                                    ("systemdUser", .bool(false))])),
                ("seccomp", .object([
                    ("enabled", .bool(true)),
                    ("actions", strs(SeccompFilter.actionNames.sorted().filter { $0 != "SCMP_ACT_NOTIFY" })),
                    ("operators", strs(SeccompFilter.operatorNames.sorted())),
                    ("archs", strs(["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])),
                ])),
                ("apparmor", .object([("enabled", .bool(false))])),
                ("selinux", .object([("enabled", .bool(false))])),
            ])),
            ("annotations", .object([("org.kangaroo.runtime.version", .string(version))])),
        ])
        return doc.serialized(indent: "    ") + "\n"
    }
}
