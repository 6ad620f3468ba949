import Foundation
import KangarooOCI

/// Where `kangaroo run` keeps its state; each root can be overridden for tests.
struct StatePaths {
    /// `KANGAROO_STATE_DIR` or /var/lib/kangaroo.
    let stateDirectory: String
    /// `KANGAROO_RUNTIME_ROOT` or /run/kangaroo/runtime (the runtime's --root).
    let runtimeRoot: String

    init() {
        let env = ProcessInfo.processInfo.environment
        stateDirectory = env["KANGAROO_STATE_DIR"] ?? "/var/lib/kangaroo"
        runtimeRoot = env["KANGAROO_RUNTIME_ROOT"] ?? "/run/kangaroo/runtime"
    }

    var containers: String { stateDirectory + "/containers" }
    var images: String { stateDirectory + "/images" }
    /// The chunk cache of the lazy image mounts.
    var cache: String { stateDirectory + "/cache" }
    func container(_ id: String) -> String { containers + "/" + id }
    func image(_ hex: String) -> String { images + "/" + hex }
}

/// containers/<id>/container.json: what `ps`, `stop` and `rm` need.
struct ContainerRecord: Codable {
    var id: String
    var name: String
    var image: String
    /// Hex of the image manifest digest (names images/<hex>/).
    var imageKey: String
    var created: Double
    var detached: Bool
    var exitCode: Int32?

    func bundle(_ paths: StatePaths) -> String { paths.container(id) }
    func rootfs(_ paths: StatePaths) -> String { paths.container(id) + "/rootfs" }

    static func load(_ paths: StatePaths, id: String) -> ContainerRecord? {
        guard let data = FileManager.default.contents(atPath: paths.container(id) + "/container.json") else { return nil }
        return try? JSONDecoder().decode(ContainerRecord.self, from: data)
    }

    func save(_ paths: StatePaths) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let path = paths.container(id) + "/container.json"
        try encoder.encode(self).write(to: URL(fileURLWithPath: path + ".tmp"))
        guard rename(path + ".tmp", path) == 0 else { throw CLIError("cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    static func all(_ paths: StatePaths) -> [ContainerRecord] {
        let ids = (try? FileManager.default.contentsOfDirectory(atPath: paths.containers)) ?? []
        return ids.compactMap { load(paths, id: $0) }.sorted { $0.created < $1.created }
    }

    /// An exact id, an exact name or a unique id prefix.
    static func find(_ paths: StatePaths, _ key: String) throws -> ContainerRecord {
        let all = all(paths)
        if let r = all.first(where: { $0.id == key || $0.name == key }) { return r }
        let prefixed = all.filter { $0.id.hasPrefix(key) }
        guard prefixed.count == 1, let r = prefixed.first else {
            throw CLIError(prefixed.isEmpty ? "no such container: \(key)" : "'\(key)' matches \(prefixed.count) containers: give more of the id")
        }
        return r
    }
}

/// The subset of the OCI runtime-spec config.json (runtime-spec config.md)
/// that `kangaroo run` writes; defaults follow `kangaroo-runtime spec`.
struct BundleConfig: Encodable {
    struct User: Encodable { var uid: UInt32; var gid: UInt32; var additionalGids: [UInt32]? }
    struct Capabilities: Encodable { var bounding, effective, permitted: [String] }
    struct RLimit: Encodable { var type: String; var hard: UInt64; var soft: UInt64 }
    struct ProcessSpec: Encodable {
        var terminal = false
        var user: User
        var args: [String]
        var env: [String]
        var cwd: String
        var capabilities: Capabilities
        var rlimits = [RLimit(type: "RLIMIT_NOFILE", hard: 1024, soft: 1024)]
        var noNewPrivileges = false
    }
    struct Root: Encodable { var path: String; var readonly: Bool }
    struct MountSpec: Encodable { var destination, type, source: String; var options: [String] }
    struct Namespace: Encodable {
        var type: String
        var path: String? = nil
    }
    struct DeviceRule: Encodable { var allow: Bool; var access: String }
    struct Memory: Encodable { var limit: Int64 }
    struct CPU: Encodable { var quota: Int64; var period: UInt64 }
    struct Resources: Encodable { var devices: [DeviceRule]; var memory: Memory?; var cpu: CPU? }
    struct IDMapping: Encodable { var containerID: UInt32; var hostID: UInt32; var size: UInt32 }
    struct Linux: Encodable {
        var cgroupsPath: String
        var resources: Resources
        var namespaces: [Namespace]
        var uidMappings: [IDMapping]? = nil
        var gidMappings: [IDMapping]? = nil
        var maskedPaths: [String]
        var readonlyPaths: [String]
    }

    var ociVersion = "1.0.2"
    var process: ProcessSpec
    var root: Root
    var hostname: String
    var mounts: [MountSpec]
    var linux: Linux

