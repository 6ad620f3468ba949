import CKangaroo
import KangarooSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

public struct CreateOptions: Sendable {
    public var bundle: String = "."
    public var pidFile: String?
    public var consoleSocket: String?
    public var preserveFDs: Int = 0
    public var noPivot = false
    public var detach = false
    /// Descriptors for the container process's stdin, stdout and stderr
    /// (-1: the caller's); the caller keeps and closes its own copies.
    public var stdio: [Int32] = [-1, -1, -1]
    public init() {}
}

extension Runtime {
    static let namespaceFlags: [String: Int32] = [
        "pid": 0x2000_0000, "network": 0x4000_0000, "mount": 0x0002_0000, "ipc": 0x0800_0000,
        "uts": 0x0400_0000, "user": 0x1000_0000, "cgroup": 0x0200_0000, "time": 0x0000_0080,
    ]

    /// runc `create`: sets the container up and leaves its init waiting on
    /// exec.fifo. Returns the init's pid; the caller is its parent.
    @discardableResult
    public func create(id: String, options: CreateOptions) throws(RuntimeError) -> Int32 {
        try launch(id: id, options: options, mode: KR_MODE_CREATE).pid
    }

    /// runc `run`: create + start; unless detached, waits and returns the exit
    /// code (128+signal when killed), then deletes the container.
    public func run(id: String, options: CreateOptions) throws(RuntimeError) -> Int32 {
        let launched = try launch(id: id, options: options, mode: KR_MODE_RUN)
        if options.detach { return 0 }
        let status = kr_wait_forwarding(launched.pid)
        if status < 0 {
            try? delete(id: id, force: true)
        } else if FileSystem.exists(stateDir(id) + "/state.json") {
            // The init is reaped: `delete --force` of a stopped container, with
            // the state and the open cgroup directories in hand (unless someone
            // deleted it meanwhile).
            try? destroy(launched.state, cgroup: launched.cgroup, status: .stopped)
        }
        return Self.exitCode(status)
    }

    public static func exitCode(_ status: Int32) -> Int32 {
        if status < 0 { return 255 }
        if kr_wifexited(status) != 0 { return kr_wexitstatus(status) }
        if kr_wifsignaled(status) != 0 { return 128 + kr_wtermsig(status) }
        return 255
    }

    struct Launched {
        var pid: Int32
        var state: ContainerState
        var cgroup: CgroupFiles
    }

