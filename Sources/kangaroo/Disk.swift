import ArgumentParser
import Foundation
import KangarooNode
import KangarooSystem
import Logging
import ServiceLifecycle

/// Keeps the sandbox disk pool full: reconciled at start (what a killed
/// daemon left), topped up every second.
struct DiskPoolService: Service {
    let config: DiskConfig
    let logger: Logger

    func run() async throws {
        let pool: DiskPool
        do {
            pool = try DiskPool(config: config)
            let fixed = try pool.reconcile()
            let made = try pool.fill()
            logger.info("disks: pool ready", metadata: ["file": "\(config.nodeFile)", "reconciled": "\(fixed)", "made": "\(made)"])
        } catch {
            throw CLIError("node: disks: \(error)")
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            do { try pool.fill() } catch {
                logger.warning("disks: cannot fill the pool", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// Where the node's sandbox disks are: flags, with the environment's
/// KANGAROO_DISK_* as defaults.
struct DiskOptions: ParsableArguments {
    static let env = ProcessInfo.processInfo.environment

    @Option(help: ArgumentHelp("The node disk file the sandbox disks are carved from.", valueName: "path"))
    var diskFile: String = env["KANGAROO_DISK_FILE"] ?? DiskConfig().nodeFile
    @Option(help: ArgumentHelp("The node disk's size (K, M, G, T suffixes); the file is sparse and never grows past it.", valueName: "size"))
    var diskNodeSize: String = env["KANGAROO_DISK_NODE_SIZE"] ?? "64G"
    @Option(help: ArgumentHelp("The pool's disk size (K, M, G suffixes).", valueName: "size"))
    var diskDefaultSize: String = env["KANGAROO_DISK_SIZE"] ?? "1G"
    @Option(help: ArgumentHelp("Formatted disks kept ready.", valueName: "n"))
    var diskPool: Int = Int(env["KANGAROO_DISK_POOL"] ?? "") ?? 4
    @Option(help: ArgumentHelp("The disk pool's state directory.", valueName: "dir"))
    var diskState: String = env["KANGAROO_DISK_STATE"] ?? DiskConfig().stateDir

    func config() throws -> DiskConfig {
        guard let node = parseSize(diskNodeSize), node > 0 else { throw CLIError("--disk-node-size '\(diskNodeSize)' is not a size (e.g. 64G)") }
        guard let size = parseSize(diskDefaultSize), size > 0 else { throw CLIError("--disk-default-size '\(diskDefaultSize)' is not a size (e.g. 1G)") }
        return DiskConfig(nodeFile: diskFile, nodeSize: UInt64(node), defaultSize: UInt64(size), poolSize: diskPool, stateDir: diskState)
    }

    func pool() throws -> DiskPool {
        do { return try DiskPool(config: try config()) } catch let e as DiskError { throw CLIError("disk: \(e)") }
    }
}

struct DiskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "The node's sandbox disks (loop devices over one node file): status, filling the pool, removal.",
        subcommands: [DiskStatusCommand.self, DiskFill.self, DiskRemove.self])
}

struct DiskStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the disks and the node file's use.")
    @OptionGroup var options: DiskOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let s: DiskPool.Status
        do { s = try options.pool().status() } catch let e as DiskError { throw CLIError("disk status: \(e)") }
        if json {
            let disks = s.disks.map { d -> [String: Any] in
                var o: [String: Any] = ["offset": d.offset, "size": d.size, "state": d.state.rawValue]
                if let dev = d.device { o["device"] = dev }
                if let owner = d.owner { o["owner"] = owner }
                return o
            }
            let o: [String: Any] = ["disks": disks, "allocatedBytes": s.allocatedBytes, "nodeSize": s.nodeSize,
                                    "free": s.disks.filter { $0.state == .free }.count,
                                    "attached": s.disks.filter { $0.state == .attached }.count]
            print(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        print("\(options.diskFile): \(s.nodeSize >> 20) MiB, \(s.allocatedBytes >> 20) MiB allocated; \(s.disks.filter { $0.state == .free }.count) free, \(s.disks.filter { $0.state == .attached }.count) attached")
        for d in s.disks {
            print("  \(d.device ?? "-")  \(d.size >> 20) MiB at \(d.offset >> 20) MiB  \(d.state.rawValue)" + (d.owner.map { "  \($0.prefix(12))" } ?? ""))
        }
    }
}

struct DiskFill: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fill", abstract: "Reconcile, then format disks until the pool is full (the node daemon does it continuously).")
    @OptionGroup var options: DiskOptions

    func run() throws {
        do {
            let pool = try options.pool()
            let fixed = try pool.reconcile()
            let made = try pool.fill()
            print("\(made) disks made; reconciled \(fixed)")
        } catch let e as DiskError { throw CLIError("disk fill: \(e)") }
    }
}

struct DiskRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Detach every disk and remove the node file and the pool's state.")
    @OptionGroup var options: DiskOptions

    func run() throws {
        do { try options.pool().remove() } catch let e as DiskError { throw CLIError("disk remove: \(e)") }
    }
}
