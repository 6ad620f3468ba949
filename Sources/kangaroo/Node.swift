import ArgumentParser
import Dispatch
import Foundation
import KangarooShim
import KangarooSystem
import Logging

/// `kangaroo node`: the node daemon. One process per node serves containerd
/// as the shim v2 Task service of every task (`containerd-shim-kangaroo-v2
/// start` starts it when it is not running and hands containerd its socket).
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run the node daemon: containerd's shim v2 Task service for every task of the node.")

    static let env = ProcessInfo.processInfo.environment

    @Option(name: .long, help: ArgumentHelp("Runtime state (container state, sockets).", valueName: "dir"))
    var state: String = env["KANGAROO_NODE_STATE"] ?? "/run/kangaroo/node"

    @Option(name: .long, help: ArgumentHelp("The ttrpc socket containerd's shim calls go to.", valueName: "path"))
    var shimSocket: String = env["KANGAROO_SHIM_SOCKET"] ?? "/run/kangaroo/shim.sock"

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
            try FileSystem.makeDirectories((shimSocket as NSString).deletingLastPathComponent, mode: 0o711)
        } catch {
            throw CLIError("node: cannot create \(state) or the socket's directory: \(error)")
        }
        let reaper = Reaper()
        reaper.start(becomeSubreaper: true)
        let publisher = events.map { EventPublisher(address: $0, logger: logger) }
        let tasks = TaskService(stateRoot: state, events: publisher, reaper: reaper, logger: logger)
        let server = TTRPCServer(path: shimSocket, services: [tasks], logger: logger)
        do { try await server.start() } catch {
            throw CLIError("node: cannot listen on \(shimSocket): \(error)")
        }
        logger.info("node daemon ready", metadata: ["socket": "\(shimSocket)", "state": "\(state)", "events": "\(events ?? "none")"])
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
        await server.close()
        await publisher?.close()
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
