import ArgumentParser
import Dispatch
import Foundation
import KangarooChunks
import KangarooLazyFS
import KangarooNetwork
import KangarooNode
import KangarooOCI
import KangarooP2P
import KangarooShim
import KangarooSnapshotter
import KangarooSystem
import Logging
import ServiceLifecycle

/// `kangaroo node`: the node daemon (`node run`, the default) and `node
/// status`.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "The node daemon: containerd's shim v2 Task service for every task and its remote snapshotter.",
        subcommands: [NodeRun.self, NodeStatusCommand.self],
        defaultSubcommand: NodeRun.self)

    static let env = ProcessInfo.processInfo.environment
}

/// `kangaroo node [run]`: one process per node serves containerd as the
/// shim v2 Task service of every task (`containerd-shim-kangaroo-v2 start`
/// starts it when it is not running and hands containerd its socket) and
/// as its remote snapshotter. A ServiceGroup: SIGTERM or SIGINT stop
/// accepting calls, let running ones finish and exit; containers and lazy
/// mounts stay.
struct NodeRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the node daemon in the foreground (the default of `kangaroo node`).")

    static var env: [String: String] { NodeCommand.env }

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

    @Option(name: .long, help: ArgumentHelp("When a Kangaroo image is mounted lazily: pull (kept while the image is there) or first-use (at its first container, gone with the last).", valueName: "when"))
    var lazyMount: String = env["KANGAROO_LAZY_MOUNT"] ?? "pull"

    @Option(name: .long, help: ArgumentHelp("Serve Prometheus metrics on HOST:PORT (GET /metrics; an IPv4 address, e.g. 127.0.0.1:9465).", valueName: "host:port"))
    var metrics: String? = env["KANGAROO_NODE_METRICS"]

    @Option(name: .long, help: ArgumentHelp("Write \"ready\" to this descriptor once the socket accepts calls.", valueName: "fd"))
    var readyFD: Int32?

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error.", valueName: "level"))
    var logLevel: String = env["KANGAROO_LOG_LEVEL"] ?? "info"

    @Option(name: .long, help: ArgumentHelp("Keep the pool of this pod network (a kangaroo-cni CNI configuration) filled; repeatable.", valueName: "config"))
    var network: [String] = env["KANGAROO_NODE_NETWORK"].map { [$0] } ?? []

    @Flag(inversion: .prefixedNo, help: "Give every CRI sandbox a disk of its own from the node's disk pool (kept full): its containers' writable layers live there (default: $KANGAROO_NODE_DISKS = 1).")
    var disks = NodeCommand.env["KANGAROO_NODE_DISKS"] == "1"
    @OptionGroup var diskOptions: DiskOptions

    @Option(name: .long, help: ArgumentHelp("Registry mirrors of the lazy mounts: DIR/<registry host>/hosts.toml, containerd's format (default: $KANGAROO_HOSTS_DIR or /etc/kangaroo/certs.d).", valueName: "dir"))
    var hostsDir: String = env["KANGAROO_HOSTS_DIR"] ?? RegistryHosts.defaultDirectory

    @Option(name: .long, help: ArgumentHelp("Serve the node's chunk cache to other nodes on HOST:PORT (kangaroo peer; the lazy mounts then keep compressed chunks too; default: $KANGAROO_NODE_PEER).", valueName: "host:port"))
    var peerListen: String? = env["KANGAROO_NODE_PEER"]

    @Option(name: .long, help: ArgumentHelp("The cluster token the peer's clients present (needed with --peer-listen; default: $KANGAROO_NODE_PEER_TOKEN_FILE).", valueName: "file"))
    var peerTokenFile: String? = env["KANGAROO_NODE_PEER_TOKEN_FILE"]

    @Option(name: .long, help: ArgumentHelp("Trackers (HOST:PORT,...) through which the lazy mounts get chunks from other nodes and announce theirs (needs --peer-listen on an address other nodes reach; default: $KANGAROO_NODE_TRACKERS).", valueName: "list"))
    var trackers: String? = env["KANGAROO_NODE_TRACKERS"]

    @Flag(inversion: .prefixedNo, help: "Run the daemon under a supervisor that keeps containerd's connections and the containers' exits across a daemon crash and restarts it.")
    var supervise = true

    @Option(name: .long, help: .hidden) var workerFds: String?
    @Option(name: .long, help: .hidden) var workerGeneration: Int = 1

    func run() async throws {
        LoggingSetup.bootstrap(level: Logger.Level(rawValue: logLevel) ?? .info)
        var logger = Logger(label: "kangaroo.node")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        guard shimSocket != "none" || snapshotterSocket != "none" else {
            throw CLIError("node: --shim-socket none and --snapshotter-socket none: nothing to serve")
        }
        let metricsAddress = try metrics.map { try parseHostPort($0, option: "--metrics") }
        let peer = try peerListen.map { listen -> PeerServer.Configuration in
            let address = try parseHostPort(listen, option: "--peer-listen")
            guard let file = peerTokenFile else { throw CLIError("node: --peer-listen needs --peer-token-file (the cluster token)") }
            return PeerServer.Configuration(host: address.host, port: Int(address.port), token: try readClusterToken(file))
        }
        if trackers != nil {
            guard let peer, peer.host != "0.0.0.0", peer.port != 0 else {
                throw CLIError("node: --trackers needs --peer-listen on an address and port other nodes reach (not 0.0.0.0 or port 0)")
            }
        }
        let networks: [NetworkConfig]
        do { networks = try network.map { p throws(NetworkError) in try NetworkConfig.load(p) } } catch {
            throw CLIError("node: --network: \(error)")
        }
        guard let mountPolicy = SnapshotStore.MountPolicy(rawValue: lazyMount) else {
            throw CLIError("node: --lazy-mount '\(lazyMount)' is not one of pull, first-use")
        }
        if shimSocket != "none" && supervise && workerFds == nil {
            try FileSystem.makeDirectories((shimSocket as NSString).deletingLastPathComponent, mode: 0o711)
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            var args = ["--state", state, "--root", root, "--shim-socket", shimSocket, "--snapshotter-socket", snapshotterSocket,
                        "--log-level", logLevel, "--lazy-mount", lazyMount]
            if let events { args += ["--events", events] }
            if let metrics { args += ["--metrics", metrics] }
            args += ["--hosts-dir", hostsDir]
            if let peerListen { args += ["--peer-listen", peerListen] }
            if let peerTokenFile { args += ["--peer-token-file", peerTokenFile] }
            if let trackers { args += ["--trackers", trackers] }
            for n in network { args += ["--network", n] }
            if disks {
                args += ["--disks", "--disk-file", diskOptions.diskFile, "--disk-node-size", diskOptions.diskNodeSize,
                         "--disk-default-size", diskOptions.diskDefaultSize, "--disk-pool", "\(diskOptions.diskPool)",
                         "--disk-state", diskOptions.diskState]
            }
            let supervisor = NodeSupervisor(executable: exe, arguments: args, socket: shimSocket, readyFD: readyFD, logger: logger)
            Foundation.exit(try supervisor.run())
        }
        // A supervised daemon: its listening socket and the control socket.
        var link: SupervisorLink?
        var listener: Int32 = -1
        var handover = SupervisorLink.Handover()
        if let fds = workerFds {
            let parts = fds.split(separator: ",").compactMap { Int32($0) }
            guard parts.count == 2 else { throw CLIError("node: --worker-fds '\(fds)' is not LISTEN,CONTROL") }
            listener = parts[0]
            link = SupervisorLink(socket: parts[1])
            handover = try link!.handover()
        }
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
        // Supervised, events wait in a journal until containerd has them
        // (the next daemon sends what this one could not).
        let publisher = events.map { EventPublisher(address: $0, logger: logger, journal: link == nil ? nil : state + "/events") }
        let diskConfig = disks ? try diskOptions.config() : nil
        let tasks = TaskService(stateRoot: state, events: publisher, reaper: reaper, logger: logger, consoleKeeper: link?.consoleKeeper,
                                disks: diskConfig.map { SandboxDisks(pool: $0, stateRoot: state) })
        let snapshots = try await startSnapshotter(reaper: reaper, mountPolicy: mountPolicy, keepCompressed: peer != nil, logger: logger)
        let requests = TTRPCRequestStats()
        let peerServer = peer.map { configuration -> PeerServer in
            var configuration = configuration
            // Preheats as the lazy mounts fetch: the node's store, cache and P2P options.
            let args = ["--store", root + "/store", "--log-level", logLevel] + lazyMountOptions(keepCompressed: true)
            let cache = root + "/cache", preheatLogger = logger
            configuration.preheat = { request in
                try await preheatProcess(request, cache: cache, args: args, reaper: reaper, logger: preheatLogger)
            }
            return PeerServer(reader: CacheReader(directory: cache, store: root + "/store"), configuration: configuration, logger: logger)
        }
        let status = NodeStatusService(tasks: tasks, keeper: snapshots?.keeper, root: root, socket: shimSocket,
                                       supervisorPID: link == nil ? nil : getppid(), generation: workerGeneration, requests: requests,
                                       networks: networks, disks: diskConfig, stateRoot: state, peer: peerServer)
        let server: TTRPCServer? = shimSocket == "none" ? nil
            : TTRPCServer(path: shimSocket, services: [tasks, status], logger: logger, requests: requests)
        if let link, let server {
            // Tasks of the daemon before this one first, then its
            // connections and unanswered requests, then new connections.
            _ = await tasks.restore(statuses: handover.statuses, consoles: handover.consoles)
            for (pid, status) in handover.statuses { reaper.deliver(pid, status: status) }
            link.forwardStatuses(to: { pid, status in reaper.deliver(pid, status: status) }, lost: { [logger] in
                status.supervisorPID.withLock { $0 = nil }
                logger.error("node: the supervisor is gone; serving on unsupervised (a crash of this daemon now closes containerd's connections); restart `kangaroo node` to supervise again")
            })
            let supervision = TTRPCServer.Supervision(
                accepted: { fd, id in link.send("K \(id)", fd: fd) }, closed: { id in link.send("D \(id)") },
                journal: state + "/inflight", generation: workerGeneration)
            do { try await server.serve(listening: listener, connections: handover.connections, supervision: supervision) } catch {
                throw CLIError("node: cannot serve the supervisor's socket: \(error)")
            }
        } else {
            do { try await server?.start() } catch {
                throw CLIError("node: cannot listen on \(shimSocket): \(error)")
            }
        }
        var endpoint: MetricsEndpoint?
        if let address = metricsAddress {
            do { endpoint = try MetricsEndpoint(host: address.host, port: address.port, logger: logger) { status.prometheus() } } catch {
                throw CLIError("node: \(error)")
            }
            status.metricsAddress.withLock { $0 = "\(address.host):\(endpoint!.port)" }
        }
        if let mounts = try? FileSystem.readString("/proc/self/mounts") {
            let cgroup2 = mounts.split(separator: "\n").filter { $0.split(separator: " ").dropFirst(2).first == "cgroup2" }
            if !cgroup2.isEmpty && !cgroup2.contains(where: { $0.contains("favordynmods") }) {
                logger.notice("cgroup favordynmods is off: every container start waits 10-20 ms for an RCU grace period to join its cgroups; scripts/node-tuning.sh turns it on (mount -o remount,favordynmods on the cgroup2 mount)")
            }
        }
        logger.info("node daemon ready", metadata: ["socket": "\(shimSocket)", "snapshotter": "\(snapshotterSocket)",
                                                    "state": "\(state)", "root": "\(root)", "events": "\(events ?? "none")",
                                                    "metrics": "\(endpoint.map { "\(metricsAddress!.host):\($0.port)" } ?? "none")"])
        if let link {
            link.send("R")
        } else if let fd = readyFD {
            let msg = Array("ready\n".utf8)
            _ = msg.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        var services: [any Service] = []
        if let server { services.append(ShimServerService(server: server, publisher: publisher)) }
        if let snapshots { services.append(SnapshotterServerService(server: snapshots.server, task: snapshots.task)) }
        if !networks.isEmpty { services.append(NetworkPoolService(configs: networks, logger: logger)) }
        if let diskConfig { services.append(DiskPoolService(config: diskConfig, logger: logger)) }
        if let peerServer { services.append(PeerService(server: peerServer)) }
        let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        endpoint?.close()
        logger.info("node daemon stopped")
    }
}

