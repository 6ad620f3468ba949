import CKangaroo
import Foundation
import KangarooShim
import KangarooSystem
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// `kangaroo node` serving a shim socket is two processes: this small
/// supervisor and the daemon it starts (`node run --worker-fds`), so that a
/// daemon killed with SIGKILL loses containerd nothing:
///
/// - the supervisor owns the listening socket and a copy of every accepted
///   connection (the daemon sends each over the control socket), so
///   containerd's connections never see EOF (containerd 1.6 deletes every
///   task of a shim whose connection closes);
/// - it is the child subreaper above the daemon, so the container processes
///   of a dead daemon become its children: it reaps them and passes their
///   exit statuses on;
/// - it starts a new daemon at once, hands it the connections and statuses,
///   and the daemon takes over the tasks (recorded in the state directory)
///   and answers the requests the dead one had read (journaled).
///
/// It also keeps a copy of every terminal's pty master and containerd
/// fifos (a pty closed with the daemon would hang up its container, and a
/// fifo without a writer ends containerd's copy of the output).
///
/// Control messages (SOCK_SEQPACKET, text): daemon → supervisor `K id` with
/// a connection, `D id` (closed), `P name m|i|o` with a terminal's master,
/// stdin or stdout, `Q name` (terminal done), `R` (ready); supervisor →
/// daemon `C id` with a connection, `T name m|i|o` with a terminal's
/// descriptor, `S pid status`, `E` (end of the handover).
struct NodeSupervisor {
    let executable: String
    /// `node run` arguments for the daemon (without --ready-fd).
    let arguments: [String]
    let socket: String
    let readyFD: Int32?
    let logger: Logger

    nonisolated(unsafe) static var stopSignal: Int32 = 0
    /// POLLRDHUP (needs _GNU_SOURCE in C): the peer closed its end.
    static let pollRDHUP: Int16 = 0x2000

    func run() throws -> Int32 {
        _ = kr_set_child_subreaper()
        let listener: Int32
        do { listener = try UnixSocket.listen(socket, backlog: 512) } catch {
            throw CLIError("node: cannot listen on \(socket): \(error)")
        }
        defer { close(listener); unlink(socket) }
        for sig in [SIGTERM, SIGINT] {
            signal(sig) { NodeSupervisor.stopSignal = $0 }
        }
        signal(SIGPIPE, SIG_IGN)
        var connections: [String: Int32] = [:]
        var consoles: [String: [String: Int32]] = [:]
        var statuses: [(pid: Int32, status: Int32)] = []
        var generation = 0
        var ready = false
        var failures: [Date] = []
        while true {
            generation += 1
            var pair: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                throw CLIError("node: socketpair: \(String(cString: strerror(errno)))")
            }
            let control = pair[0]
            let worker: pid_t
            do {
                var options = Spawn.Options(inheritOutput: true)
                options.descriptors = [listener, pair[1]]
                worker = try Spawn.start(executable, ["node", "run"] + arguments
                                         + ["--worker-fds", "3,4", "--worker-generation", "\(generation)"], options)
            } catch {
                close(pair[0]); close(pair[1])
                throw CLIError("node: cannot start the daemon \(executable): \(error)")
            }
            close(pair[1])
            // The handover: the connections and the exits the daemon missed.
            for (id, fd) in connections.sorted(by: { $0.key < $1.key }) { send(control, "C \(id)", fd: fd) }
            for (name, fds) in consoles { for (role, fd) in fds { send(control, "T \(name) \(role)", fd: fd) } }
            for s in statuses { send(control, "S \(s.pid) \(s.status)") }
            send(control, "E")
            logger.info("node supervisor: daemon started", metadata: ["pid": "\(worker)", "generation": "\(generation)",
                                                                     "connections": "\(connections.count)"])
            var workerStatus: Int32?
            var controlOpen = true
            var stopping = false
            var stopDeadline = Date.distantFuture
            while workerStatus == nil {
                if NodeSupervisor.stopSignal != 0 && !stopping {
                    stopping = true
                    stopDeadline = Date().addingTimeInterval(30)
                    kill(worker, SIGTERM)
                }
                if stopping && Date() > stopDeadline { kill(worker, SIGKILL) }
                var fds = [pollfd(fd: controlOpen ? control : -1, events: Int16(POLLIN), revents: 0)]
                let ids = Array(connections.keys)
                for id in ids { fds.append(pollfd(fd: connections[id]!, events: Self.pollRDHUP, revents: 0)) }
                _ = poll(&fds, nfds_t(fds.count), 100)
                if controlOpen && fds[0].revents != 0 {
                    if let (message, fd) = receiveControlMessage(control) {
                        let parts = message.split(separator: " ")
                        switch parts.first {
                        case "K" where parts.count == 2 && fd >= 0: connections[String(parts[1])] = fd
                        case "D" where parts.count == 2:
                            if let old = connections.removeValue(forKey: String(parts[1])) { close(old) }
                        case "P" where parts.count == 3 && fd >= 0:
                            let (name, role) = (String(parts[1]), String(parts[2]))
                            if let old = consoles[name]?[role] { close(old) }
                            consoles[name, default: [:]][role] = fd
                        case "Q" where parts.count == 2:
                            for (_, old) in consoles.removeValue(forKey: String(parts[1])) ?? [:] { close(old) }
                        case "R":
                            if !ready, let readyFD {
                                let text = Array("ready\n".utf8)
                                _ = text.withUnsafeBytes { write(readyFD, $0.baseAddress, $0.count) }
                                close(readyFD)
                            }
                            ready = true
                        default:
                            if fd >= 0 { close(fd) }
                        }
                    } else {
                        controlOpen = false
                    }
                }
                // Connections containerd closed: drop our copy.
                for (i, id) in ids.enumerated() where fds[i + 1].revents & (Self.pollRDHUP | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                    if let fd = connections.removeValue(forKey: id) { close(fd) }
                }
                // Children: the daemon, and the container processes of
                // daemons that died (this is their subreaper now).
                while true {
                    var status: Int32 = 0
                    let pid = waitpid(-1, &status, WNOHANG)
                    if pid <= 0 { break }
                    if pid == worker {
                        workerStatus = status
                        continue
                    }
                    statuses.append((pid, status))
                    if statuses.count > 4096 { statuses.removeFirst(statuses.count - 4096) }
                    if controlOpen && workerStatus == nil { send(control, "S \(pid) \(status)") }
                }
            }
            close(control)
            let status = workerStatus ?? 0
            if stopping || NodeSupervisor.stopSignal != 0 {
                logger.info("node supervisor: daemon stopped; exiting")
                return 0
            }
            let code = kr_wifexited(status) != 0 ? "exit \(kr_wexitstatus(status))" : "signal \(status & 0x7f)"
            if !ready {
                logger.error("node supervisor: the daemon failed to start (\(code))")
                return kr_wifexited(status) != 0 ? kr_wexitstatus(status) : 1
            }
            logger.warning("node supervisor: daemon died (\(code)); starting a new one", metadata: ["pid": "\(worker)"])
            failures = failures.filter { $0 > Date().addingTimeInterval(-60) } + [Date()]
            if failures.count > 10 {
                logger.error("node supervisor: the daemon died \(failures.count) times within a minute; giving up")
                return 1
            }
            usleep(UInt32(min(2_000_000, 50_000 * (1 << min(failures.count - 1, 6)))))
        }
    }

    func send(_ socket: Int32, _ message: String, fd: Int32 = -1) {
        let bytes = Array(message.utf8)
        let rc = bytes.withUnsafeBytes { kr_send_message(socket, $0.baseAddress, $0.count, fd) }
        if rc < 0 { logger.warning("node supervisor: control message lost", metadata: ["message": "\(message)", "errno": "\(-rc)"]) }
    }
}