    private func launch(id: String, options: CreateOptions, mode: kr_mode) throws(RuntimeError) -> Launched {
        try Self.validate(id: id)
        let bundle = Self.absolute(options.bundle)
        let spec = try Self.loadSpec(bundle: bundle)
        guard let process = spec.process else { throw RuntimeError(.invalidConfig, "config.json: process: missing required field") }
        guard let root = spec.root else { throw RuntimeError(.invalidConfig, "config.json: root: missing required field") }
        let rootfs = root.path.hasPrefix("/") ? root.path : bundle + "/" + root.path
        guard FileSystem.isDirectory(rootfs) else {
            throw RuntimeError(.invalidConfig, "config.json: root.path: rootfs \(rootfs) is not a directory")
        }
        if process.terminal && options.consoleSocket == nil && mode == KR_MODE_CREATE {
            throw RuntimeError(.invalidArgument, "config.json: process.terminal: a terminal needs --console-socket")
        }
        let seccomp = try spec.linux.seccomp.map { s throws(RuntimeError) in try SeccompFilter.compile(s) } ?? []

        // Namespaces: new ones are cloned, ones with a path are joined.
        var cloneFlags: Int32 = 0
        var unshareCgroup = false
        var joinPaths: [(Int32, String)] = []
        var hasMountNS = false, hasUserNS = false, joinedPid: String?
        for ns in spec.linux.namespaces {
            guard let flag = Self.namespaceFlags[ns.type] else { continue }
            if ns.type == "mount" { hasMountNS = true }
            if ns.type == "user" { hasUserNS = true }
            if let path = ns.path {
                if ns.type == "pid" { joinedPid = path } else { joinPaths.append((flag, path)) }
            } else if ns.type == "cgroup" {
                unshareCgroup = true
            } else {
                cloneFlags |= flag
            }
        }
        if hasUserNS, joinPaths.contains(where: { $0.0 == 0x1000_0000 }) == false,
           spec.linux.uidMappings.isEmpty || spec.linux.gidMappings.isEmpty {
            throw RuntimeError(.invalidConfig, "config.json: linux.uidMappings: a new user namespace needs uidMappings and gidMappings")
        }
        // A user namespace, new or joined with new namespaces to make, is
        // entered in stages (see kr_init_config.staged): namespaces the host
        // owns (a pod's network namespace) are joined and bind sources the
        // host can reach are opened before it, new namespaces made in it.
        let newUser = cloneFlags & 0x1000_0000 != 0
        let staged = newUser || (joinPaths.contains { $0.0 == 0x1000_0000 } && cloneFlags != 0)
        if !hasMountNS && (!spec.linux.maskedPaths.isEmpty || !spec.linux.readonlyPaths.isEmpty) {
            // As runc: masking would change the caller's own /proc and /sys.
            throw RuntimeError(.invalidConfig, "config.json: linux.\(spec.linux.maskedPaths.isEmpty ? "readonlyPaths" : "maskedPaths"): masked and read-only paths need a mount namespace (add {\"type\": \"mount\"} to linux.namespaces)")
        }

        let layout: CgroupLayout
        do { layout = try CgroupLayout.current() } catch {
            throw RuntimeError(.system, "read /proc/self/mountinfo", errno: error.rawValue)
        }
        try HostSupport.check(spec, layout: layout)
        if !spec.linux.namespaces.contains(where: { $0.type == "uts" }),
           spec.hostname?.isEmpty == false || spec.domainname?.isEmpty == false {
            // As runc: it would rename the host (or whoever shares its UTS namespace).
            throw RuntimeError(.invalidConfig, "config.json: \(spec.hostname?.isEmpty == false ? "hostname" : "domainname"): setting it needs a private UTS namespace (add {\"type\": \"uts\"} to linux.namespaces)")
        }
        let cgroup = CgroupFiles(Cgroup(layout: layout, path: Self.cgroupPath(spec.linux.cgroupsPath, id: id)))

        // State directory first: its existence is the lock on the id.
        let dir = stateDir(id)
        do { try FileSystem.makeDirectories(self.root, mode: 0o711) } catch {
            throw RuntimeError(.system, "create state root \(self.root)", errno: error.rawValue)
        }
        if mkdir(dir, 0o711) != 0 {
            if errno == EEXIST { throw RuntimeError(.exists, "container with id \"\(id)\" already exists") }
            throw RuntimeError.sys("create state directory \(dir)")
        }
        var state = ContainerState(id: id, bundle: bundle, rootfs: rootfs, cgroupPath: cgroup.path,
                                   annotations: spec.annotations, poststart: spec.hooks.poststart, poststop: spec.hooks.poststop,
                                   sharedPidNamespace: joinedPid != nil || !spec.linux.namespaces.contains { $0.type == "pid" })
        if !hasMountNS {
            // Without a mount namespace the mounts are made in ours, below
            // the rootfs (as runc); recorded first, so that delete (also
            // after a crash) and a failing create remove them again.
            // mountinfo names mount points by their resolved paths.
            let resolved = realpath(rootfs, nil).map { p in defer { free(p) }; return String(cString: p) } ?? rootfs
            state.hostMounts = spec.mounts.filter { $0.destination != "/" }.map { Self.join(resolved, $0.destination) }
        }
        var cleanup = Cleanup(runtime: self, dir: dir, cgroup: cgroup)
        cleanup.hostMounts = state.hostMounts
        defer { cleanup.run() }
        try save(state)

        let arena = CArena()
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        var fifoFD: Int32 = -1
        if mode == KR_MODE_CREATE {
            let fifo = dir + "/exec.fifo"
            guard mkfifo(fifo, 0o622) == 0 else { throw RuntimeError.sys("mkfifo \(fifo)") }
            fifoFD = open(fifo, 0o10000000 /* O_PATH */ | O_CLOEXEC)
            guard fifoFD >= 0 else { throw RuntimeError.sys("open \(fifo)") }
            fds.append(fifoFD)
            // The init opens it for writing as the container's user: 0622
            // whatever the umask, owned by that user's host id in a user
            // namespace (as runc).
            guard chmod(fifo, 0o622) == 0 else { throw RuntimeError.sys("chmod \(fifo)") }
            if hasUserNS, let uid = Self.hostID(process.user.uid, spec.linux.uidMappings),
               let gid = Self.hostID(process.user.gid, spec.linux.gidMappings) {
                guard chown(fifo, uid, gid) == 0 else { throw RuntimeError.sys("chown \(fifo)") }
            }
        }
        var consoleFD: Int32 = -1
        if process.terminal, let socket = options.consoleSocket {
            consoleFD = try Self.connectUnix(socket)
            fds.append(consoleFD)
        }
        var joins: [kr_ns_join] = []
        for (flag, path) in joinPaths {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                throw RuntimeError(.invalidConfig, "config.json: linux.namespaces: cannot open namespace \(path)", errno: errno)
            }
            fds.append(fd)
            joins.append(kr_ns_join(type: flag, fd: fd))
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw RuntimeError.sys("socketpair")
        }
        let parentSock = pair[0]
        fds.append(parentSock)

