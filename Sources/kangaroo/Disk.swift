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
        // Refills wait for the quiet after a burst (a start finds a disk
        // made on the spot once the pool is out) and run on a thread of
        // their own at a lower priority.
        let activity = NodeActivity.shared
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            guard activity.isQuiet() else { continue }
            do { try await OwnThread.run(nice: 10) { () throws(DiskError) in try pool.fill(stop: { !activity.isQuiet() }) } } catch {
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
        do { return try DiskPool(config: try config()) } catch { throw CLIError("disk: \(error)") }
    }
}

struct DiskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "The node's sandbox disks (loop devices over one node file): status, filling the pool, removal.",
        subcommands: [DiskStatusCommand.self, DiskFill.self, DiskAcquire.self, DiskRelease.self, DiskRemove.self])
}

struct DiskStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the disks and the node file's use.")
    @OptionGroup var options: DiskOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let s: DiskPool.Status
        do { s = try options.pool().status() } catch { throw CLIError("disk status: \(error)") }
        if json {
            let disks = s.disks.map { d -> [String: Any] in
                var o: [String: Any] = ["offset": d.offset, "size": d.size, "state": d.state.rawValue]
                if let dev = d.device { o["device"] = dev }
                if let owner = d.owner { o["owner"] = owner }
                if let pooled = d.pooled { o["fromPool"] = pooled }
                if let us = d.setupMicros { o["setupMs"] = Double(us) / 1000 }
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
            print("  \(d.device ?? "-")  \(d.size >> 20) MiB at \(d.offset >> 20) MiB  \(d.state.rawValue)" + (d.owner.map { "  \($0.prefix(12))" } ?? "")
                  + (d.setupMicros.map { String(format: "  set up in %.2f ms", Double($0) / 1000) + (d.pooled == true ? " (pool)" : " (on the spot)") } ?? ""))
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
        } catch { throw CLIError("disk fill: \(error)") }
    }
}

struct DiskRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Detach every disk and remove the node file and the pool's state.")
    @OptionGroup var options: DiskOptions

    func run() throws {
        do { try options.pool().remove() } catch { throw CLIError("disk remove: \(error)") }
    }
}

struct DiskAcquire: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "acquire", abstract: "Take a disk for OWNER (from the pool, or made on the spot) and print its device; optionally mount it.")
    @OptionGroup var options: DiskOptions
    @Argument(help: "Who holds the disk (a sandbox id).") var owner: String
    @Option(help: ArgumentHelp("The disk's size (default: the pool's).", valueName: "size")) var size: String?
    @Option(help: ArgumentHelp("Mount it (ext4) here.", valueName: "dir")) var mount: String?
    @Flag(help: "Print to stderr how long it took (in this process: acquire and mount).") var time = false

    func run() throws {
        let bytes: UInt64? = try size.map {
            guard let n = parseSize($0) else { throw CLIError("--size '\($0)' is not a size") }
            return UInt64(n)
        }
        let pool = try options.pool()
        let started = ContinuousClock.now
        let disk: Disk
        do { disk = try pool.acquire(owner: owner, size: bytes) } catch { throw CLIError("disk acquire: \(error)") }
        if let mount {
            guard Glibc.mount(disk.device!, mount, "ext4", 0, "") == 0 else {
                throw CLIError("disk acquire: mount \(disk.device!) at \(mount): \(String(cString: strerror(errno)))")
            }
        }
        let took = ContinuousClock.now - started
        print(disk.device ?? "")
        if time { FileHandle.standardError.write(Data("took \(Double(took.components.attoseconds) / 1e15 + Double(took.components.seconds) * 1000) ms\n".utf8)) }
    }
}

struct DiskRelease: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "release", abstract: "Give OWNER's disk back (scrubbed); unmount it first if asked.")
    @OptionGroup var options: DiskOptions
    @Argument(help: "Who holds the disk.") var owner: String
    @Option(help: ArgumentHelp("Unmount this first.", valueName: "dir")) var unmount: String?

    func run() throws {
        if let unmount, umount2(unmount, 0) != 0 { throw CLIError("disk release: unmount \(unmount): \(String(cString: strerror(errno)))") }
        let released: Bool
        do { released = try options.pool().release(owner: owner) } catch { throw CLIError("disk release: \(error)") }
        guard released else { throw CLIError("disk release: \(owner) holds no disk") }
    }
}
