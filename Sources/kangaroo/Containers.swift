import ArgumentParser
import Foundation
import KangarooLazyFS
import KangarooNetwork
import KangarooNode

/// Drives the `kangaroo-runtime` binary.
struct RuntimeClient {
    let binary: String
    let root: String

    /// KANGAROO_RUNTIME, else `kangaroo-runtime` next to this executable.
    init(paths: StatePaths) throws {
        root = paths.runtimeRoot
        if let explicit = ProcessInfo.processInfo.environment["KANGAROO_RUNTIME"] {
            binary = explicit
        } else {
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            binary = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("kangaroo-runtime").path
        }
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw CLIError("runtime \(binary) not found: build it (swift build --product kangaroo-runtime) or set KANGAROO_RUNTIME")
        }
    }

    /// Starts `kangaroo-runtime --root ROOT args...` with posix_spawn (stdio
    /// fds given, -1 = inherited; signal dispositions reset); returns the pid.
    func spawn(_ args: [String], stdin: Int32 = -1, stdout: Int32 = -1, stderr: Int32 = -1) throws -> pid_t {
        try spawnProgram(binary, ["--root", root] + args, stdin: stdin, stdout: stdout, stderr: stderr)
    }

    /// Waits for `pid`; the exit status, or 128+signal.
    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return 1 }
        }
        return exitCode(status)
    }

    /// A waitpid status as a shell reports it: the exit status, or 128+signal.
    static func exitCode(_ status: Int32) -> Int32 {
        status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Runs to completion; returns the exit status. Output to /dev/null unless fds are given.
    @discardableResult
    func call(_ args: [String], stdout: Int32? = nil, stderr: Int32? = nil) throws -> Int32 {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { if null >= 0 { close(null) } }
        let pid = try spawn(args, stdin: null, stdout: stdout ?? null, stderr: stderr ?? null)
        return Self.wait(pid)
    }

    /// `created`, `running`, `paused`, `stopped`; nil when the runtime does not know the container.
    func status(_ id: String) -> String? {
        let path = "/tmp/.kangaroo-state-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        unlink(path)
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        guard (try? call(["state", id], stdout: fd)) == 0 else { return nil }
        try? handle.seek(toOffset: 0)
        guard let data = try? handle.readToEnd(),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return json["status"] as? String
    }
}

/// Starts `binary args...` with posix_spawn (stdio fds given, -1 = inherited;
/// signal dispositions reset; `environment` replaces the inherited one;
/// `name` is argv[0], default `binary`); returns the pid.
func spawnProgram(_ binary: String, _ args: [String], stdin: Int32 = -1, stdout: Int32 = -1, stderr: Int32 = -1,
                  environment: [String]? = nil, name: String? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (fd, target) in [(stdin, Int32(0)), (stdout, 1), (stderr, 2)] where fd >= 0 {
        posix_spawn_file_actions_adddup2(&actions, fd, target)
    }
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigdefault(&attr, &all)
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attr, &none)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    let argv = ([name ?? binary] + args).map { strdup($0) }
    defer { argv.forEach { free($0) } }
    let envp = environment?.map { strdup($0) }
    defer { envp?.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = envp.map { posix_spawn(&pid, binary, &actions, &attr, argv + [nil], $0 + [nil]) }
        ?? posix_spawn(&pid, binary, &actions, &attr, argv + [nil], environ)
    guard rc == 0 else { throw CLIError("cannot start \(binary): \(String(cString: strerror(rc)))") }
    return pid
}