        let needsRuntimeHooks = !spec.hooks.prestart.isEmpty || !spec.hooks.createRuntime.isEmpty
        var cfg = kr_init_config()
        cfg.mode = Int32(mode.rawValue)
        cfg.clone_flags = cloneFlags
        cfg.unshare_cgroupns = unshareCgroup ? 1 : 0
        cfg.has_mount_ns = hasMountNS ? 1 : 0
        cfg.joins = UnsafePointer(arena.array(joins))
        cfg.n_joins = Int32(joins.count)
        cfg.staged = staged ? 1 : 0
        cfg.rootfs = UnsafePointer(arena.string(rootfs))
        cfg.readonly_rootfs = root.readonly ? 1 : 0
        cfg.no_pivot = options.noPivot ? 1 : 0
        cfg.rootfs_propagation = spec.linux.rootfsPropagation.flatMap { MountOptions.propagation[$0] } ?? 0
        let ownCgroupNS = spec.linux.namespaces.contains { $0.type == "cgroup" }
        let mounts = spec.mounts.map { m in
            Self.cMount(m, arena: arena, layout: layout, cgroupPath: cgroup.path, cgroupNS: ownCgroupNS, bundle: bundle)
        }
        cfg.mounts = UnsafePointer(arena.array(mounts))
        cfg.n_mounts = Int32(mounts.count)
        cfg.masked_paths = arena.constStringArray(spec.linux.maskedPaths)
        cfg.n_masked = Int32(spec.linux.maskedPaths.count)
        cfg.readonly_paths = arena.constStringArray(spec.linux.readonlyPaths)
        cfg.n_readonly = Int32(spec.linux.readonlyPaths.count)
        let devices = hasMountNS ? Self.devices(spec.linux.devices, arena: arena) : []
        cfg.devices = UnsafePointer(arena.array(devices))
        cfg.n_devices = Int32(devices.count)
        cfg.bind_devices = hasUserNS ? 1 : 0
        let ownUTS = spec.linux.namespaces.contains { $0.type == "uts" }
        if let h = spec.hostname, ownUTS { cfg.hostname = UnsafePointer(arena.string(h)) }
        if let d = spec.domainname, ownUTS { cfg.domainname = UnsafePointer(arena.string(d)) }
        cfg.sysctl_keys = arena.constStringArray(spec.linux.sysctl.map { $0.0 })
        cfg.sysctl_values = arena.constStringArray(spec.linux.sysctl.map { $0.1 })
        cfg.n_sysctl = Int32(spec.linux.sysctl.count)
        Self.fillProcess(&cfg, process, arena: arena)
        cfg.seccomp_filter = UnsafeRawPointer(arena.bytes(seccomp))
        cfg.seccomp_len = Int32(seccomp.count / 8)
        cfg.stdio_fds = (options.stdio[0], options.stdio[1], options.stdio[2])
        cfg.sync_fd = pair[1]
        cfg.fifo_fd = fifoFD
        cfg.console_fd = consoleFD
        cfg.terminal = process.terminal ? 1 : 0
        cfg.preserve_fds = Int32(options.preserveFDs)
        let hookState = arena.string(state.ociState(status: .creating).serialized())
        cfg.state_json = UnsafePointer(hookState)
        let cc = spec.hooks.createContainer.map { Self.cHook($0, arena: arena) }
        cfg.create_container_hooks = UnsafePointer(arena.array(cc))
        cfg.n_create_container_hooks = Int32(cc.count)
        let sc = spec.hooks.startContainer.map { Self.cHook($0, arena: arena) }
        cfg.start_container_hooks = UnsafePointer(arena.array(sc))
        cfg.n_start_container_hooks = Int32(sc.count)
        cfg.needs_runtime_hooks = needsRuntimeHooks ? 1 : 0

