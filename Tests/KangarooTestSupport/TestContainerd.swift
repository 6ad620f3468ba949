import Foundation
import Testing

/// A private containerd (Debian's 1.6) with its own root, state and sockets
/// in a temporary directory: `extraConfig` is appended to its config.toml
/// (runtimes, proxy plugins). The CRI plugin is disabled unless
/// `cri` is set. Stopped, and its mounts removed, by `stop()` or at deinit.
public final class TestContainerd: @unchecked Sendable {
    public let dir: TempDir
    public private(set) var process = Process()
    let environment: [String: String]
    public var socket: String { dir.sub("containerd.sock") }
    public var ttrpcSocket: String { dir.sub("containerd.sock.ttrpc") }
    public var ctr: [String] { ["--address", socket] }

    public init(extraConfig: String = "", cri: Bool = false, environment: [String: String] = [:]) throws {
        dir = try TempDir("containerd")
        self.environment = environment
        let config = """
        version = 2
        root = "\(dir.sub("root"))"
        state = "\(dir.sub("state"))"
        \(cri ? "" : "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]")
        [grpc]
          address = "\(socket)"
        [ttrpc]
          address = "\(ttrpcSocket)"
        \(extraConfig)
        """
        try config.write(toFile: dir.sub("config.toml"), atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: dir.sub("log"), contents: nil)
        try launch()
    }

