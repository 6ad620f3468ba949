import ArgumentParser
import Dispatch
import Foundation
import KangarooShim
import KangarooSnapshotter
import KangarooSystem
import Logging

/// `kangaroo node`: the node daemon. One process per node serves containerd
/// as the shim v2 Task service of every task (`containerd-shim-kangaroo-v2
/// start` starts it when it is not running and hands containerd its socket).
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run the node daemon: containerd's shim v2 Task service for every task and its remote snapshotter.")

    static let env = ProcessInfo.processInfo.environment

    @Option(name: .long, help: ArgumentHelp("Runtime state (container state, sockets).", valueName: "dir"))
    var state: String = env["KANGAROO_NODE_STATE"] ?? "/run/kangaroo/node"

    @Option(name: .long, help: ArgumentHelp("Persistent data (snapshots, image store, chunk cache).", valueName: "dir"))
    var root: String = env["KANGAROO_NODE_ROOT"] ?? "/var/lib/kangaroo/node"

    @Option(name: .long, help: ArgumentHelp("The ttrpc socket containerd's shim calls go to; \"none\": no shim service (a snapshotter-only daemon).", valueName: "path"))
    var shimSocket: String = env["KANGAROO_SHIM_SOCKET"] ?? "/run/kangaroo/shim.sock"

    @Option(name: .long, help: ArgumentHelp("The gRPC socket of the snapshotter (containerd proxy plugin); \"none\": no snapshotter.", valueName: "path"))
    var snapshotterSocket: String = env["KANGAROO_SNAPSHOTTER_SOCKET"] ?? "/run/kangaroo/snapshotter.sock"

    @Option(name: .long, help: ArgumentHelp("containerd's ttrpc address for task events (default: $TTRPC_ADDRESS).", valueName: "address"))
    var events: String? = env["TTRPC_ADDRESS"]

    @Option(name: .long, help: ArgumentHelp("Write \"ready\" to this descriptor once the socket accepts calls.", valueName: "fd"))
    var readyFD: Int32?

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error.", valueName: "level"))
    var logLevel: String = env["KANGAROO_LOG_LEVEL"] ?? "info"

    func run() async throws {
        LoggingSetup.bootstrap(level: Logger.Level(rawValue: logLevel) ?? .info)
        var logger = Logger(label: "kangaroo.node")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        do {
            try FileSystem.makeDirectories(state, mode: 0o711)
            if shimSocket != "none" {
                try FileSystem.makeDirectories((shimSocket as NSString).deletingLastPathComponent, mode: 0o711)
            }
            try FileSystem.makeDirectories(root, mode: 0o711)
            if snapshotterSocket != "none" {
                try FileSystem.makeDirectories((snapshotterSocket as NSString).deletingLastPathComponent, mode: 0o711)
            }
        } catch {
            throw CLIError("node: cannot create \(state), \(root) or the sockets' directories: \(error)")
        }
        let reaper = Reaper()
        reaper.start(becomeSubreaper: true)
        let publisher = events.map { EventPublisher(address: $0, logger: logger) }
        let tasks = TaskService(stateRoot: state, events: publisher, reaper: reaper, logger: logger)
        guard shimSocket != "none" || snapshotterSocket != "none" else {
            throw CLIError("node: --shim-socket none and --snapshotter-socket none: nothing to serve")
        }
        let server: TTRPCServer? = shimSocket == "none" ? nil : TTRPCServer(path: shimSocket, services: [tasks], logger: logger)
        do { try await server?.start() } catch {
            throw CLIError("node: cannot listen on \(shimSocket): \(error)")
        }
        let snapshots = try await startSnapshotter(reaper: reaper, logger: logger)
        logger.info("node daemon ready", metadata: ["socket": "\(shimSocket)", "snapshotter": "\(snapshotterSocket)",
                                                    "state": "\(state)", "root": "\(root)", "events": "\(events ?? "none")"])
        if let fd = readyFD {
            let msg = Array("ready\n".utf8)
            _ = msg.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        // SIGTERM and SIGINT stop accepting calls; running containers stay.
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let once = OnceFlag()
            for sig in [SIGTERM, SIGINT] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { if once.set() { c.resume() } }
                source.resume()
                Signals.keep(source)
            }
        }
        logger.info("node daemon stopping")
        snapshots?.server.stop()
        try? await snapshots?.task.value
        await server?.close()
        await publisher?.close()
    }
}

extension NodeCommand {
    /// The snapshotter's store under ROOT/snapshotter, its lazy mounts made by
    /// this executable, served on the snapshotter socket.
    func startSnapshotter(reaper: Reaper, logger: Logger) async throws -> (server: SnapshotServer, task: Task<Void, any Error>)? {
        guard snapshotterSocket != "none" else { return nil }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let mounter = ProcessImageMounter(executable: exe, store: root + "/store", cache: root + "/cache", reaper: reaper, logger: logger)
        let store: SnapshotStore
        do { store = try SnapshotStore(root: root + "/snapshotter", mounter: mounter, logger: logger) } catch {
            throw CLIError("node: \(error)")
        }
        // A restarted daemon holds the connections of the lazy mounts its
        // predecessor made again (FUSE failover).
        let images = root + "/snapshotter/images"
        mounter.adopt(((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []).map { images + "/" + $0 + "/mnt" })
        let server = SnapshotServer(path: snapshotterSocket, service: SnapshotService(store: store, logger: logger))
        let task = Task { try await server.serve() }
        do { try await server.listening() } catch {
            throw CLIError("node: cannot listen on \(snapshotterSocket): \(error)")
        }
        return (server, task)
    }
}

/// Set once, from any thread.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func set() -> Bool { lock.lock(); defer { lock.unlock() }; if done { return false }; done = true; return true }
}

/// Keeps signal sources alive for the life of the process.
enum Signals {
    nonisolated(unsafe) static var sources: [any DispatchSourceSignal] = []
    static func keep(_ s: any DispatchSourceSignal) { sources.append(s) }
}
