import CKangaroo
import KangarooSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

public struct ExecOptions: Sendable {
    public var processFile: String?
    public var args: [String] = []
    public var detach = false
    public var tty = false
    public var consoleSocket: String?
    public var env: [String] = []
    public var cwd: String?
    public var user: String?
    public var additionalGids: [UInt32] = []
    public var caps: [String] = []
    public var pidFile: String?
    public var noNewPrivileges = false
    public var preserveFDs = 0
    /// As CreateOptions.stdio.
    public var stdio: [Int32] = [-1, -1, -1]
    public init() {}
}

extension Runtime {
    /// runc `exec`: runs a new process in a running container's namespaces
    /// and cgroup. Returns its exit code, or 0 when detached.
    public func exec(id: String, options: ExecOptions) throws(RuntimeError) -> Int32 {
        let pid = try startExec(id: id, options: options)
        if options.detach { return 0 }
        return Self.exitCode(kr_wait_forwarding(pid))
    }

    /// Starts an exec process (it has run execve when this returns) and
    /// returns its pid; the caller is its parent and reaps it.
    public func startExec(id: String, options: ExecOptions) throws(RuntimeError) -> Int32 {
        let state = try load(id)
        let cg = cgroup(for: state)
        let status = state.status(cgroup: cg, stateDir: stateDir(id))
        guard status == .running || status == .created else {
            throw RuntimeError(.invalidState, "cannot exec in a \(status.rawValue) container")
        }
        let spec = try Self.loadSpec(bundle: state.bundle)
        var process: Spec.Process
        if let file = options.processFile {
            let text: String
            do { text = try FileSystem.readString(file == "-" ? "/dev/stdin" : file) } catch {
                throw RuntimeError(.invalidArgument, "cannot read process file \(file)", errno: error.rawValue)
            }
            let json: JSON
            do { json = try JSON.parse(text) } catch {
                throw RuntimeError(.invalidConfig, "process.json: invalid JSON at byte \(error.offset): \(error.message)")
            }
            process = try Spec.Process(JSONNode(json, document: "process.json"))
        } else {
            guard !options.args.isEmpty else { throw RuntimeError(.invalidArgument, "exec: no command given") }
            process = spec.process ?? Spec.Process()
            process.args = options.args
            process.terminal = options.tty
            process.env += options.env
            if let cwd = options.cwd { process.cwd = cwd }
            if let user = options.user {
                let parts = user.split(separator: ":")
                guard let uid = UInt32(parts[0]), parts.count <= 2 else {
                    throw RuntimeError(.invalidArgument, "exec: --user must be uid[:gid], got \(user)")
                }
                process.user.uid = uid
                process.user.gid = parts.count == 2 ? (UInt32(parts[1]) ?? 0) : 0
            }
            if !options.additionalGids.isEmpty { process.user.additionalGids = options.additionalGids }
            if !options.caps.isEmpty {
                var caps = process.capabilities ?? Spec.Capabilities()
                for c in options.caps {
                    guard Capability.number(c) != nil else { throw RuntimeError(.invalidArgument, "exec: unknown capability \(c)") }
                    caps.bounding.append(c); caps.effective.append(c); caps.permitted.append(c)
                    caps.inheritable.append(c); caps.ambient.append(c)
                }
                process.capabilities = caps
            }
            if options.noNewPrivileges { process.noNewPrivileges = true }
        }
        if process.terminal && options.consoleSocket == nil && options.detach {
            throw RuntimeError(.invalidArgument, "exec: a terminal needs --console-socket")
        }
        try HostSupport.check(process, document: options.processFile == nil ? "config.json: process" : "process.json")
        let seccomp = try spec.linux.seccomp.map { s throws(RuntimeError) in try SeccompFilter.compile(s) } ?? []

        let arena = CArena()
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        // Namespaces of the init that differ from ours, user first.
        var joins: [kr_ns_join] = []
        var pidNS: Int32 = -1
        var inUserNS = false
        for (name, flag) in [("user", Int32(0x1000_0000)), ("ipc", 0x0800_0000), ("uts", 0x0400_0000),
                             ("net", 0x4000_0000), ("pid", 0x2000_0000), ("cgroup", 0x0200_0000),
                             ("time", 0x0000_0080), ("mnt", 0x0002_0000)] {
            let theirs = "/proc/\(state.pid)/ns/\(name)"
            var a = stat(), b = stat()
            guard stat(theirs, &a) == 0 else { continue }
            if stat("/proc/self/ns/\(name)", &b) == 0, a.st_ino == b.st_ino, a.st_dev == b.st_dev { continue }
            let fd = open(theirs, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw RuntimeError.sys("open \(theirs)") }
            fds.append(fd)
            if name == "pid" { pidNS = fd; continue }
            if name == "user" { inUserNS = true }
            joins.append(kr_ns_join(type: flag, fd: fd))
        }
        var consoleFD: Int32 = -1
        if process.terminal, let socket = options.consoleSocket {
            consoleFD = try Self.connectUnix(socket)
            fds.append(consoleFD)
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw RuntimeError.sys("socketpair")
        }
        let parentSock = pair[0]
        fds.append(parentSock)

        var cfg = kr_init_config()
        cfg.mode = Int32(KR_MODE_EXEC.rawValue)
        cfg.joins = UnsafePointer(arena.array(joins))
        cfg.n_joins = Int32(joins.count)
        cfg.bind_devices = inUserNS ? 1 : 0
        Self.fillProcess(&cfg, process, arena: arena)
        cfg.seccomp_filter = UnsafeRawPointer(arena.bytes(seccomp))
        cfg.seccomp_len = Int32(seccomp.count / 8)
        cfg.stdio_fds = (options.stdio[0], options.stdio[1], options.stdio[2])
        cfg.sync_fd = pair[1]
        cfg.fifo_fd = -1
        cfg.console_fd = consoleFD
        cfg.terminal = process.terminal && consoleFD >= 0 ? 1 : 0
        cfg.preserve_fds = Int32(options.preserveFDs)

        let ownPidNS = pidNS >= 0 ? open("/proc/thread-self/ns/pid", O_RDONLY | O_CLOEXEC) : -1
        if pidNS >= 0, kr_setns(pidNS, 0x2000_0000) != 0 {
            if ownPidNS >= 0 { close(ownPidNS) }
            throw RuntimeError.sys("join pid namespace of \(id)")
        }
        let pid = withUnsafePointer(to: &cfg) { kr_spawn_init($0) }
        Self.restorePidNamespace(ownPidNS)
        close(pair[1])
        guard pid > 0 else { throw RuntimeError(.system, "clone exec process", errno: -pid) }
        func fail(_ e: RuntimeError) -> RuntimeError {
            _ = Glibc.kill(pid, SIGKILL)
            var st: Int32 = 0
            _ = waitpid(pid, &st, 0)
            return e
        }
        if let cg {
            do { try CgroupFiles(cg).join(pid: pid) } catch {
                throw fail(RuntimeError(.system, "add exec process to cgroup", errno: error.rawValue))
            }
        }
        do throws(RuntimeError) {
            try Self.send(parentSock, "G")
            let ready = try Self.receive(parentSock)
            if ready.first == UInt8(ascii: "E") {
                throw RuntimeError(.containerInit, String(decoding: ready.dropFirst(), as: UTF8.self))
            }
            guard ready.first == UInt8(ascii: "R") else { throw RuntimeError(.containerInit, "exec process exited during setup") }
            try Self.send(parentSock, "S")
            let done = try Self.receive(parentSock)
            if done.first == UInt8(ascii: "E") {
                throw RuntimeError(.containerInit, String(decoding: done.dropFirst(), as: UTF8.self))
            }
        } catch {
            throw fail(error)
        }
        if let pidFile = options.pidFile {
            do { try FileSystem.replace(Self.absolute(pidFile), String(pid)) } catch {
                throw RuntimeError(.system, "write pid file \(pidFile)", errno: error.rawValue)
            }
        }
        return pid
    }
}
