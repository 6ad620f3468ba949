import ContainerdAPI
import Foundation
import KangarooNode
import KangarooRuntime
import KangarooSystem
import Logging
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

/// containerd's shim v2 Task service (runtime/v2/task/shim.proto) for every
/// task of every containerd namespace, in this one process: containers are
/// made with KangarooRuntime as a library (this process is each init's
/// parent and reaps it), stdio goes straight to containerd's fifos, and task
/// events go to containerd through `events`.
public actor TaskService: TTRPCService {
    public nonisolated let serviceName = "containerd.task.v2.Task"
    /// containerd's namespace header on every shim request.
    static let namespaceKey = "containerd-namespace-ttrpc"

    let stateRoot: String
    let logger: Logger
    let events: EventPublisher?
    let reaper: Reaper
    let consoleKeeper: ConsoleKeeper?
    /// Sandbox disks (nil: containers write on the snapshotter's upper).
    let disks: SandboxDisks?
    /// User-namespaced sandboxes (a runtime handler option).
    let userns: SandboxUserNamespaces
    private var tasks: [Key: TaskRecord] = [:]
    /// Processes whose Start or Kill is being answered (how many of each),
    /// and their exits held back meanwhile: a start event goes out before
    /// the exit, and containerd has its Kill's answer before the exit
    /// event that makes it delete the task and close the connection.
    private var exitHolds: [ProcessKey: Int] = [:]
    private var deferredExits: [ProcessKey: Int32] = [:]

    struct ProcessKey: Hashable, Sendable {
        var task: Key
        var exec: String?
    }

    struct Key: Hashable, Sendable {
        var namespace: String
        var id: String
    }

    /// One process of a task: the init or an exec.
    struct Process: Sendable {
        enum State: Sendable, Equatable, Codable {
            case created
            case running
            case stopped(exitStatus: UInt32, at: Date)
        }
        var pid: Int32 = 0
        var state: State = .created
        var stdin = "", stdout = "", stderr = ""
        var terminal = false
        /// The pty relay of a process with a terminal.
        var console: Terminal?
        /// Exec processes: the runtime-spec process JSON, until started.
        var spec: [UInt8] = []
        var waiters: [CheckedContinuation<(UInt32, Date), Never>] = []
    }

    /// A task: its init and exec processes, bundle and what Create mounted.
    struct TaskRecord: Sendable {
        enum State: String, Sendable, Codable { case created, running, paused, stopped }
        var bundle: String
        var rootfsMounted: String?
        var state: State = .created
        var initProcess: Process
        var execs: [String: Process] = [:]
    }

    /// Keeps copies of every terminal's descriptors (pty master, stdin
    /// and stdout fifos) outside the daemon, named "NAMESPACE/ID/EXEC"
    /// (EXEC empty for the init): the node supervisor, which hands them to
    /// the next daemon, so a terminal survives a daemon crash.
    public struct ConsoleKeeper: Sendable {
        public var keep: @Sendable (_ name: String, _ master: Int32, _ stdin: Int32, _ stdout: Int32) -> Void
        public var release: @Sendable (_ name: String) -> Void
        public init(keep: @escaping @Sendable (String, Int32, Int32, Int32) -> Void, release: @escaping @Sendable (String) -> Void) {
            self.keep = keep
            self.release = release
        }
    }

    public init(stateRoot: String, events: EventPublisher?, reaper: Reaper, logger: Logger, consoleKeeper: ConsoleKeeper? = nil,
                disks: SandboxDisks? = nil) {
        self.stateRoot = stateRoot
        self.disks = disks
        userns = SandboxUserNamespaces(stateRoot: stateRoot)
        self.events = events
        self.reaper = reaper
        self.logger = logger
        self.consoleKeeper = consoleKeeper
    }

    /// A process's terminal name for the console keeper.
    nonisolated func consoleName(_ key: Key, exec: String?) -> String { key.namespace + "/" + key.id + "/" + (exec ?? "") }

    nonisolated func keeper(_ key: Key, exec: String?) -> (ConsoleKeeper, name: String)? {
        consoleKeeper.map { ($0, consoleName(key, exec: exec)) }
    }

    nonisolated func runtime(_ namespace: String) -> Runtime {
        Runtime(root: stateRoot + "/runtime/" + namespace)
    }

    /// Runs blocking runtime work (clone, waits on the init, disk and
    /// mount set-up) on a thread of its own (a 50-pod burst on Dispatch's
    /// global queue: half the sandboxes waited 17 s for two threads).
    nonisolated func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await OwnThread.run { () throws(any Error) -> T in try body() }
    }

    public nonisolated func handle(method: String, payload: [UInt8], context: TTRPCRequestContext) async throws -> [UInt8] {
        let ns: String
        if let header = context.value(Self.namespaceKey) {
            ns = header
        } else {
            // containerd sends its namespace header with some calls only
            // (Create from CRI, not State from `ctr task ls`): every request
            // has the task id as field 1, and ids are looked up in the
            // namespaces tasks were created in.
            let id = (try? Containerd_Task_V2_PidsRequest(serializedBytes: payload))?.id ?? ""
            ns = await namespace(of: id) ?? "default"
        }
        switch method {
        case "Create":
            return try await unary(payload, Containerd_Task_V2_CreateTaskRequest.self) { try await self.create(ns, $0, replayed: context.replayed) }
        case "Start":
            return try await unary(payload, Containerd_Task_V2_StartRequest.self) {
                try await self.start(ns, $0, replayed: context.replayed, written: context.responseWritten)
            }
        case "State": return try await unary(payload, Containerd_Task_V2_StateRequest.self) { try await self.state(ns, $0) }
        case "Wait": return try await unary(payload, Containerd_Task_V2_WaitRequest.self) { try await self.wait(ns, $0) }
        case "Kill":
            return try await unary(payload, Containerd_Task_V2_KillRequest.self) { try await self.kill(ns, $0, written: context.responseWritten) }
        case "Delete": return try await unary(payload, Containerd_Task_V2_DeleteRequest.self) { try await self.delete(ns, $0) }
        case "Exec": return try await unary(payload, Containerd_Task_V2_ExecProcessRequest.self) { try await self.exec(ns, $0) }
        case "Pids": return try await unary(payload, Containerd_Task_V2_PidsRequest.self) { try await self.pids(ns, $0) }
        case "Pause": return try await unary(payload, Containerd_Task_V2_PauseRequest.self) { try await self.setPaused(ns, $0.id, true) }
        case "Resume": return try await unary(payload, Containerd_Task_V2_ResumeRequest.self) { try await self.setPaused(ns, $0.id, false) }
        case "Update": return try await unary(payload, Containerd_Task_V2_UpdateTaskRequest.self) { try await self.update(ns, $0) }
        case "Stats": return try await unary(payload, Containerd_Task_V2_StatsRequest.self) { try await self.stats(ns, $0) }
        case "Connect": return try await unary(payload, Containerd_Task_V2_ConnectRequest.self) { try await self.connect(ns, $0) }
        case "CloseIO": return try await unary(payload, Containerd_Task_V2_CloseIORequest.self) { try await self.closeIO(ns, $0) }
        case "Shutdown":
            // One daemon serves every task of the node: it never exits on a
            // task's Shutdown.
            return try await unary(payload, Containerd_Task_V2_ShutdownRequest.self) { _ in Google_Protobuf_Empty() }
        case "ResizePty":
            return try await unary(payload, Containerd_Task_V2_ResizePtyRequest.self) { try await self.resize(ns, $0) }
        case "Checkpoint":
            throw ShimError(.unimplemented, "Checkpoint is not supported by the kangaroo runtime")
        default:
            throw ShimError(.unimplemented, "containerd.task.v2.Task/\(method) is not implemented")
        }
    }

    // MARK: - Persistence

    /// What survives this process (a restarted daemon takes its tasks
    /// over): one JSON file per task under STATE/tasks/NAMESPACE/.
    struct PersistedProcess: Codable {
        var pid: Int32
        var state: Process.State
        var stdin: String, stdout: String, stderr: String
        var terminal: Bool
        var spec: Data
    }

    struct PersistedTask: Codable {
        var namespace: String
        var id: String
        var bundle: String
        var rootfsMounted: String?
        var state: TaskRecord.State
        var initProcess: PersistedProcess
        var execs: [String: PersistedProcess]
    }

    nonisolated func recordPath(_ key: Key) -> String { stateRoot + "/tasks/" + key.namespace + "/" + key.id + ".json" }

    /// Sets (nil: removes) a task and its record on disk.
    func put(_ key: Key, _ record: TaskRecord?) {
        tasks[key] = record
        let path = recordPath(key)
        guard let t = record else {
            unlink(path)
            return
        }
        func persisted(_ p: Process) -> PersistedProcess {
            PersistedProcess(pid: p.pid, state: p.state, stdin: p.stdin, stdout: p.stdout, stderr: p.stderr,
                             terminal: p.terminal, spec: Data(p.spec))
        }
        let value = PersistedTask(namespace: key.namespace, id: key.id, bundle: t.bundle, rootfsMounted: t.rootfsMounted,
                                  state: t.state, initProcess: persisted(t.initProcess), execs: t.execs.mapValues(persisted))
        do {
            let data = try JSONEncoder().encode(value)
            try FileSystem.makeDirectories((path as NSString).deletingLastPathComponent, mode: 0o700)
            try FileSystem.replace(path, bytes: [UInt8](data))
        } catch {
            logger.error("cannot record task state", metadata: ["container": "\(key.id)", "path": "\(path)", "error": "\(error)"])
        }
    }

    func take(_ key: Key) -> TaskRecord? {
        let t = tasks[key]
        put(key, nil)
        return t
    }

    /// Takes over the tasks a previous daemon recorded: processes still
    /// there are watched (their exits come from the supervisor, which
    /// reaped them as their new parent: `statuses`, then through the
    /// reaper); processes gone without a known status are reported exited
    /// with 255. Returns how many tasks were taken over.
    public func restore(statuses: [Int32: Int32], consoles: [String: [Int32]] = [:]) -> Int {
        var consoles = consoles
        defer {
            // Terminals of processes no record names any more.
            for (name, fds) in consoles {
                for fd in fds where fd >= 0 { close(fd) }
                consoleKeeper?.release(name)
            }
        }
        let root = stateRoot + "/tasks"
        var count = 0
        for ns in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: root + "/" + ns)) ?? [] where name.hasSuffix(".json") {
                guard let data = FileManager.default.contents(atPath: root + "/" + ns + "/" + name),
                      let p = try? JSONDecoder().decode(PersistedTask.self, from: data) else {
                    logger.warning("unreadable task record removed", metadata: ["path": "\(root)/\(ns)/\(name)"])
                    unlink(root + "/" + ns + "/" + name)
                    continue
                }
                func process(_ q: PersistedProcess) -> Process {
                    var r = Process(pid: q.pid, state: q.state)
                    r.stdin = q.stdin; r.stdout = q.stdout; r.stderr = q.stderr
                    r.terminal = q.terminal
                    r.spec = [UInt8](q.spec)
                    return r
                }
                let key = Key(namespace: p.namespace, id: p.id)
                tasks[key] = TaskRecord(bundle: p.bundle, rootfsMounted: p.rootfsMounted, state: p.state,
                                        initProcess: process(p.initProcess), execs: p.execs.mapValues(process))
                // A terminal's relay again, on the descriptors the
                // supervisor kept (pty master, stdin and stdout fifos).
                for exec in [nil] + p.execs.keys.map(Optional.some) {
                    let name = consoleName(key, exec: exec)
                    guard let fds = consoles.removeValue(forKey: name) else { continue }
                    guard fds.count == 3, fds[0] >= 0 else {
                        for fd in fds where fd >= 0 { close(fd) }
                        consoleKeeper?.release(name)
                        continue
                    }
                    let terminal = Terminal(master: fds[0], stdinFD: fds[1], stdoutFD: fds[2], keeper: keeper(key, exec: exec))
                    if let exec { tasks[key]?.execs[exec]?.console = terminal } else { tasks[key]?.initProcess.console = terminal }
                    logger.info("terminal taken over", metadata: ["container": "\(key.id)", "exec": "\(exec ?? "")"])
                }
                count += 1
                var live: [(String?, Int32)] = []
                if p.initProcess.pid > 0 { live.append((nil, p.initProcess.pid)) }
                for (exec, q) in p.execs where q.pid > 0 { live.append((exec, q.pid)) }
                for (exec, pid) in live {
                    let current = exec.map { tasks[key]?.execs[$0] } ?? tasks[key]?.initProcess
                    if case .stopped = current?.state { continue }
                    if let status = statuses[pid] {
                        exited(key, exec: exec, status: status)
                        continue
                    }
                    // Alive, or reaped by the supervisor after the handover
                    // (its status is on the way): watched either way; gone
                    // with no status after 5 s, it is reported as 255.
                    watch(key, exec: exec, pid: pid)
                    Task {
                        try? await Task.sleep(for: .seconds(5))
                        self.exitedUnseen(key, exec: exec, pid: pid)
                    }
                }
            }
        }
        if count > 0 { logger.info("took over the tasks of the previous daemon", metadata: ["tasks": "\(count)"]) }
        return count
    }

    /// A taken-over process that is gone without its status reaching us.
    func exitedUnseen(_ key: Key, exec: String?, pid: Int32) {
        guard let p = process(key, exec), p.pid == pid else { return }
        if case .stopped = p.state { return }
        guard Glibc.kill(pid, 0) != 0 else { return }
        logger.warning("a process of a taken-over task is gone without an exit status", metadata: ["container": "\(key.id)", "pid": "\(pid)"])
        exited(key, exec: exec, status: 255 << 8)
    }

    /// One task as `kangaroo node status` shows it.
    public struct TaskInfo: Codable, Sendable {
        public var namespace: String
        public var id: String
        public var pid: Int32
        public var state: String
        public var bundle: String
        public var execs: Int
        public var terminal: Bool
        /// CRI: the pod (sandbox) id and whether this is its sandbox
        /// (pause) container, from the bundle's annotations.
        public var sandbox: String?
        public var isSandbox: Bool
    }

    /// Every task, by namespace and id.
    public func snapshot() -> [TaskInfo] {
        tasks.map { key, t in
            let state: String
            switch (t.state, t.initProcess.state) {
            case (.paused, _): state = "paused"
            case (_, .created): state = "created"
            case (_, .running): state = "running"
            case (_, .stopped(let code, _)): state = "stopped (\(code))"
            }
            var info = TaskInfo(namespace: key.namespace, id: key.id, pid: t.initProcess.pid, state: state, bundle: t.bundle,
                                execs: t.execs.count, terminal: t.initProcess.terminal, sandbox: nil, isSandbox: false)
            if let config = try? FileSystem.read(t.bundle + "/config.json"),
               let json = try? JSONSerialization.jsonObject(with: Data(config)) as? [String: Any],
               let annotations = json["annotations"] as? [String: String] {
                info.sandbox = annotations["io.kubernetes.cri.sandbox-id"]
                info.isSandbox = annotations["io.kubernetes.cri.container-type"] == "sandbox"
            }
            return info
        }.sorted { ($0.namespace, $0.id) < ($1.namespace, $1.id) }
    }

    // MARK: - Lifecycle

    /// The namespace of the one task named `id`; nil when none or several.
    func namespace(of id: String) -> String? {
        let matches = tasks.keys.filter { $0.id == id }
        return matches.count == 1 ? matches[0].namespace : nil
    }

    func record(_ key: Key) throws(ShimError) -> TaskRecord {
        guard let t = tasks[key] else { throw ShimError(.notFound, "task \(key.id) not found in namespace \(key.namespace)") }
        return t
    }

    /// `replayed`: the previous daemon read this Create and died; what it
    /// got done is taken as the answer (its task), or undone (a container
    /// or rootfs mount it left half made) and done again.
    func create(_ ns: String, _ r: Containerd_Task_V2_CreateTaskRequest, replayed: Bool = false) async throws -> Containerd_Task_V2_CreateTaskResponse {
        let key = Key(namespace: ns, id: r.id)
        guard !r.id.isEmpty else { throw ShimError(.invalidArgument, "Create: empty task id") }
        NodeActivity.shared.noteStart()
        if replayed, let t = tasks[key] {
            var response = Containerd_Task_V2_CreateTaskResponse()
            response.pid = UInt32(t.initProcess.pid)
            return response
        }
        guard tasks[key] == nil else { throw ShimError(.alreadyExists, "task \(r.id) already exists in namespace \(ns)") }
        if replayed {
            let runtime = self.runtime(ns), id = r.id
            _ = try? await blocking { try runtime.delete(id: id, force: true) }
            Mounts.detachAll(under: [r.bundle + "/rootfs", userns.containerDir(ns, r.id)])
        }
        guard r.checkpoint.isEmpty else { throw ShimError(.unimplemented, "Create \(r.id): restore from a checkpoint is not supported") }
        var undo = UndoList()
        defer { undo.run() }
        var mounted: String?
        var rootfs = r.rootfs
        let (bundle, id) = (r.bundle, r.id)
        if let disks, !r.rootfs.isEmpty || FileSystem.exists(r.bundle + "/config.json") {
            let given = rootfs
            rootfs = try await blocking { try disks.rootfs(given, namespace: ns, id: id, bundle: bundle) }
            undo.add { disks.deleted(namespace: ns, id: id, bundle: bundle) }
        }
        // A user-namespaced sandbox (its handler's option) or one of its
        // containers: the spec's user namespace, idmapped layers.
        let userns = self.userns
        let wantsUserNS = try SandboxUserNamespaces.wanted(r.options)
        var rootfsTarget = r.bundle + "/rootfs"
        if wantsUserNS || userns.inUse {
            let given = rootfs
            let pids = tasks.filter { $0.key.namespace == ns }.reduce(into: [String: Int32]()) { $0[$1.key.id] = $1.value.initProcess.pid }
            if let plan = try await blocking({
                try userns.prepare(namespace: ns, id: id, bundle: bundle, rootfs: given, wanted: wantsUserNS, sandboxPid: { pids[$0] })
            }) {
                rootfs = plan.rootfs
                rootfsTarget = plan.rootfsTarget
                logger.info("user namespace", metadata: ["container": "\(id)", "range": "\(plan.base)"])
                undo.add { userns.deleted(namespace: ns, id: id, bundle: bundle) }
            }
        }
        if !rootfs.isEmpty {
            let (target, mounts) = (rootfsTarget, rootfs)
            try await blocking { try Self.mountRootfs(mounts, at: target) }
            mounted = target
            undo.add { Mounts.detachAll(under: [target]) }
        }
        // With a terminal the init's stdio is the pty (relayed to the
        // fifos); without, the fifos themselves.
        let stdio = r.terminal ? [-1, -1, -1]
            : try Self.openStdio(stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, what: "task \(r.id)")
        defer { for fd in stdio where fd > 2 { close(fd) } }
        let socket = r.terminal ? try Terminal.Socket(directory: stateRoot) : nil
        defer { socket?.discard() }
        var options = CreateOptions()
        options.bundle = r.bundle
        options.stdio = stdio
        options.consoleSocket = socket?.path
        let runtime = self.runtime(ns)
        let pid: Int32
        do {
            let opts = options
            pid = try await blocking { try runtime.create(id: id, options: opts) }
        } catch let e as RuntimeError {
            throw ShimError(e.code == .invalidConfig || e.code == .unsupported ? .invalidArgument
                            : e.code == .exists ? .alreadyExists : .failedPrecondition, "Create \(id): \(e)", underlying: e)
        }
        undo.add { _ = try? runtime.delete(id: id, force: true) }
        var process = Process(pid: pid)
        process.stdin = r.stdin; process.stdout = r.stdout; process.stderr = r.stderr
        process.terminal = r.terminal
        if let socket {
            let master = try socket.receive(what: "task \(id)")
            process.console = try Terminal(master: master, stdin: r.stdin, stdout: r.stdout, what: "task \(id)",
                                           keeper: keeper(key, exec: nil))
        }
        undo.disarm()
        put(key, TaskRecord(bundle: r.bundle, rootfsMounted: mounted, initProcess: process))
        watch(key, exec: nil, pid: pid)
        logger.info("task created", metadata: ["namespace": "\(ns)", "container": "\(id)", "pid": "\(pid)"])
        var event = Containerd_Events_TaskCreate()
        event.containerID = id
        event.bundle = r.bundle
        event.rootfs = r.rootfs
        event.io.stdin = r.stdin; event.io.stdout = r.stdout; event.io.stderr = r.stderr
        event.pid = UInt32(pid)
        events?.post(namespace: ns, topic: .create, event: event)
        var response = Containerd_Task_V2_CreateTaskResponse()
        response.pid = UInt32(pid)
        return response
    }

    nonisolated func watch(_ key: Key, exec: String?, pid: Int32) {
        reaper.watch(pid) { [weak self] _, status in
            guard let self else { return }
            Task { await self.drainThenExited(key, exec: exec, status: status) }
        }
    }

    /// A terminal's last output reaches the fifo before the exit event (as
    /// containerd's runc shim waits for its console copy).
    func drainThenExited(_ key: Key, exec: String?, status: Int32) async {
        if let console = process(key, exec)?.console {
            _ = try? await blocking { console.waitOutput(seconds: 2) }
        }
        exited(key, exec: exec, status: status)
    }

    func process(_ key: Key, _ exec: String?) -> Process? {
        guard let t = tasks[key] else { return nil }
        return exec.map { t.execs[$0] } ?? t.initProcess
    }

    /// Holds the exits of process `key` while `body` runs and until its
    /// response is `written` (at once without a connection).
    func holdingExits<T>(_ key: ProcessKey, until written: TTRPCResponseWritten?, _ body: () async throws -> T) async throws -> T {
        exitHolds[key, default: 0] += 1
        defer {
            if let written { written.add { Task { await self.releaseExits(key) } } } else { releaseExits(key) }
        }
        return try await body()
    }

    func releaseExits(_ key: ProcessKey) {
        let n = (exitHolds[key] ?? 1) - 1
        exitHolds[key] = n > 0 ? n : nil
        if n <= 0, let status = deferredExits.removeValue(forKey: key) { exited(key.task, exec: key.exec, status: status) }
    }

    func exited(_ key: Key, exec: String?, status: Int32) {
        // A process that exits while its Start or a Kill is being answered:
        // its exit event follows the answer.
        let pk = ProcessKey(task: key, exec: exec)
        if exitHolds[pk] != nil {
            deferredExits[pk] = status
            return
        }
        guard var t = tasks[key] else { return }
        let code = UInt32(bitPattern: Runtime.exitCode(status))
        let at = Date()
        var process = exec.map { t.execs[$0] } ?? t.initProcess
        guard var p = process else { return }
        p.state = .stopped(exitStatus: code, at: at)
        for w in p.waiters { w.resume(returning: (code, at)) }
        p.waiters = []
        process = p
        if let exec { t.execs[exec] = p } else { t.initProcess = p; t.state = .stopped }
        var event = Containerd_Events_TaskExit()
        event.containerID = key.id
        event.id = exec ?? key.id
        event.pid = UInt32(p.pid)
        event.exitStatus = code
        event.exitedAt = Google_Protobuf_Timestamp(date: at)
        // The event is in the publisher's journal before the record says
        // stopped: a daemon dying in between leaves a running record, whose
        // exit the next daemon reports again (a duplicate, never a loss).
        events?.post(namespace: key.namespace, topic: .exit, event: event)
        put(key, t)
        logger.info("process exited", metadata: ["namespace": "\(key.namespace)", "container": "\(key.id)",
                                                 "exec": "\(exec ?? "")", "status": "\(code)"])
    }

    /// `replayed`: the previous daemon read this Start and died, maybe
    /// after releasing the init: an init that is no longer waiting is the
    /// answer, not an error.
    func start(_ ns: String, _ r: Containerd_Task_V2_StartRequest, replayed: Bool = false,
               written: TTRPCResponseWritten? = nil) async throws -> Containerd_Task_V2_StartResponse {
        let key = Key(namespace: ns, id: r.id)
        return try await holdingExits(ProcessKey(task: key, exec: r.execID.isEmpty ? nil : r.execID), until: written) {
            try await startHeld(key, r, replayed: replayed)
        }
    }

    func startHeld(_ key: Key, _ r: Containerd_Task_V2_StartRequest, replayed: Bool) async throws -> Containerd_Task_V2_StartResponse {
        let ns = key.namespace
        var t = try record(key)
        let runtime = self.runtime(ns)
        let id = r.id
        var response = Containerd_Task_V2_StartResponse()
        if r.execID.isEmpty {
            if replayed && t.initProcess.state != .created {
                // The previous daemon started it and recorded so, then died
                // before answering.
                response.pid = UInt32(t.initProcess.pid)
                return response
            }
            guard t.initProcess.state == .created else { throw ShimError(.failedPrecondition, "task \(id) is already started") }
            do { try await blocking { try runtime.start(id: id) } } catch let e as RuntimeError where replayed && e.code == .invalidState {
                logger.info("replayed Start: the previous daemon had started the task", metadata: ["container": "\(id)"])
            } catch {
                throw ShimError(.failedPrecondition, "Start \(id): \(error)", underlying: error)
            }
            t = try record(key)
            if t.initProcess.state == .created { t.initProcess.state = .running; t.state = .running }
            put(key, t)
            response.pid = UInt32(t.initProcess.pid)
            var event = Containerd_Events_TaskStart()
            event.containerID = id
            event.pid = UInt32(t.initProcess.pid)
            events?.post(namespace: ns, topic: .start, event: event)
            return response
        }
        guard var p = t.execs[r.execID] else { throw ShimError(.notFound, "exec \(r.execID) of task \(id) not found") }
        guard p.state == .created else { throw ShimError(.failedPrecondition, "exec \(r.execID) of task \(id) is already started") }
        let stdio = p.terminal ? [-1, -1, -1]
            : try Self.openStdio(stdin: p.stdin, stdout: p.stdout, stderr: p.stderr, what: "exec \(r.execID)")
        defer { for fd in stdio where fd > 2 { close(fd) } }
        let socket = p.terminal ? try Terminal.Socket(directory: stateRoot) : nil
        defer { socket?.discard() }
        let specPath = stateRoot + "/exec-\(UUID().uuidString).json"
        guard FileManager.default.createFile(atPath: specPath, contents: Data(p.spec)) else {
            throw ShimError(.internalError, "cannot write the process spec of exec \(r.execID)")
        }
        defer { unlink(specPath) }
        var options = ExecOptions()
        options.processFile = specPath
        options.detach = true
        options.stdio = stdio
        options.consoleSocket = socket?.path
        let pid: Int32
        let opts = options
        do { pid = try await blocking { try runtime.startExec(id: id, options: opts) } } catch {
            throw ShimError(.failedPrecondition, "Start exec \(r.execID) of \(id): \(error)", underlying: error)
        }
        var console: Terminal?
        if let socket {
            do {
                console = try Terminal(master: try socket.receive(what: "exec \(r.execID)"), stdin: p.stdin, stdout: p.stdout,
                                       what: "exec \(r.execID)", keeper: keeper(key, exec: r.execID))
            } catch {
                Glibc.kill(pid, SIGKILL)
                throw error
            }
        }
        t = try record(key)
        p = t.execs[r.execID] ?? p
        p.pid = pid
        p.console = console
        p.state = .running
        t.execs[r.execID] = p
        put(key, t)
        watch(key, exec: r.execID, pid: pid)
        var event = Containerd_Events_TaskExecStarted()
        event.containerID = id
        event.execID = r.execID
        event.pid = UInt32(pid)
        events?.post(namespace: ns, topic: .execStarted, event: event)
        response.pid = UInt32(pid)
        return response
    }

    func exec(_ ns: String, _ r: Containerd_Task_V2_ExecProcessRequest) async throws -> Google_Protobuf_Empty {
        let key = Key(namespace: ns, id: r.id)
        var t = try record(key)
        guard t.execs[r.execID] == nil else { throw ShimError(.alreadyExists, "exec \(r.execID) of task \(r.id) already exists") }
        guard t.state != .stopped else { throw ShimError(.failedPrecondition, "task \(r.id) is stopped") }
        guard r.hasSpec, !r.spec.value.isEmpty else { throw ShimError(.invalidArgument, "Exec \(r.execID): no process spec") }
        var p = Process()
        p.stdin = r.stdin; p.stdout = r.stdout; p.stderr = r.stderr
        p.terminal = r.terminal
        p.spec = [UInt8](r.spec.value)
        t.execs[r.execID] = p
        put(key, t)
        var event = Containerd_Events_TaskExecAdded()
        event.containerID = r.id
        event.execID = r.execID
        events?.post(namespace: ns, topic: .execAdded, event: event)
        return Google_Protobuf_Empty()
    }

    func wait(_ ns: String, _ r: Containerd_Task_V2_WaitRequest) async throws -> Containerd_Task_V2_WaitResponse {
        let key = Key(namespace: ns, id: r.id)
        var t = try record(key)
        let current = r.execID.isEmpty ? t.initProcess : t.execs[r.execID]
        guard var p = current else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) not found") }
        let result: (UInt32, Date)
        if case .stopped(let code, let at) = p.state {
            result = (code, at)
        } else {
            result = await withCheckedContinuation { c in
                p.waiters.append(c)
                if r.execID.isEmpty { t.initProcess = p } else { t.execs[r.execID] = p }
                // Waiters are not recorded: nothing to write for a Wait.
                tasks[key] = t
            }
        }
        var response = Containerd_Task_V2_WaitResponse()
        response.exitStatus = result.0
        response.exitedAt = Google_Protobuf_Timestamp(date: result.1)
        return response
    }

    func kill(_ ns: String, _ r: Containerd_Task_V2_KillRequest, written: TTRPCResponseWritten? = nil) async throws -> Google_Protobuf_Empty {
        let key = Key(namespace: ns, id: r.id)
        return try await holdingExits(ProcessKey(task: key, exec: r.execID.isEmpty ? nil : r.execID), until: written) {
            try await killHeld(key, r)
        }
    }

    func killHeld(_ key: Key, _ r: Containerd_Task_V2_KillRequest) async throws -> Google_Protobuf_Empty {
        let ns = key.namespace
        let t = try record(key)
        if !r.execID.isEmpty {
            guard let p = t.execs[r.execID] else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) not found") }
            guard p.pid > 0, case .running = p.state else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) is not running") }
            guard Glibc.kill(p.pid, Int32(r.signal)) == 0 else {
                throw ShimError(.notFound, "kill exec \(r.execID): \(String(cString: strerror(errno)))")
            }
            return Google_Protobuf_Empty()
        }
        if case .stopped = t.initProcess.state { throw ShimError(.notFound, "task \(r.id): process already finished") }
        let runtime = self.runtime(ns)
        let id = r.id, signal = Int32(r.signal), all = r.all
        do { try await blocking { try runtime.kill(id: id, signal: signal, all: all) } } catch {
            throw ShimError(.notFound, "Kill \(id): \(error)", underlying: error)
        }
        return Google_Protobuf_Empty()
    }

    func delete(_ ns: String, _ r: Containerd_Task_V2_DeleteRequest) async throws -> Containerd_Task_V2_DeleteResponse {
        let key = Key(namespace: ns, id: r.id)
        var t = try record(key)
        var response = Containerd_Task_V2_DeleteResponse()
        if !r.execID.isEmpty {
            guard let p = t.execs[r.execID] else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) not found") }
            if case .running = p.state { throw ShimError(.failedPrecondition, "exec \(r.execID) of task \(r.id) is running") }
            t.execs[r.execID] = nil
            put(key, t)
            if let console = p.console { _ = try? await blocking { console.close() } }
            response.pid = UInt32(p.pid)
            if case .stopped(let code, let at) = p.state {
                response.exitStatus = code
                response.exitedAt = Google_Protobuf_Timestamp(date: at)
            }
            return response
        }
        if case .running = t.initProcess.state { throw ShimError(.failedPrecondition, "task \(r.id) is running: kill it first") }
        let runtime = self.runtime(ns)
        let id = r.id
        do { try await blocking { try runtime.delete(id: id, force: true) } } catch let e as RuntimeError where e.code == .notFound {
        } catch {
            throw ShimError(.failedPrecondition, "Delete \(id): \(error)", underlying: error)
        }
        if let target = t.rootfsMounted {
            let left = Mounts.detachAll(under: [target])
            if !left.isEmpty { logger.warning("cannot unmount", metadata: ["container": "\(id)", "mounts": "\(left)"]) }
        }
        if let disks { let bundle = t.bundle; _ = try? await blocking { disks.deleted(namespace: ns, id: id, bundle: bundle) } }
        if userns.inUse { let (userns, bundle) = (self.userns, t.bundle); _ = try? await blocking { userns.deleted(namespace: ns, id: id, bundle: bundle) } }
        t = take(key) ?? t
        let consoles = ([t.initProcess] + t.execs.values).compactMap(\.console)
        if !consoles.isEmpty { _ = try? await blocking { for c in consoles { c.close() } } }
        response.pid = UInt32(t.initProcess.pid)
        var code: UInt32 = 137
        var at = Date()
        if case .stopped(let c, let a) = t.initProcess.state { code = c; at = a }
        response.exitStatus = code
        response.exitedAt = Google_Protobuf_Timestamp(date: at)
        // Waiters of a task deleted before it ran.
        for w in t.initProcess.waiters { w.resume(returning: (code, at)) }
        var event = Containerd_Events_TaskDelete()
        event.containerID = id
        event.id = id
        event.pid = response.pid
        event.exitStatus = code
        event.exitedAt = response.exitedAt
        events?.post(namespace: ns, topic: .delete, event: event)
        logger.info("task deleted", metadata: ["namespace": "\(ns)", "container": "\(id)"])
        return response
    }

    func state(_ ns: String, _ r: Containerd_Task_V2_StateRequest) async throws -> Containerd_Task_V2_StateResponse {
        let t = try record(Key(namespace: ns, id: r.id))
        let current = r.execID.isEmpty ? t.initProcess : t.execs[r.execID]
        guard let p = current else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) not found") }
        var s = Containerd_Task_V2_StateResponse()
        s.id = r.id
        s.execID = r.execID
        s.bundle = t.bundle
        s.pid = UInt32(p.pid)
        s.stdin = p.stdin; s.stdout = p.stdout; s.stderr = p.stderr
        s.terminal = p.terminal
        switch p.state {
        case .created: s.status = .created
        case .running: s.status = r.execID.isEmpty && t.state == .paused ? .paused : .running
        case .stopped(let code, let at):
            s.status = .stopped
            s.exitStatus = code
            s.exitedAt = Google_Protobuf_Timestamp(date: at)
        }
        return s
    }

    func pids(_ ns: String, _ r: Containerd_Task_V2_PidsRequest) async throws -> Containerd_Task_V2_PidsResponse {
        _ = try record(Key(namespace: ns, id: r.id))
        let runtime = self.runtime(ns)
        let id = r.id
        let pids = try await blocking { try runtime.pids(id: id) }
        var response = Containerd_Task_V2_PidsResponse()
        response.processes = pids.map { pid in
            var info = Containerd_V1_Types_ProcessInfo()
            info.pid = UInt32(pid)
            return info
        }
        return response
    }

    func setPaused(_ ns: String, _ id: String, _ paused: Bool) async throws -> Google_Protobuf_Empty {
        let key = Key(namespace: ns, id: id)
        var t = try record(key)
        guard t.state == (paused ? .running : .paused) else {
            throw ShimError(.failedPrecondition, "task \(id) is not \(paused ? "running" : "paused")")
        }
        let runtime = self.runtime(ns)
        do { try await blocking { try runtime.setPaused(id: id, paused) } } catch {
            throw ShimError(.failedPrecondition, "\(paused ? "Pause" : "Resume") \(id): \(error)", underlying: error)
        }
        t = try record(key)
        t.state = paused ? .paused : .running
        put(key, t)
        if paused {
            var event = Containerd_Events_TaskPaused()
            event.containerID = id
            events?.post(namespace: ns, topic: .paused, event: event)
        } else {
            var event = Containerd_Events_TaskResumed()
            event.containerID = id
            events?.post(namespace: ns, topic: .resumed, event: event)
        }
        return Google_Protobuf_Empty()
    }

    func update(_ ns: String, _ r: Containerd_Task_V2_UpdateTaskRequest) async throws -> Google_Protobuf_Empty {
        _ = try record(Key(namespace: ns, id: r.id))
        // containerd sends the runtime-spec LinuxResources as JSON in the Any.
        let text = String(decoding: r.resources.value, as: UTF8.self)
        let resources: Resources
        do { resources = try Resources.parse(text, document: "resources") } catch {
            throw ShimError(.invalidArgument, "Update \(r.id): \(error)", underlying: error)
        }
        let runtime = self.runtime(ns)
        let id = r.id
        do { try await blocking { try runtime.update(id: id, resources: resources) } } catch let e as RuntimeError {
            throw ShimError(e.code == .invalidConfig || e.code == .unsupported ? .invalidArgument : .failedPrecondition,
                            "Update \(id): \(e)", underlying: e)
        }
        return Google_Protobuf_Empty()
    }

    func stats(_ ns: String, _ r: Containerd_Task_V2_StatsRequest) async throws -> Containerd_Task_V2_StatsResponse {
        _ = try record(Key(namespace: ns, id: r.id))
        guard let cg = runtime(ns).cgroup(id: r.id) else { throw ShimError(.notFound, "task \(r.id) has no cgroup") }
        func value(_ controller: String, _ file: String) -> UInt64 {
            UInt64((cg.get(controller, file) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        var m = Io_Containerd_Cgroups_V1_Metrics()
        m.pids.current = value("pids", "pids.current")
        m.pids.limit = value("pids", "pids.max")
        m.memory.usage.usage = value("memory", "memory.usage_in_bytes")
        m.memory.usage.limit = value("memory", "memory.limit_in_bytes")
        m.memory.usage.max = value("memory", "memory.max_usage_in_bytes")
        m.memory.usage.failcnt = value("memory", "memory.failcnt")
        m.cpu.usage.total = value("cpuacct", "cpuacct.usage")
        m.cpu.usage.user = value("cpuacct", "cpuacct.usage_user")
        m.cpu.usage.kernel = value("cpuacct", "cpuacct.usage_sys")
        var any = Google_Protobuf_Any()
        any.typeURL = Io_Containerd_Cgroups_V1_Metrics.protoMessageName
        any.value = try m.serializedData()
        var response = Containerd_Task_V2_StatsResponse()
        response.stats = any
        return response
    }

    func connect(_ ns: String, _ r: Containerd_Task_V2_ConnectRequest) async throws -> Containerd_Task_V2_ConnectResponse {
        let t = try record(Key(namespace: ns, id: r.id))
        var response = Containerd_Task_V2_ConnectResponse()
        response.shimPid = UInt32(getpid())
        response.taskPid = UInt32(t.initProcess.pid)
        response.version = "kangaroo"
        return response
    }

    func closeIO(_ ns: String, _ r: Containerd_Task_V2_CloseIORequest) async throws -> Google_Protobuf_Empty {
        // Without a terminal the processes hold containerd's stdin fifo
        // themselves: nothing of ours to close, containerd closes its
        // writer. With one, the stdin relay stops.
        let t = try record(Key(namespace: ns, id: r.id))
        let current = r.execID.isEmpty ? t.initProcess : t.execs[r.execID]
        guard let p = current else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) not found") }
        if r.stdin { p.console?.closeStdin() }
        return Google_Protobuf_Empty()
    }

    func resize(_ ns: String, _ r: Containerd_Task_V2_ResizePtyRequest) async throws -> Google_Protobuf_Empty {
        let t = try record(Key(namespace: ns, id: r.id))
        let current = r.execID.isEmpty ? t.initProcess : t.execs[r.execID]
        guard let p = current else { throw ShimError(.notFound, "exec \(r.execID) of task \(r.id) not found") }
        // As containerd's runc shim: a process without a terminal ignores it.
        try p.console?.resize(width: r.width, height: r.height)
        return Google_Protobuf_Empty()
    }

    // MARK: - Mounts and stdio

    /// Mounts containerd's rootfs mounts (from its snapshotter) at `target`.
    static func mountRootfs(_ mounts: [Containerd_Types_Mount], at target: String) throws(ShimError) {
        if !FileSystem.isDirectory(target) {
            do { try FileSystem.makeDirectories(target, mode: 0o711) } catch {
                throw ShimError(.failedPrecondition, "create rootfs directory \(target): \(error)")
            }
        }
        for m in mounts {
            var (flags, _, data) = MountOptions.parse(m.options)
            if m.type == "bind" { flags |= UInt(MS_BIND) }
            let rc = mount(m.source, target, m.type == "bind" ? nil : m.type, flags, data.isEmpty ? nil : data)
            guard rc == 0 else {
                let e = errno
                Mounts.detachAll(under: [target])
                throw ShimError(.invalidArgument, "mount \(m.type) \(m.source) on \(target) (\(m.options.joined(separator: ","))): \(String(cString: strerror(e)))")
            }
        }
    }

    /// containerd's stdio fifos, opened for the process: stdin to read
    /// (without waiting for a writer), stdout/stderr read-write so the open
    /// never blocks and the reader sees EOF when the process exits. An empty
    /// path is /dev/null.
    static func openStdio(stdin: String, stdout: String, stderr: String, what: String) throws(ShimError) -> [Int32] {
        var fds: [Int32] = []
        func open1(_ path: String, _ flags: Int32) throws(ShimError) {
            let fd = open(path.isEmpty ? "/dev/null" : path, flags | O_CLOEXEC)
            guard fd >= 0 else {
                let e = errno
                for f in fds { close(f) }
                throw ShimError(.invalidArgument, "\(what): open \(path): \(String(cString: strerror(e)))")
            }
            fds.append(fd)
        }
        try open1(stdin, O_RDONLY | O_NONBLOCK)
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) & ~O_NONBLOCK)
        try open1(stdout, stdout.isEmpty ? O_WRONLY : O_RDWR)
        try open1(stderr, stderr.isEmpty ? O_WRONLY : O_RDWR)
        return fds
    }
}

/// Steps to undo when a multi-step operation fails part way.
struct UndoList {
    private var steps: [() -> Void] = []
    private var armed = true
    mutating func add(_ step: @escaping () -> Void) { steps.append(step) }
    mutating func disarm() { armed = false }
    func run() { if armed { for s in steps.reversed() { s() } } }
}