/// The shared read-only image mounts under images/<manifest-hex>/: `rootfs`
/// (the kernel's EROFS driver over the materialized files in `erofs`) or
/// `lazy` (`kangaroo image mount`: FUSE with its daemon, or EROFS over a
/// complete chunk cache).
enum ImageRootfs {
    /// Runs `body` holding images/<key>/lock (serialises mount and unmount of one image).
    static func withLock<T>(_ paths: StatePaths, _ key: String, _ body: () throws -> T) throws -> T {
        let dir = paths.image(key)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let fd = open(dir + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError("cannot open \(dir)/lock: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw CLIError("cannot lock \(dir)/lock: \(String(cString: strerror(errno)))") }
        }
        return try body()
    }

    static func isMounted(_ path: String) -> Bool { MountControl.mountedType(path) != nil }

    static func lazyMountPoint(_ paths: StatePaths, _ key: String) -> String { paths.image(key) + "/lazy" }

    /// Mounts `reference` lazily at images/<key>/lazy by running this
    /// executable as `kangaroo image mount --daemon` (it returns once the
    /// mount is up), unless a live mount of the image is there already; a
    /// dead one (its daemon crashed: ENOTCONN) is removed first. Call it
    /// holding the image's lock. Returns the mount point and whether an
    /// existing mount was reused. On failure nothing is left mounted.
    static func mountLazy(_ reference: String, paths: StatePaths, key: String, options: GlobalOptions,
                          credentials: RegistryCredentials?) throws -> (path: String, reused: Bool) {
        let mnt = lazyMountPoint(paths, key)
        if let type = MountControl.mountedType(mnt) {
            if type == "fuse.kangaroo" || type == "erofs", !MountControl.isDead(mnt) { return (mnt, true) }
            try unmountLazy(paths, key)
        }
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        var args = ["image", "mount", "--daemon", "--quiet", "--mode", "auto", "--prefetch", "list",
                    "--cache", paths.cache, "--store", options.store, "--log-level", options.logLevel]
        if options.plainHTTP { args.append("--plain-http") }
        args += [reference, mnt]
        // credentials go to the daemon through its environment, never its arguments
        var environment: [String]?
        if let credentials {
            var env = ProcessInfo.processInfo.environment
            env["KANGAROO_REGISTRY_USER"] = credentials.username
            env["KANGAROO_REGISTRY_PASSWORD"] = credentials.password
            environment = env.map { "\($0.key)=\($0.value)" }
        }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { if null >= 0 { close(null) } }
        let errors = try ScratchFile()
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "kangaroo"
        let status: Int32
        do {
            let pid = try spawnProgram("/proc/self/exe", args, stdin: null, stdout: null, stderr: errors.fd,
                                       environment: environment, name: exe)
            status = waitForMount(mnt, starter: pid)
        } catch {
            try? FileManager.default.removeItem(atPath: mnt)
            throw error
        }
        guard status == 0, isMounted(mnt) else {
            // the daemon forked by the mount command may still be starting: stop it, then remove what it left
            let daemons = mountProcesses(mnt)
            daemons.forEach { kill($0, SIGKILL) }
            for _ in 0..<500 where daemons.contains(where: MountControl.isAlive) { usleep(2_000) }
            try? unmountLazy(paths, key)
            try? FileManager.default.removeItem(atPath: mnt)
            let text = errors.contents().trimmingCharacters(in: .whitespacesAndNewlines)
            throw CLIError("mounting \(reference) lazily at \(mnt) failed (status \(status))"
                           + (text.isEmpty ? "" : ": " + String(text.suffix(2000))))
        }
        return (mnt, false)
    }

    /// Waits until `image mount --daemon` (process `starter`) has exited or
    /// the mount at `mnt` (not mounted before) is up with its daemon; in the
    /// latter case `starter` is no longer needed and is stopped (the daemon
    /// it forked keeps serving). The starter's exit status, 0 once the mount
    /// is up.
    static func waitForMount(_ mnt: String, starter pid: pid_t, timeout: TimeInterval = 300) -> Int32 {
        let limit = Date().addingTimeInterval(timeout)
        while true {
            var raw: Int32 = 0
            let r = waitpid(pid, &raw, WNOHANG)
            if r == pid { return RuntimeClient.exitCode(raw) }
            if r < 0 && errno != EINTR { return 1 }
            let ready = MountControl.mountedType(mnt).map { $0 == "fuse.kangaroo" || $0 == "erofs" } ?? false
            if (ready && MountControl.readState(mnt).map { $0.mode == "kernel" || MountControl.isAlive($0.pid) } ?? false)
                || Date() > limit {
                kill(pid, SIGKILL)
                let status = RuntimeClient.wait(pid)
                return ready ? 0 : status
            }
            usleep(2_000)
        }
    }

    /// Processes running `kangaroo image mount ... MOUNTPOINT` for `mnt` (the
    /// mount command and the daemon it forks, which has the same arguments).
    static func mountProcesses(_ mnt: String) -> [pid_t] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { pid_t($0) } ?? []
        return pids.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return args.count > 3 && args[1] == "image" && args[2] == "mount" && args.last == mnt
        }
    }

    /// Unmounts images/<key>/lazy (also a dead mount) and makes sure its
    /// daemon has exited; removes its state and log.
    static func unmountLazy(_ paths: StatePaths, _ key: String) throws {
        let mnt = lazyMountPoint(paths, key)
        let state = MountControl.readState(mnt)
        guard isMounted(mnt) || state != nil else { return }
        defer { try? FileManager.default.removeItem(atPath: ImageCommand.Mount.logPath(mnt)) }
        do {
            try MountControl.unmount(mnt)
        } catch {
            if isMounted(mnt) { throw CLIError("cannot unmount the lazy image mount \(mnt): \(error)") }
        }
        // the daemon exits when its mount goes away; one that did not in time is killed
        if let pid = state?.pid, state?.mode == "fuse", MountControl.isAlive(pid) {
            kill(pid, SIGKILL)
        }
    }

    /// Unmounts the image when no container record refers to it any more
    /// (the materialized files and the chunk cache stay for the next run).
    static func release(_ paths: StatePaths, _ key: String) throws {
        try withLock(paths, key) {
            guard !ContainerRecord.all(paths).contains(where: { $0.imageKey == key }) else { return }
            let mnt = paths.image(key) + "/rootfs"
            if isMounted(mnt) { umount2(mnt, 0) }
            try unmountLazy(paths, key)
        }
    }
}