    /// Docker's default capability set.
    static let defaultCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]
    static let defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// Entrypoint + (COMMAND or Cmd), Env, WorkingDir and User of the image
    /// config; `rootfs` is the mounted root, read (without following
    /// symlinks out of it) to resolve a user name.
    static func make(id: String, hostname: String, image: ImageConfiguration.Config?, command: [String],
                     extraEnv: [String], memory: Int64?, cpus: Double?, rootfs: String,
                     network: String = "none", netns: String? = nil, userRange: UInt32? = nil) throws -> BundleConfig {
        let args = (image?.entrypoint ?? []) + (command.isEmpty ? (image?.cmd ?? []) : command)
        guard !args.isEmpty else { throw CLIError("the image has no Entrypoint or Cmd: give a COMMAND") }
        var env = image?.env ?? []
        if !env.contains(where: { $0.hasPrefix("PATH=") }) { env.insert(defaultPath, at: 0) }
        env.append("HOSTNAME=\(hostname)")
        for e in extraEnv {
            let key = e.split(separator: "=", maxSplits: 1).first.map(String.init) ?? e
            env.removeAll { $0.hasPrefix(key + "=") }
            env.append(e.contains("=") ? e : e + "=")
        }
        var cwd = image?.workingDir ?? "/"
        if cwd.isEmpty || !cwd.hasPrefix("/") { cwd = "/" + cwd }
        let user = try resolveUser(image?.user ?? "", rootfs: rootfs)
        let caps = defaultCapabilities
        func mount(_ dest: String, _ type: String, _ source: String, _ opts: [String]) -> MountSpec {
            MountSpec(destination: dest, type: type, source: source, options: opts)
        }
        return BundleConfig(
            process: ProcessSpec(user: user, args: args, env: env, cwd: cwd,
                                 capabilities: Capabilities(bounding: caps, effective: caps, permitted: caps)),
            root: Root(path: "rootfs", readonly: false),
            hostname: hostname,
            mounts: [
                mount("/proc", "proc", "proc", []),
                mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
                mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
                mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
                mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
            ],
            linux: Linux(
                cgroupsPath: "/kangaroo-\(id)",
                resources: Resources(devices: [DeviceRule(allow: false, access: "rwm")],
                                     memory: memory.map { Memory(limit: $0) },
                                     cpu: cpus.map { CPU(quota: Int64(($0 * 100_000).rounded()), period: 100_000) }),
                namespaces: ["pid", "ipc", "uts", "mount", "cgroup"].map { Namespace(type: $0) }
                    + (network == "host" ? [] : [Namespace(type: "network", path: netns)])
                    + (userRange == nil ? [] : [Namespace(type: "user")]),
                uidMappings: userRange.map { [IDMapping(containerID: 0, hostID: $0, size: 65536)] },
                gidMappings: userRange.map { [IDMapping(containerID: 0, hostID: $0, size: 65536)] },
                maskedPaths: ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                              "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]))
    }

    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }

    /// `uid[:gid]` or `name[:group]` (names from the image's /etc/passwd and /etc/group).
    static func resolveUser(_ spec: String, rootfs: String) throws -> User {
        guard !spec.isEmpty else { return User(uid: 0, gid: 0) }
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        func lookup(_ file: String, _ name: String) -> (UInt32, UInt32)? {
            guard let text = RootFile.read(rootfs, ["etc", file]) else { return nil }
            for line in text.split(separator: "\n") {
                let f = line.split(separator: ":", omittingEmptySubsequences: false)
                if f.count > 3, f[0] == name, let id = UInt32(f[2]) { return (id, UInt32(f[3]) ?? 0) }
            }
            return nil
        }
        var uid: UInt32 = 0, defaultGid: UInt32 = 0
        if let n = UInt32(parts[0]) {
            uid = n
        } else if let found = lookup("passwd", parts[0]) {
            uid = found.0
            defaultGid = found.1
        } else {
            throw CLIError("user '\(parts[0])' (the image's User) is not in the image's /etc/passwd")
        }
        guard parts.count > 1 else { return User(uid: uid, gid: defaultGid) }
        if let g = UInt32(parts[1]) { return User(uid: uid, gid: g) }
        guard let group = lookup("group", parts[1]) else { throw CLIError("group '\(parts[1])' is not in the image's /etc/group") }
        return User(uid: uid, gid: group.0)
    }
}

/// Files inside a container root, opened component by component with
/// O_NOFOLLOW so that a symlink in the image never leads out to the host.
enum RootFile {
    static func openDirectory(_ root: String, _ components: [String]) -> Int32? {
        var fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        for c in components {
            let next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            close(fd)
            guard next >= 0 else { return nil }
            fd = next
        }
        return fd
    }

    static func read(_ root: String, _ path: [String]) -> String? {
        guard let name = path.last, let dir = openDirectory(root, Array(path.dropLast())) else { return nil }
        defer { close(dir) }
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        guard let data = try? handle.read(upToCount: 1 << 20) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Writes (replaces) a regular file; creates the directories on the way.
    static func write(_ root: String, _ path: [String], _ content: String) throws {
        guard let name = path.last else { return }
        var dirs: [String] = []
        for c in path.dropLast() {
            if let fd = openDirectory(root, dirs) {
                mkdirat(fd, c, 0o755)
                close(fd)
            }
            dirs.append(c)
        }
        guard let dir = openDirectory(root, dirs) else {
            throw CLIError("/\(dirs.joined(separator: "/")) in the image is not a directory (a symlink?): cannot write /\(path.joined(separator: "/"))")
        }
        defer { close(dir) }
        let fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw CLIError("cannot write /\(path.joined(separator: "/")) in the container: \(String(cString: strerror(errno)))")
        }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        try handle.write(contentsOf: Data(content.utf8))
    }
}
