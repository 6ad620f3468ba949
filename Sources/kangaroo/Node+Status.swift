import ArgumentParser
import Dispatch
import Foundation
import KangarooLazyFS
import KangarooNetwork
import KangarooNode
import KangarooP2P
import KangarooShim
import KangarooSystem
import Synchronization

/// What `kangaroo node status` shows and the metrics endpoint exports.
struct NodeStatus: Codable, Sendable {
    struct Sandbox: Codable, Sendable {
        var id: String
        var namespace: String
        var containers: [String]
    }

    struct LazyMount: Codable, Sendable {
        var mountPoint: String
        var image: String
        /// fuse or kernel (erofs).
        var mode: String
        var serverPID: Int32?
        /// FUSE servers replaced after dying (failover).
        var takeovers: Int
        var pssKiB: Int?
        /// Compressed bytes the mount fetched from the registry (and its
        /// mirrors) and from other nodes (P2P); nil before its first stats.
        var bytesFromRegistry: UInt64?
        var bytesFromPeers: UInt64?
    }

    struct Memory: Codable, Sendable {
        var daemonRSSKiB: Int
        var daemonPSSKiB: Int
        var mountServersPSSKiB: Int
        /// (daemon + mount servers) PSS per running task; nil without tasks.
        var pssPerTaskKiB: Int?
    }

    var pid: Int32
    /// The supervisor keeping the daemon's connections (nil: unsupervised).
    var supervisorPID: Int32?
    /// Daemons the supervisor started before this one (crashes survived).
    var restarts: Int
    var uptimeSeconds: Double
    var shimSocket: String
    var root: String
    /// The Prometheus endpoint (host:port), if serving one.
    var metrics: String?
    var tasks: [TaskService.TaskInfo]
    var sandboxes: [Sandbox]
    var mounts: [LazyMount]
    var memory: Memory
    /// ttrpc requests answered, per method, with the time spent on them.
    var requests: [TTRPCRequestStats.Entry]
    /// The pod networks whose pools the daemon keeps.
    var networks: [NetworkStatus]?
    /// The sandbox disk pool, if the daemon keeps one.
    var disks: DiskStatus?
    /// What the node's peer served other nodes, if it runs one.
    var peer: PeerServer.Stats?
}

struct DiskStatus: Codable, Sendable {
    struct Entry: Codable, Sendable {
        var device: String?
        var sizeBytes: UInt64
        var state: String
        var owner: String?
        /// Bytes in use on a mounted sandbox disk (statfs).
        var usedBytes: UInt64?
        /// Whether an attached disk came from the pool, and how long
        /// acquiring it took.
        var fromPool: Bool?
        var setupMs: Double?
    }
    var nodeFile: String
    var nodeSizeBytes: UInt64
    var allocatedBytes: UInt64
    var free: Int
    var attached: Int
    var disks: [Entry]

    init?(_ config: DiskConfig, stateRoot: String) {
        guard let s = try? DiskPool(config: config).status() else { return nil }
        nodeFile = config.nodeFile
        nodeSizeBytes = s.nodeSize
        allocatedBytes = s.allocatedBytes
        free = s.disks.filter { $0.state == .free }.count
        attached = s.disks.filter { $0.state == .attached }.count
        disks = s.disks.map { d in
            var used: UInt64?
            if let owner = d.owner {
                var fs = statvfs()
                if statvfs(stateRoot + "/disks/" + owner, &fs) == 0 { used = UInt64(fs.f_blocks - fs.f_bfree) * UInt64(fs.f_frsize) }
            }
            return Entry(device: d.device, sizeBytes: d.size, state: d.state.rawValue, owner: d.owner, usedBytes: used,
                         fromPool: d.pooled, setupMs: d.setupMicros.map { Double($0) / 1000 })
        }
    }
}

/// The daemon's own ttrpc service `kangaroo.node.v1.Node` (method
/// `Status`, JSON in and out) on the shim socket, and the Prometheus text
/// of the same figures.
final class NodeStatusService: TTRPCService, Sendable {
    let serviceName = "kangaroo.node.v1.Node"
    let tasks: TaskService
    let keeper: FUSEKeeper?
    let root: String
    let socket: String
    let started = Date()
    let metricsAddress = Mutex<String?>(nil)
    /// Cleared if the supervisor dies (the daemon then runs unsupervised).
    let supervisorPID: Mutex<Int32?>
    let restarts: Int
    let requests: TTRPCRequestStats
    let networks: [NetworkConfig]
    let disks: DiskConfig?
    let stateRoot: String
    let peer: PeerServer?