/// HOST:PORT of an IPv4 listener.
func parseHostPort(_ text: String, option: String) throws -> (host: String, port: UInt16) {
    let parts = text.split(separator: ":")
    guard parts.count == 2, let port = UInt16(parts[1]) else {
        throw CLIError("\(option) '\(text)' is not HOST:PORT (e.g. 127.0.0.1:9465)")
    }
    return (String(parts[0]), port)
}

/// The shim's ttrpc server as a service: on graceful shutdown it stops
/// accepting connections, then the event publisher flushes and closes.
struct ShimServerService: Service {
    let server: TTRPCServer
    let publisher: EventPublisher?
    func run() async throws {
        try? await gracefulShutdown()
        await server.close()
        await publisher?.close()
    }
}

/// The snapshotter's gRPC server as a service: graceful shutdown lets
/// running calls finish.
struct SnapshotterServerService: Service {
    let server: SnapshotServer
    let task: Task<Void, any Error>
    func run() async throws {
        try? await gracefulShutdown()
        server.stop()
        try await task.value
    }
}

extension NodeRun {
    /// What the lazy mounts (and preheats) are given: registry hosts and, with trackers, the P2P options.
    func lazyMountOptions(keepCompressed: Bool) -> [String] {
        var options = ["--hosts-dir", hostsDir] + (keepCompressed ? ["--keep-compressed"] : [])
        if let trackers, let peerListen, let peerTokenFile {
            options += ["--trackers", trackers, "--peer-address", peerListen, "--peer-token-file", peerTokenFile]
        }
        return options
    }

    /// The snapshotter's store under ROOT/snapshotter, its lazy mounts made by
    /// this executable, served on the snapshotter socket.
    func startSnapshotter(reaper: Reaper, mountPolicy: SnapshotStore.MountPolicy, keepCompressed: Bool, logger: Logger) async throws -> (server: SnapshotServer, task: Task<Void, any Error>, keeper: FUSEKeeper)? {
        guard snapshotterSocket != "none" else { return nil }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let mounter = ProcessImageMounter(executable: exe, store: root + "/store", cache: root + "/cache",
                                          options: lazyMountOptions(keepCompressed: keepCompressed),
                                          reaper: reaper, logger: logger)
        let store: SnapshotStore
        do { store = try SnapshotStore(root: root + "/snapshotter", mounter: mounter, mountPolicy: mountPolicy, logger: logger) } catch {
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
        return (server, task, mounter.keeper)
    }
}
