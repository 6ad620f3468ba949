import CKangaroo
import KangarooSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension Runtime {
    /// runc `start`: releases a created container's init (reads exec.fifo).
    public func start(id: String) throws(RuntimeError) {
        let state = try load(id)
        let dir = stateDir(id)
        // Only "created" matters here, which needs no cgroup (freezer) lookup.
        let status = state.status(cgroup: nil, stateDir: dir)
        switch status {
        case .created: break
        case .stopped: throw RuntimeError(.invalidState, "cannot start a container that has stopped")
        default: throw RuntimeError(.invalidState, "cannot start an already running container")
        }
        let fifo = dir + "/exec.fifo"
        let fd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw RuntimeError.sys("open \(fifo)") }
        defer { close(fd) }
        var got = false
        while !got {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, 100)
            if rc < 0 && errno != EINTR { throw RuntimeError.sys("poll \(fifo)") }
            if rc > 0 {
                var b: UInt8 = 0
                let n = read(fd, &b, 1)
                if n == 1 { got = true; break }
                if pfd.revents & Int16(POLLHUP) != 0 || n == 0 {
                    throw RuntimeError(.invalidState, "container init exited before start")
                }
            }
            if !ProcessStatus.isAlive(pid: state.pid, startTime: state.pidStartTime) {
                throw RuntimeError(.invalidState, "container init exited before start")
            }
        }
        unlink(fifo)
        guard !state.poststart.isEmpty else { return }
        let json = state.ociState(status: .running).serialized()
        for hook in state.poststart {
            do { try Hooks.run(hook, state: json) } catch {
                // runc: a failing poststart hook is logged, the container keeps running.
                Log.warn(error.description)
            }
        }
    }

    /// runc `kill`.
    public func kill(id: String, signal: Int32, all: Bool) throws(RuntimeError) {
        let state = try load(id)
        let cg = cgroup(for: state)
        let status = state.status(cgroup: cg, stateDir: stateDir(id))
        guard status != .stopped else { throw RuntimeError(.invalidState, "container not running") }
        if all, let cg {
            for pid in cg.pids() { _ = Glibc.kill(pid, signal) }
        } else if state.pid <= 0 {
            throw RuntimeError(.invalidState, "container is still being created")
        } else if Glibc.kill(state.pid, signal) != 0 {
            throw RuntimeError.sys("kill \(state.pid)")
        }
        if status == .paused && (signal == SIGKILL || all), let cg {
            try? cg.setFrozen(false)
        }
    }

    /// runc `delete`: removes a stopped (or created) container; `force` kills it first.
    public func delete(id: String, force: Bool) throws(RuntimeError) {
        let state: ContainerState
        do { state = try load(id) } catch {
            if error.code == .notFound {
                // An aborted create can leave a directory without state.json.
                let dir = stateDir(id)
                if FileSystem.exists(dir) {
                    FileSystem.removeTree(dir)
                    return
                }
                if force { return }
            }
            throw error
        }
        let cg = cgroup(for: state)
        let dir = stateDir(id)
        let status = state.status(cgroup: cg, stateDir: dir)
        switch status {
        case .stopped, .created, .creating: break
        case .running, .paused:
            if !force {
                throw RuntimeError(.invalidState, "cannot delete container \(id) that is not stopped: \(status.rawValue)")
            }
        }
        if status != .stopped && state.pid > 0 {
            _ = Glibc.kill(state.pid, SIGKILL)
            if status == .paused { try? cg?.setFrozen(false) }
            waitGone(pid: state.pid, startTime: state.pidStartTime)
        }
        try destroy(state, cgroup: cg.map { CgroupFiles($0) }, status: status)
    }

    /// The end of `delete`, once the init is gone: processes left in the
    /// cgroup, the cgroup, poststop hooks, the state directory. Foreground
    /// `run` calls it directly with what it already holds.
    func destroy(_ state: ContainerState, cgroup files: CgroupFiles?, status: ContainerState.Status) throws(RuntimeError) {
        if let files {
            let cg = files.cgroup
            // Processes left behind when the container shares a pid namespace.
            // A stopped container with its own pid namespace has nothing left.
            if state.sharedPidNamespace || status != .stopped {
                let pids = cg.pids()
                for p in pids { _ = Glibc.kill(p, SIGKILL) }
                if cg.isFrozen() { try? cg.setFrozen(false) }
            }
            do { try files.remove() } catch {
                throw RuntimeError(.system, "remove cgroup \(cg.path)", errno: error.rawValue)
            }
        }
        if !state.hostMounts.isEmpty {
            let left = Mounts.detachAll(under: state.hostMounts)
            if !left.isEmpty { throw RuntimeError(.system, "cannot unmount \(left.joined(separator: ", "))") }
        }
        let dir = stateDir(state.id)
        if !state.poststop.isEmpty {
            let json = state.ociState(status: .stopped).serialized()
            for hook in state.poststop {
                do { try Hooks.run(hook, state: json) } catch { Log.warn(error.description) }
            }
        }
        Self.removeStateDirectory(dir)
    }

    /// Removes a state directory: the files the runtime puts there directly,
    /// anything else (a crashed create's state.json.tmp) through removeTree.
    static func removeStateDirectory(_ dir: String) {
        _ = unlink(dir + "/state.json")
        _ = unlink(dir + "/exec.fifo")
        if rmdir(dir) != 0 && errno != ENOENT { FileSystem.removeTree(dir) }
    }

    func waitGone(pid: Int32, startTime: UInt64) {
        var status: Int32 = 0
        for i in 0..<5000 {
            // Our own child (run): reap it; otherwise poll /proc.
            if waitpid(pid, &status, WNOHANG) == pid { return }
            if !ProcessStatus.isAlive(pid: pid, startTime: startTime) { return }
            usleep(i < 100 ? 200 : 2000)
        }
    }

    /// runc `pause` / `resume`.
    public func setPaused(id: String, _ paused: Bool) throws(RuntimeError) {
        let state = try load(id)
        guard let cg = cgroup(for: state) else { throw RuntimeError(.unsupported, "container has no cgroup") }
        let status = state.status(cgroup: cg, stateDir: stateDir(id))
        if paused {
            guard status == .running || status == .created else {
                throw RuntimeError(.invalidState, "container not running")
            }
        } else {
            guard status == .paused else { throw RuntimeError(.invalidState, "container not paused") }
        }
        do { try cg.setFrozen(paused) } catch {
            throw RuntimeError(.system, paused ? "freeze cgroup" : "thaw cgroup", errno: error.rawValue)
        }
    }

    /// Pids of the container's processes (runc `ps --format json`).
    public func pids(id: String) throws(RuntimeError) -> [Int32] {
        let state = try load(id)
        guard let cg = cgroup(for: state) else { return [] }
        return cg.pids()
    }

    /// runc `update`.
    public func update(id: String, resources: Resources) throws(RuntimeError) {
        let state = try load(id)
        guard let cg = cgroup(for: state) else { throw RuntimeError(.unsupported, "container has no cgroup") }
        let status = state.status(cgroup: cg, stateDir: stateDir(id))
        guard status != .stopped else { throw RuntimeError(.invalidState, "container not running") }
        try HostSupport.check(resources, layout: cg.layout, document: "resources")
        try CgroupFiles(cg).apply(resources, initial: false)
    }
}

/// Messages to stderr and to the `--log` file, runc style.
public enum Log {
    nonisolated(unsafe) public static var path: String?
    nonisolated(unsafe) public static var json = false
    nonisolated(unsafe) public static var debugEnabled = false

    public static func warn(_ msg: String) { emit("warning", msg) }
    public static func error(_ msg: String) { emit("error", msg) }
    public static func debug(_ msg: String) { if debugEnabled { emit("debug", msg) } }

    static func emit(_ level: String, _ msg: String) {
        let line: String
        if json {
            line = JSON.object([("level", .string(level)), ("msg", .string(msg)), ("time", .string(Clock.rfc3339Now()))])
                .serialized() + "\n"
        } else {
            line = "time=\"\(Clock.rfc3339Now())\" level=\(level) msg=\"\(msg)\"\n"
        }
        if let path {
            try? FileSystem.write(path, line, flags: O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC)
        }
        if level != "debug" || path == nil {
            let text = (path == nil || level == "error") ? "kangaroo-runtime: \(level): \(msg)\n" : ""
            if !text.isEmpty { _ = text.withCString { Glibc.write(2, $0, strlen($0)) } }
        }
    }
}