/// An unlinked temporary file (for a child's output).
final class ScratchFile {
    let fd: Int32

    init() throws {
        let path = "/tmp/.kangaroo-out-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError("cannot create \(path): \(String(cString: strerror(errno)))") }
        unlink(path)
    }

    deinit { close(fd) }

    func contents() -> String {
        var data = [UInt8](repeating: 0, count: 1 << 16)
        let n = pread(fd, &data, data.count, 0)
        return n > 0 ? String(decoding: data.prefix(n), as: UTF8.self) : ""
    }
}

/// Removes everything a container has, in reverse order of creation:
/// runtime state (process, cgroup), overlay mount, directory, image mount
/// (and lazy mount daemon) once no other container uses the image.
func teardown(_ record: ContainerRecord, paths: StatePaths, runtime: RuntimeClient?) throws {
    if let runtime, runtime.status(record.id) != nil {
        try runtime.call(["delete", "--force", record.id])
        if runtime.status(record.id) != nil { throw CLIError("kangaroo-runtime could not delete container \(record.id)") }
    }
    let rootfs = record.rootfs(paths)
    if ImageRootfs.isMounted(rootfs), umount2(rootfs, 0) != 0 {
        if umount2(rootfs, Int32(MNT_DETACH)) != 0 {
            throw CLIError("cannot unmount \(rootfs): \(String(cString: strerror(errno)))")
        }
    }
    // never recurse into a still mounted root
    guard !ImageRootfs.isMounted(rootfs) else { throw CLIError("\(rootfs) is still mounted") }
    let dir = paths.container(record.id)
    // --network pod: the pod network's slot, then the namespace's pin.
    if let configPath = try? String(contentsOfFile: dir + "/network", encoding: .utf8) {
        do {
            try PodNetwork(config: try RunCommand.loadNetwork(configPath)).detach(containerID: record.id, ifname: "eth0")
        } catch {
            throw CLIError("cannot take container \(record.id) off its pod network: \(error)")
        }
        NetworkNamespace.remove(at: dir + "/netns")
    }
    // --userns: the idmapped image, then the id range.
    if FileManager.default.fileExists(atPath: dir + "/userns") {
        let lower = dir + "/lower"
        if ImageRootfs.isMounted(lower), umount2(lower, 0) != 0, umount2(lower, Int32(MNT_DETACH)) != 0 {
            throw CLIError("cannot unmount \(lower): \(String(cString: strerror(errno)))")
        }
        do { try IDRangePool(directory: paths.stateDirectory + "/idranges").release(owner: record.id) } catch {
            throw CLIError("cannot give container \(record.id)'s id range back: \(error)")
        }
    }
    // --disk-size: the disk unmounted, then given back to the pool (scrubbed).
    if let data = FileManager.default.contents(atPath: dir + "/disk.json"),
       let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
        let mnt = dir + "/disk"
        if ImageRootfs.isMounted(mnt), umount2(mnt, 0) != 0, umount2(mnt, Int32(MNT_DETACH)) != 0 {
            throw CLIError("cannot unmount \(mnt): \(String(cString: strerror(errno)))")
        }
        let config = DiskConfig(nodeFile: o["file"] as? String ?? "", nodeSize: (o["nodeSize"] as? NSNumber)?.uint64Value ?? 0,
                                defaultSize: (o["defaultSize"] as? NSNumber)?.uint64Value ?? 0, poolSize: o["pool"] as? Int ?? 0,
                                stateDir: o["state"] as? String ?? "")
        do { try DiskPool(config: config).release(owner: record.id) } catch {
            throw CLIError("cannot give container \(record.id)'s disk back: \(error)")
        }
    }
    if FileManager.default.fileExists(atPath: dir) { try FileManager.default.removeItem(atPath: dir) }
    try ImageRootfs.release(paths, record.imageKey)
}