/// The daemon's end of the control socket: the handover at start, then
/// exit statuses as the supervisor reaps; connections reported back.
final class SupervisorLink: Sendable {
    let socket: Int32
    init(socket: Int32) { self.socket = socket }

    struct Handover {
        var connections: [(id: String, fd: Int32)] = []
        var statuses: [Int32: Int32] = [:]
        /// Terminals: name → [master, stdin, stdout] (-1: none).
        var consoles: [String: [Int32]] = [:]
    }

    /// Reads up to `E`.
    func handover() throws -> Handover {
        var h = Handover()
        while true {
            let (message, fd) = try receive()
            let parts = message.split(separator: " ")
            switch parts.first {
            case "E": return h
            case "C" where parts.count == 2 && fd >= 0: h.connections.append((String(parts[1]), fd))
            case "T" where parts.count == 3 && fd >= 0:
                guard let slot = ["m": 0, "i": 1, "o": 2][String(parts[2])] else { close(fd); continue }
                h.consoles[String(parts[1]), default: [-1, -1, -1]][slot] = fd
            case "S" where parts.count == 3:
                if let pid = Int32(parts[1]), let status = Int32(parts[2]) { h.statuses[pid] = status }
            default: if fd >= 0 { close(fd) }
            }
        }
    }

    /// Exit statuses from now on, to `deliver`, on a thread of its own;
    /// `lost` when the supervisor is gone (killed: nothing restarts this
    /// daemon any more, and its connections die with it).
    func forwardStatuses(to deliver: @escaping @Sendable (Int32, Int32) -> Void, lost: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { [self] in
            while let (message, fd) = try? receive() {
                if fd >= 0 { close(fd) }
                let parts = message.split(separator: " ")
                if parts.first == "S", parts.count == 3, let pid = Int32(parts[1]), let status = Int32(parts[2]) { deliver(pid, status) }
            }
            lost()
        }
    }

    func send(_ message: String, fd: Int32 = -1) {
        let bytes = Array(message.utf8)
        _ = bytes.withUnsafeBytes { kr_send_message(socket, $0.baseAddress, $0.count, fd) }
    }

    /// The supervisor keeps terminals' descriptors (see NodeSupervisor).
    var consoleKeeper: TaskService.ConsoleKeeper {
        TaskService.ConsoleKeeper(keep: { [self] name, master, stdin, stdout in
            for (role, fd) in [("m", master), ("i", stdin), ("o", stdout)] where fd >= 0 { send("P \(name) \(role)", fd: fd) }
        }, release: { [self] name in send("Q \(name)") })
    }

    private func receive() throws -> (String, Int32) {
        guard let m = receiveControlMessage(socket) else { throw CLIError("node: the supervisor's control socket closed") }
        return m
    }
}

/// One control message and the descriptor it carried (-1: none); nil at
/// EOF or on an error.
func receiveControlMessage(_ socket: Int32) -> (String, Int32)? {
    var buffer = [UInt8](repeating: 0, count: 256)
    var fd: Int32 = -1
    let n = buffer.withUnsafeMutableBytes { kr_recv_message(socket, $0.baseAddress, $0.count, &fd) }
    guard n > 0 else { return nil }
    return (String(decoding: buffer[0..<Int(n)], as: UTF8.self), fd)
}