    private func launch() throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/containerd")
        process.arguments = ["--config", dir.sub("config.toml")]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardOutput = FileHandle.nullDevice
        let logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.sub("log")))
        logHandle.seekToEndOfFile()
        process.standardError = logHandle
        try process.run()
        for _ in 0..<200 {
            if FileManager.default.fileExists(atPath: ttrpcSocket),
               try run("/usr/bin/ctr", ctr + ["version"]).status == 0 { return }
            usleep(50_000)
        }
        stop()
        throw NSError(domain: "TestContainerd", code: 1, userInfo: [NSLocalizedDescriptionKey: "containerd did not start: \(log.suffix(2000))"])
    }

    /// kill -9 and start again with the same config, root and state.
    public func crashAndRestart() throws {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try launch()
    }

    public var log: String { (try? String(contentsOfFile: dir.sub("log"), encoding: .utf8)) ?? "" }

    public func stop() {
        guard process.isRunning else { return }
        process.terminate()
        for _ in 0..<100 where process.isRunning { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
}

extension TestContainerd {
    /// What a node daemon of `node` is told: its sockets, state and data
    /// in `node` (a shim that starts the daemon passes these on).
    public static func nodeEnvironment(_ node: TempDir) -> [String: String] {
        let bin = (TestEnv.kangaroo as NSString).deletingLastPathComponent
        return [
            "PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"),
            "KANGAROO_BIN": TestEnv.kangaroo,
            "KANGAROO_SHIM_SOCKET": node.sub("shim.sock"),
            "KANGAROO_NODE_STATE": node.sub("state"),
            "KANGAROO_NODE_ROOT": node.sub("root"),
            "KANGAROO_SNAPSHOTTER_SOCKET": node.sub("snapshotter.sock"),
            // The lazy mounts' state and logs stay in the test's directory.
            "KANGAROO_RUN_DIR": node.sub("run"),
            // Prometheus metrics on a free loopback port (status names it).
            "KANGAROO_NODE_METRICS": "127.0.0.1:0",
        ]
    }

    /// A containerd whose shims find the node daemon at `node`'s socket and
    /// state: the test's own `kangaroo` and `containerd-shim-kangaroo-v2`
    /// first in its PATH. With `snapshotter`, the daemon is started first
    /// and containerd has it as the proxy snapshotter `kangaroo`; with
    /// `separateSnapshotter` too, the snapshotter is a daemon of its own
    /// (`startSnapshotterDaemon`) and the shim's daemon serves no snapshotter.
    /// `daemonEnvironment` adds to what the node daemon is told (its pools).
    public static func forKangaroo(node: TempDir, extraConfig: String = "", cri: Bool = false,
                                   snapshotter: Bool = false, separateSnapshotter: Bool = false,
                                   daemonEnvironment: [String: String] = [:]) throws -> TestContainerd {
        var config = extraConfig
        var environment = nodeEnvironment(node).merging(daemonEnvironment) { $1 }
        if separateSnapshotter {
            environment["KANGAROO_SNAPSHOTTER_SOCKET"] = "none"
            try startSnapshotterDaemon(node)
        }
        if snapshotter {
            if !separateSnapshotter { try startNodeDaemon(node, environment: daemonEnvironment) }
            config += """

            [proxy_plugins.kangaroo]
              type = "snapshot"
              address = "\(node.sub("snapshotter.sock"))"
            """
        }
        return try TestContainerd(extraConfig: config, cri: cri, environment: environment)
    }

    /// A snapshotter-only node daemon for `node` (its own state directory),
    /// detached; returns once its socket exists.
    public static func startSnapshotterDaemon(_ node: TempDir) throws {
        let log = node.sub("snapshotter.log")
        func readyLines() -> Int {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").components(separatedBy: "node daemon ready").count
        }
        let before = readyLines()
        try run("/bin/sh", ["-c", "setsid \(TestEnv.kangaroo) node --shim-socket none --snapshotter-socket '\(node.sub("snapshotter.sock"))' "
                + "--root '\(node.sub("root"))' --state '\(node.sub("snapshotter-state"))' --log-level debug </dev/null >>'\(log)' 2>&1 &"], check: true)
        for _ in 0..<200 {
            if readyLines() > before { return }  // logged once both sockets listen
            usleep(50_000)
        }
        throw NSError(domain: "TestContainerd", code: 3, userInfo: [NSLocalizedDescriptionKey:
            "the snapshotter daemon did not start: " + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").suffix(2000)])
    }

    /// Starts `kangaroo node` for `node` (detached, as the shim would) and
    /// waits until both its sockets accept connections.
    public static func startNodeDaemon(_ node: TempDir, environment: [String: String] = [:]) throws {
        let log = node.sub("node.log")
        let env = nodeEnvironment(node).merging(environment) { $1 }.map { "\($0.key)='\($0.value)'" }.joined(separator: " ")
        try run("/bin/sh", ["-c", "env \(env) setsid \(TestEnv.kangaroo) node --shim-socket '\(node.sub("shim.sock"))' --log-level debug </dev/null >>'\(log)' 2>&1 &"], check: true)
        for _ in 0..<200 {
            if FileManager.default.fileExists(atPath: node.sub("snapshotter.sock")),
               FileManager.default.fileExists(atPath: node.sub("shim.sock")) { return }
            usleep(50_000)
        }
        throw NSError(domain: "TestContainerd", code: 2, userInfo: [NSLocalizedDescriptionKey:
            "kangaroo node did not start: " + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").suffix(2000)])
    }

    /// `ctr events` running into a file until `stop()`: what containerd saw.
    public final class EventLog: @unchecked Sendable {
        let process = Process()
        public let path: String

        public init(_ containerd: TestContainerd) throws {
            path = containerd.dir.sub("events-\(UUID().uuidString.prefix(6)).out")
            FileManager.default.createFile(atPath: path, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/ctr")
            process.arguments = containerd.ctr + ["events"]
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            process.standardError = FileHandle.nullDevice
            try process.run()
            usleep(300_000)  // ctr subscribes
        }

        public var text: String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

        public func stop() {
            guard process.isRunning else { return }
            process.terminate()
            process.waitUntilExit()
        }

        deinit { stop() }
    }
}

/// `kangaroo node` processes serving the socket `socket`.
public func nodeDaemons(socket: String) -> [Int32] {
    let all = nodeProcesses(socket: socket)
    // Supervised: the daemon is the supervisor's worker.
    let workers = all.filter { $0.command.contains("--worker-fds") }
    return (workers.isEmpty ? all : workers).map(\.pid)
}

/// The supervisors of the node daemons serving `socket`.
public func nodeSupervisors(socket: String) -> [Int32] {
    nodeProcesses(socket: socket).filter { !$0.command.contains("--worker-fds") && $0.command.contains("--shim-socket") }.map(\.pid)
}

func nodeProcesses(socket: String) -> [(pid: Int32, command: String)] {
    let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
    return pids.compactMap { pid in
        guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let cmd = String(decoding: d, as: UTF8.self)
        return cmd.contains("node\u{0}") && cmd.contains(socket) ? (pid, cmd) : nil
    }
}

/// containerd's CRI plugin section for the tests: the `pause` test image as
/// sandbox image, handlers `runc` and `kangaroo`, `snapshotter` for every
/// pod (with the annotations a remote snapshotter needs), CNI config in `node`.
public func criConfig(node: TempDir, snapshotter: String, cniBin: String = "/usr/lib/cni") -> String {
    """
    [plugins."io.containerd.grpc.v1.cri"]
      sandbox_image = "kangaroo.test/pause:pause"
      restrict_oom_score_adj = true
      [plugins."io.containerd.grpc.v1.cri".containerd]
        snapshotter = "\(snapshotter)"
        disable_snapshot_annotations = false
        default_runtime_name = "runc"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kangaroo]
          runtime_type = "io.containerd.kangaroo.v2"
      [plugins."io.containerd.grpc.v1.cri".cni]
        bin_dir = "\(cniBin)"
        conf_dir = "\(node.sub("cni"))"
    """
}

/// A test's teardown: SIGTERM to the node daemons serving `sockets` (the
/// shim socket of `node` by default), containerd stopped, SIGKILL to the
/// daemons still there after 5 s, every mount below `node` detached.
public func tearDownNode(_ node: TempDir, containerd: TestContainerd, sockets: [String]? = nil) {
    let paths = sockets ?? [node.sub("shim.sock")]
    func daemons() -> [Int32] { paths.flatMap { nodeDaemons(socket: $0) + nodeSupervisors(socket: $0) } }
    // Supervisors first: a daemon whose supervisor still runs is restarted.
    for pid in paths.flatMap({ nodeSupervisors(socket: $0) }) { kill(pid, SIGTERM) }
    for pid in daemons() { kill(pid, SIGTERM) }
    containerd.stop()
    for _ in 0..<50 where !daemons().isEmpty { usleep(100_000) }
    for pid in daemons() { kill(pid, SIGKILL) }
    unmountAll(below: node.path)
    // Lazy mount servers of the node's images (their own sessions): a
    // mount containerd had not yet removed when it stopped.
    let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
    for pid in pids {
        guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { continue }
        let cmd = String(decoding: d, as: UTF8.self)
        if cmd.contains("image\u{0}mount\u{0}"), cmd.contains(node.path + "/") { kill(pid, SIGKILL) }
    }
}

/// containerd's CRI runtime handler `kangaroo-userns` (to append to
/// `criConfig`): the node daemon, with the pod annotations passed on and the
/// Kangaroo handler file `configPath` (runtimeoptions' ConfigPath).
public func criUserNamespaceHandler(configPath: String) -> String {
    """

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kangaroo-userns]
          runtime_type = "io.containerd.kangaroo.v2"
          pod_annotations = ["io.kangaroo.*"]
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kangaroo-userns.options]
            ConfigPath = "\(configPath)"
    """
}

/// Processes running under a node's id ranges (host uids from 2^30 up,
/// `IDRangePool`; nothing else on a test machine uses them).
/// The node daemons and supervisors serving `node`'s shim socket.
public func nodeProcessTree(_ node: TempDir) -> [Int32] {
    nodeDaemons(socket: node.sub("shim.sock")) + nodeSupervisors(socket: node.sub("shim.sock"))
}

public func processesUnderIDRanges(descendingFrom ancestors: [Int32]? = nil) -> [Int32] {
    var parent: [Int32: Int32] = [:], ranged: [Int32] = []
    for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap({ Int32($0) }) ?? [] {
        let lines = (procText("/proc/\(pid)/status") ?? "").split(separator: "\n")
        func field(_ name: String) -> Int? { lines.first { $0.hasPrefix(name) }?.split(separator: "\t").dropFirst().first.flatMap { Int($0) } }
        if let ppid = field("PPid:") { parent[pid] = Int32(ppid) }
        if let uid = field("Uid:"), uid >= 1 << 30 { ranged.append(pid) }
    }
    guard let ancestors else { return ranged }
    // Other suites' nodes hand out the same ranges: only this node's
    // daemon's (or supervisor's) descendants count.
    return ranged.filter { pid in
        var p = parent[pid]
        for _ in 0..<64 {
            guard let q = p, q > 1 else { return false }
            if ancestors.contains(q) { return true }
            p = parent[q]
        }
        return false
    }
}