    init(tasks: TaskService, keeper: FUSEKeeper?, root: String, socket: String, supervisorPID: Int32?, generation: Int,
         requests: TTRPCRequestStats, networks: [NetworkConfig] = [], disks: DiskConfig? = nil, stateRoot: String = "",
         peer: PeerServer? = nil) {
        self.tasks = tasks
        self.peer = peer
        self.networks = networks
        self.disks = disks
        self.stateRoot = stateRoot
        self.requests = requests
        self.keeper = keeper
        self.root = root
        self.socket = socket
        self.supervisorPID = Mutex(supervisorPID)
        self.restarts = max(0, generation - 1)
    }

    func handle(method: String, payload: [UInt8], context: TTRPCRequestContext) async throws -> [UInt8] {
        guard method == "Status" else { throw ShimError(.unimplemented, "\(serviceName)/\(method) is not implemented") }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(await status()))
    }

    func status() async -> NodeStatus {
        let list = await tasks.snapshot()
        var pods: [String: NodeStatus.Sandbox] = [:]
        for t in list {
            guard let id = t.sandbox else { continue }
            pods[id, default: .init(id: id, namespace: t.namespace, containers: [])].containers += t.isSandbox ? [] : [t.id]
        }
        let kept = Dictionary((keeper?.status ?? []).map { ($0.mountPoint, $0) }, uniquingKeysWith: { a, _ in a })
        var mounts: [NodeStatus.LazyMount] = []
        let images = root + "/snapshotter/images"
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []).sorted() {
            let mountPoint = images + "/" + name + "/mnt"
            guard let type = MountControl.mountedType(mountPoint) else { continue }
            let state = MountControl.readState(mountPoint)
            let pid = kept[mountPoint]?.pid ?? state.flatMap { $0.pid > 0 ? $0.pid : nil }
            let sources = MountControl.readStats(mountPoint)?.sources
            func bytes(_ roles: Set<String>) -> UInt64? {
                sources.map { $0.filter { roles.contains($0.role) }.reduce(0) { $0 + $1.bytes } }
            }
            mounts.append(.init(mountPoint: mountPoint, image: state?.image ?? "", mode: type == "erofs" ? "kernel" : "fuse",
                                serverPID: pid, takeovers: kept[mountPoint]?.takeovers ?? 0, pssKiB: pid.flatMap { Self.memory(of: $0)?.pss },
                                bytesFromRegistry: bytes(["origin", "mirror"]), bytesFromPeers: bytes(["peer"])))
        }
        let own = Self.memory(of: getpid())
        let servers = mounts.compactMap(\.pssKiB).reduce(0, +)
        let running = list.filter { $0.state == "running" || $0.state == "paused" }.count
        let memory = NodeStatus.Memory(daemonRSSKiB: own?.rss ?? 0, daemonPSSKiB: own?.pss ?? 0, mountServersPSSKiB: servers,
                                       pssPerTaskKiB: running > 0 ? ((own?.pss ?? 0) + servers) / running : nil)
        return NodeStatus(pid: getpid(), supervisorPID: supervisorPID.withLock { $0 }, restarts: restarts, uptimeSeconds: Date().timeIntervalSince(started), shimSocket: socket, root: root,
                          metrics: metricsAddress.withLock { $0 }, tasks: list, sandboxes: pods.values.sorted { $0.id < $1.id }, mounts: mounts, memory: memory,
                          requests: requests.snapshot(), networks: networks.compactMap { try? NetworkStatus($0) },
                          disks: disks.flatMap { DiskStatus($0, stateRoot: stateRoot) }, peer: peer?.stats())
    }

    /// RSS and PSS of a process in KiB (smaps_rollup).
    static func memory(of pid: Int32) -> (rss: Int, pss: Int)? {
        guard let text = try? FileSystem.readString("/proc/\(pid)/smaps_rollup") else { return nil }
        func field(_ name: String) -> Int? {
            text.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .flatMap { Int($0.dropFirst(name.count + 1).filter(\.isNumber)) }
        }
        guard let rss = field("Rss"), let pss = field("Pss") else { return nil }
        return (rss, pss)
    }

    /// The Prometheus text of the status (called on the endpoint's thread).
    func prometheus() -> String {
        let box = StatusBox()
        let done = DispatchSemaphore(value: 0)
        Task {
            box.value = await status()
            done.signal()
        }
        done.wait()
        guard let s = box.value else { return "" }
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            out += "# HELP kangaroo_node_\(name) \(help)\n# TYPE kangaroo_node_\(name) \(type)\n"
            for sample in samples { out += "kangaroo_node_\(name)\(sample.labels.isEmpty ? "" : "{\(sample.labels)}") \(sample.value)\n" }
        }
        var byState: [String: Int] = [:]
        for t in s.tasks { byState[t.state.hasPrefix("stopped") ? "stopped" : t.state, default: 0] += 1 }
        metric("tasks", "gauge", "Tasks served, by state.", ["created", "running", "paused", "stopped"].map { ("state=\"\($0)\"", "\(byState[$0] ?? 0)") })
        metric("sandboxes", "gauge", "CRI pod sandboxes with a task here.", [("", "\(s.sandboxes.count)")])
        metric("lazy_mounts", "gauge", "Lazy image mounts, by mode.", ["fuse", "kernel"].map { m in ("mode=\"\(m)\"", "\(s.mounts.filter { $0.mode == m }.count)") })
        metric("fuse_takeovers_total", "counter", "FUSE servers replaced after they died, per mount.",
               s.mounts.filter { $0.mode == "fuse" }.map { ("mountpoint=\"\(MetricsEndpoint.escape($0.mountPoint))\"", "\($0.takeovers)") })
        metric("memory_pss_bytes", "gauge", "Proportional set size of the daemon and of the lazy mount servers.",
               [("process=\"daemon\"", "\(s.memory.daemonPSSKiB * 1024)"), ("process=\"mount-servers\"", "\(s.memory.mountServersPSSKiB * 1024)")])
        metric("memory_rss_bytes", "gauge", "Resident set size of the daemon.", [("", "\(s.memory.daemonRSSKiB * 1024)")])
        func labels(_ r: TTRPCRequestStats.Entry) -> String { "service=\"\(r.service)\",method=\"\(r.method)\"" }
        metric("ttrpc_requests_total", "counter", "ttrpc requests answered, per method.", s.requests.map { (labels($0), "\($0.count)") })
        metric("ttrpc_requests_failed_total", "counter", "ttrpc requests answered with an error, per method.",
               s.requests.map { (labels($0), "\($0.failed)") })
        metric("ttrpc_request_seconds_total", "counter", "Seconds spent answering ttrpc requests, per method (Wait: until the exit).",
               s.requests.map { (labels($0), String(format: "%.6f", $0.seconds)) })
        let nets = s.networks ?? []
        metric("network_slots", "gauge", "Pod network addresses: in the pool (free), handed to pods (attached).",
               nets.flatMap { n in [("network=\"\(n.name)\",state=\"free\"", "\(n.free)"), ("network=\"\(n.name)\",state=\"attached\"", "\(n.pods.count)")] })
        metric("network_capacity", "gauge", "Pod addresses of the network's subnet.", nets.map { ("network=\"\($0.name)\"", "\($0.capacity)") })
        if let d = s.disks {
            metric("disks", "gauge", "Sandbox disks: formatted in the pool (free), a sandbox's (attached).",
                   [("state=\"free\"", "\(d.free)"), ("state=\"attached\"", "\(d.attached)")])
            metric("disk_node_allocated_bytes", "gauge", "Bytes the sparse node disk file holds.", [("", "\(d.allocatedBytes)")])
            metric("disk_used_bytes", "gauge", "Bytes in use on each sandbox's disk.",
                   d.disks.compactMap { e in e.usedBytes.map { ("sandbox=\"\(MetricsEndpoint.escape(e.owner ?? ""))\"", "\($0)") } })
        }
        metric("lazy_fetched_bytes_total", "counter", "Compressed bytes the lazy mounts fetched, from the registry (and its mirrors) and from other nodes.",
               [("from=\"registry\"", "\(s.mounts.compactMap(\.bytesFromRegistry).reduce(0, +))"),
                ("from=\"peers\"", "\(s.mounts.compactMap(\.bytesFromPeers).reduce(0, +))")])
        if let p = s.peer {
            metric("peer_uploaded_bytes_total", "counter", "Bytes the node's peer served other nodes.", [("", "\(p.bytesUploaded)")])
            metric("peer_requests_total", "counter", "Requests to the node's peer, by answer.",
                   [("answer=\"served\"", "\(p.uploads)"), ("answer=\"not_held\"", "\(p.notHeld)"),
                    ("answer=\"unauthorized\"", "\(p.unauthorized)"), ("answer=\"busy\"", "\(p.busy)")])
        }
        metric("uptime_seconds", "gauge", "Seconds since the daemon started.", [("", String(format: "%.1f", s.uptimeSeconds))])
        metric("restarts_total", "counter", "Daemons the supervisor started after one died.", [("", "\(s.restarts)")])
        return out
    }
}