        // Cgroup before clone so that a failure leaves no process behind.
        do { try cgroup.create() } catch {
            throw RuntimeError(.system, "create cgroup \(cgroup.path)", errno: error.rawValue)
        }
        cleanup.removeCgroup = true
        try cgroup.apply(spec.linux.resources ?? Resources(), devices: spec.linux.devices, initial: true)

        var ownPidNS: Int32 = -1
        if let joinedPid {
            ownPidNS = open("/proc/thread-self/ns/pid", O_RDONLY | O_CLOEXEC)
            let fd = open(joinedPid, O_RDONLY | O_CLOEXEC)
            guard fd >= 0, kr_setns(fd, 0x2000_0000) == 0 else {
                let e = errno
                Self.restorePidNamespace(ownPidNS)
                throw RuntimeError(.invalidConfig, "config.json: linux.namespaces: cannot join pid namespace \(joinedPid)", errno: e)
            }
            close(fd)
        }
        var pid = withUnsafePointer(to: &cfg) { kr_spawn_init($0) }
        Self.restorePidNamespace(ownPidNS)
        close(pair[1])
        guard pid > 0 else { throw RuntimeError(.system, "clone container init", errno: -pid) }
        cleanup.pid = pid
        state.pid = pid
        state.pidStartTime = ProcessStatus.stat(pid: pid)?.startTime ?? 0
        // state.json is saved again only once the init is ready: until then the
        // init dies with this process (PDEATHSIG, EOF on the socket), and
        // `delete --force` finds the cgroup from the first save.