struct Ps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List containers: id, name, image, status.")
    @Flag(name: .shortAndLong, help: "Only print ids.") var quiet = false

    func run() async throws {
        let paths = StatePaths()
        do {
            let runtime = try RuntimeClient(paths: paths)
            let records = ContainerRecord.all(paths)
            if quiet { records.forEach { print($0.id) }; return }
            func row(_ cols: [String]) {
                print(zip(cols, [14, 20, 24, 0]).map { $1 == 0 ? $0 : $0.padding(toLength: max($1, $0.count + 1), withPad: " ", startingAt: 0) }.joined())
            }
            row(["CONTAINER ID", "NAME", "IMAGE", "STATUS"])
            for r in records {
                let status = runtime.status(r.id) ?? r.exitCode.map { "exited (\($0))" } ?? "exited"
                row([r.id, r.name, r.image, status])
            }
        } catch { fail(error) }
    }
}

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop a container: SIGTERM, then SIGKILL after --time seconds.")
    @Option(name: [.customShort("t"), .long], help: "Seconds to wait after SIGTERM.") var time: Double = 10
    @Argument(help: "Container id (or unique prefix) or name.") var container: String

    func run() async throws {
        let paths = StatePaths()
        do {
            let runtime = try RuntimeClient(paths: paths)
            let record = try ContainerRecord.find(paths, container)
            guard let status = runtime.status(record.id), status != "stopped" else { print(record.id); return }
            if status == "paused" { try runtime.call(["resume", record.id]) }
            func waitStopped(_ seconds: Double) -> Bool {
                let limit = Date().addingTimeInterval(seconds)
                repeat {
                    if let s = runtime.status(record.id), s != "stopped" { usleep(20_000) } else { return true }
                } while Date() < limit
                return false
            }
            try runtime.call(["kill", record.id, "TERM"])
            if !waitStopped(time) {
                try runtime.call(["kill", record.id, "KILL"])
                guard waitStopped(10) else { throw CLIError("container \(record.id) did not stop after SIGKILL") }
            }
            print(record.id)
        } catch { fail(error) }
    }
}

struct Rm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove a container: runtime state, cgroup, overlay mount and its directory.")
    @Flag(name: .shortAndLong, help: "Also remove a running container (killed with SIGKILL).") var force = false
    @Argument(help: "Container ids (or unique prefixes) or names.") var containers: [String]

    func run() async throws {
        let paths = StatePaths()
        do {
            let runtime = try RuntimeClient(paths: paths)
            for key in containers {
                let record = try ContainerRecord.find(paths, key)
                if !force, let s = runtime.status(record.id), s != "stopped" {
                    throw CLIError("container \(record.id) is \(s): stop it first (kangaroo stop) or use rm -f")
                }
                try teardown(record, paths: paths, runtime: runtime)
                print(record.id)
            }
        } catch { fail(error) }
    }
}