private final class StatusBox: @unchecked Sendable {
    var value: NodeStatus?
}

/// `kangaroo node status`: asks the running daemon.
struct NodeStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the running node daemon's tasks, sandboxes, lazy mounts and memory.")

    @Option(name: .long, help: ArgumentHelp("The daemon's ttrpc socket.", valueName: "path"))
    var shimSocket: String = NodeCommand.env["KANGAROO_SHIM_SOCKET"] ?? "/run/kangaroo/shim.sock"

    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let bytes: [UInt8]
        do {
            let client = try await TTRPCClient.connect(path: shimSocket)
            defer { Task { await client.close() } }
            bytes = try await client.call(service: "kangaroo.node.v1.Node", method: "Status", payload: [], timeout: .seconds(10))
        } catch {
            fail(CLIError("node status: no node daemon answers on \(shimSocket) (\(error)); start one with `kangaroo node` or pass --shim-socket"))
        }
        if json {
            print(String(decoding: bytes, as: UTF8.self))
            return
        }
        let s: NodeStatus
        do { s = try JSONDecoder().decode(NodeStatus.self, from: Data(bytes)) } catch {
            fail(CLIError("node status: the daemon's answer is not a status: \(error)"))
        }
        func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: max(width, text.count + 1), withPad: " ", startingAt: 0) }
        print("node daemon pid \(s.pid)" + (s.supervisorPID.map { " (supervisor \($0), \(s.restarts) restarts)" } ?? " (unsupervised)")
              + ", up \(Int(s.uptimeSeconds)) s, socket \(s.shimSocket), root \(s.root)"
              + (s.metrics.map { ", metrics http://\($0)/metrics" } ?? ""))
        print("\nTASKS (\(s.tasks.count))")
        if !s.tasks.isEmpty {
            print(pad("NAMESPACE", 12) + pad("ID", 28) + pad("PID", 9) + pad("STATE", 14) + pad("EXECS", 7) + "SANDBOX")
            for t in s.tasks {
                let sandbox = t.isSandbox ? "(sandbox)" : (t.sandbox.map { String($0.prefix(12)) } ?? "-")
                print(pad(t.namespace, 12) + pad(String(t.id.prefix(26)), 28) + pad("\(t.pid)", 9) + pad(t.state, 14) + pad("\(t.execs)", 7) + sandbox)
            }
        }
        print("\nSANDBOXES (\(s.sandboxes.count))")
        for p in s.sandboxes { print("\(p.id.prefix(12))  \(p.namespace)  \(p.containers.count) containers") }
        print("\nLAZY MOUNTS (\(s.mounts.count))")
        for m in s.mounts {
            let server = m.serverPID.map { "server \($0)" } ?? "no server"
            let pss = m.pssKiB.map { ", PSS \($0) KiB" } ?? ""
            let fetched = m.bytesFromRegistry.map { r in ", fetched \(r >> 10) KiB from the registry, \((m.bytesFromPeers ?? 0) >> 10) KiB from peers" } ?? ""
            print("\(m.image.isEmpty ? m.mountPoint : m.image)  \(m.mode)  \(server)\(pss), \(m.takeovers) takeovers\(fetched)")
        }
        if let p = s.peer {
            print("\nPEER (served to other nodes)")
            print("\(p.bytesUploaded >> 10) KiB in \(p.uploads) answers; \(p.notHeld) not held, \(p.unauthorized) refused (no token), \(p.busy) busy")
        }
        print("\nMEMORY")
        print("daemon RSS \(s.memory.daemonRSSKiB) KiB, PSS \(s.memory.daemonPSSKiB) KiB; mount servers PSS \(s.memory.mountServersPSSKiB) KiB"
              + (s.memory.pssPerTaskKiB.map { "; \($0) KiB per running task" } ?? ""))
        if let nets = s.networks, !nets.isEmpty {
            print("\nNETWORKS")
            for n in nets { n.lines.forEach { print($0) } }
        }
        if let d = s.disks {
            print("\nDISKS (\(d.nodeFile): \(d.nodeSizeBytes >> 20) MiB, \(d.allocatedBytes >> 20) MiB allocated; \(d.free) free, \(d.attached) attached)")
            for e in d.disks where e.owner != nil {
                print("\(e.owner!)  \(e.device ?? "-")  \(e.sizeBytes >> 20) MiB" + (e.usedBytes.map { ", \($0 >> 20) MiB used" } ?? ""))
            }
        }
        print("\nREQUESTS (ttrpc, since the daemon started)")
        if !s.requests.isEmpty {
            print(pad("METHOD", 40) + pad("COUNT", 9) + pad("FAILED", 8) + "MEAN MS")
            for r in s.requests {
                let mean = r.count > 0 ? String(format: "%.2f", r.seconds * 1000 / Double(r.count)) : "-"
                print(pad(r.service + "/" + r.method, 40) + pad("\(r.count)", 9) + pad("\(r.failed)", 8) + mean)
            }
        }
    }
}