        if staged {
            // The init reports itself: its pid comes with its message.
            var on: Int32 = 1
            setsockopt(parentSock, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        if newUser {
            // The first stage has joined and made the user namespace.
            let msg = try Self.receive(parentSock)
            if msg.first == UInt8(ascii: "E") {
                throw RuntimeError(.containerInit, String(decoding: msg.dropFirst(), as: UTF8.self))
            }
            guard msg.first == UInt8(ascii: "U") else { throw RuntimeError(.containerInit, "container init exited during setup") }
        }
        if cloneFlags & 0x1000_0000 != 0 {
            try Self.writeMappings(pid: pid, uid: spec.linux.uidMappings, gid: spec.linux.gidMappings)
        }
        do { try cgroup.join(pid: pid) } catch {
            throw RuntimeError(.system, "add init \(pid) to cgroup \(cgroup.path)", errno: error.rawValue)
        }
        let hasContainerHooks = !spec.hooks.createContainer.isEmpty || !spec.hooks.startContainer.isEmpty
        try Self.send(parentSock, hasContainerHooks ? "G" + state.ociState(status: .creating).serialized() : "G")
        while true {
            let (msg, sender) = try Self.receiveWithSender(parentSock)
            switch msg.first {
            case UInt8(ascii: "H"):
                // runtime-spec: prestart hooks see the container "created"
                // (as crun), createRuntime hooks "creating".
                let created = state.ociState(status: .created).serialized()
                for hook in spec.hooks.prestart { try Hooks.run(hook, state: created) }
                let creating = state.ociState(status: .creating).serialized()
                for hook in spec.hooks.createRuntime { try Hooks.run(hook, state: creating) }
                try Self.send(parentSock, "h")
                continue
            case UInt8(ascii: "P"):
                // Staged: the init proper, cloned by the first stage as our
                // child; the first stage exits.
                guard staged, sender > 0 else {
                    throw RuntimeError(.containerInit, "container init sent an unexpected message")
                }
                let next = sender
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                pid = next
                cleanup.pid = pid
                state.pid = pid
                state.pidStartTime = ProcessStatus.stat(pid: pid)?.startTime ?? 0
                continue
            case UInt8(ascii: "R"):
                break
            case UInt8(ascii: "E"):
                throw RuntimeError(.containerInit, String(decoding: msg.dropFirst(), as: UTF8.self))
            default:
                throw RuntimeError(.containerInit, "container init exited during setup")
            }
            break
        }
        state.initialized = true
        try save(state)
        if let pidFile = options.pidFile {
            do { try FileSystem.replace(Self.absolute(pidFile), String(pid)) } catch {
                throw RuntimeError(.system, "write pid file \(pidFile)", errno: error.rawValue)
            }
        }
        if mode == KR_MODE_RUN {
            try Self.send(parentSock, "S")
            let msg = try Self.receive(parentSock)
            if msg.first == UInt8(ascii: "E") {
                throw RuntimeError(.containerInit, String(decoding: msg.dropFirst(), as: UTF8.self))
            }
            let json = state.ociState(status: .running).serialized()
            for hook in spec.hooks.poststart { try Hooks.run(hook, state: json) }
        }
        cleanup.disarm()
        return Launched(pid: pid, state: state, cgroup: cgroup)
    }

    /// Joining a pid namespace changes where this thread's children go (and
    /// forbids it to start threads): a library caller such as the node
    /// daemon gets its thread back as it was once the init is cloned.
    static func restorePidNamespace(_ fd: Int32) {
        guard fd >= 0 else { return }
        _ = kr_setns(fd, 0x2000_0000)
        close(fd)
    }

    /// `path` (absolute inside the container) below `root`.
    static func join(_ root: String, _ path: String) -> String {
        let r = root.hasSuffix("/") ? String(root.dropLast()) : root
        return r + "/" + path.drop { $0 == "/" }
    }

    /// The host id that `id` inside the user namespace maps to.
    static func hostID(_ id: UInt32, _ mappings: [Spec.IDMapping]) -> UInt32? {
        for m in mappings where id >= m.containerID && UInt64(id) < UInt64(m.containerID) + UInt64(m.size) {
            return m.hostID + (id - m.containerID)
        }
        return nil
    }

    static func writeMappings(pid: Int32, uid: [Spec.IDMapping], gid: [Spec.IDMapping]) throws(RuntimeError) {
        func text(_ m: [Spec.IDMapping]) -> String {
            m.map { "\($0.containerID) \($0.hostID) \($0.size)\n" }.joined()
        }
        do {
            try FileSystem.write("/proc/\(pid)/uid_map", text(uid))
            try FileSystem.write("/proc/\(pid)/gid_map", text(gid))
        } catch {
            throw RuntimeError(.invalidConfig, "config.json: linux.uidMappings: cannot write id mappings", errno: error.rawValue)
        }
    }

    static func send(_ fd: Int32, _ s: String) throws(RuntimeError) {
        var b = Array(s.utf8)
        let n = b.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 { throw RuntimeError(.containerInit, "container init exited during setup", errno: errno) }
    }

    /// One message from the init; empty on EOF.
    /// One message and its sender's pid (with SO_PASSCRED; else 0).
    static func receiveWithSender(_ fd: Int32) throws(RuntimeError) -> ([UInt8], Int32) {
        var buf = [UInt8](repeating: 0, count: 2048)
        var pid: pid_t = 0
        let n = buf.withUnsafeMutableBytes { kr_recv_with_pid(fd, $0.baseAddress, $0.count, &pid) }
        guard n >= 0 else { throw RuntimeError(.system, "receive from container init", errno: Int32(-n)) }
        return (Array(buf[0..<n]), pid)
    }

    static func receive(_ fd: Int32) throws(RuntimeError) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: 2048)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n >= 0 { return Array(buf[0..<n]) }
            if errno == EINTR { continue }
            throw RuntimeError.sys("receive from container init")
        }
    }

    /// A connected unix stream socket (close-on-exec) to `path`.
    public static func connectUnix(_ path: String) throws(RuntimeError) -> Int32 {
        do { return try UnixSocket.connect(path) } catch {
            throw RuntimeError(.invalidArgument, "connect to console socket \(path)", errno: error.rawValue)
        }
    }
}

/// Undo list for a failing create: kill the init, remove cgroup and state.
struct Cleanup {
    let runtime: Runtime
    let dir: String
    let cgroup: CgroupFiles
    var pid: Int32 = 0
    var removeCgroup = false
    var hostMounts: [String] = []
    var armed = true

    init(runtime: Runtime, dir: String, cgroup: CgroupFiles) {
        self.runtime = runtime
        self.dir = dir
        self.cgroup = cgroup
    }

    mutating func disarm() { armed = false }

    func run() {
        guard armed else { return }
        if pid > 0 {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        if !hostMounts.isEmpty { Mounts.detachAll(under: hostMounts) }
        if removeCgroup { try? cgroup.remove() }
        FileSystem.removeTree(dir)
    }
}
