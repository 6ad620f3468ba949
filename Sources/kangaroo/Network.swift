import ArgumentParser
import Foundation
import KangarooNetwork
import KangarooNode
import KangarooSystem
import Logging
import ServiceLifecycle

/// A pod network's figures, as `node status`, `network status` and the
/// metrics endpoint show them.
struct NetworkStatus: Codable, Sendable {
    struct Pod: Codable, Sendable {
        var containerID: String
        var ifname: String
        var netns: String
        var address: String
        var hostInterface: String
        var ports: [String]
        /// Whether the pod's network came from the pool, and its ADD's time.
        var fromPool: Bool
        var setupMs: Double?
    }

    var name: String
    var bridge: String
    var subnet: String
    var poolSize: Int
    var free: Int
    var capacity: Int
    var pods: [Pod]

    init(_ config: NetworkConfig) throws(NetworkError) {
        let network = try PodNetwork(config: config)
        let s = try network.status()
        name = config.name
        bridge = config.bridge
        subnet = config.subnet.description
        poolSize = config.poolSize
        free = s.free
        capacity = s.capacity
        pods = s.attached.map {
            Pod(containerID: $0.containerID, ifname: $0.ifname, netns: $0.netns, address: $0.address.description,
                hostInterface: $0.hostInterface, ports: $0.ports.map { "\($0.hostPort):\($0.containerPort)/\($0.proto)" },
                fromPool: $0.fromPool, setupMs: $0.setupMicros.map { Double($0) / 1000 })
        }
    }

    var summary: String {
        "\(name): bridge \(bridge), subnet \(subnet), pool \(free) free of \(poolSize), \(pods.count) pods attached, \(capacity - free - pods.count) addresses unused"
    }

    var lines: [String] {
        [summary] + pods.map { p in
            "  \(p.containerID.prefix(12))  \(p.address)  \(p.ifname) in \(p.netns)  host \(p.hostInterface)" + (p.ports.isEmpty ? "" : "  ports \(p.ports.joined(separator: ","))")
                + "  " + (p.fromPool ? "pool" : "on the spot") + (p.setupMs.map { String(format: " %.2f ms", $0) } ?? "")
        }
    }
}

/// Keeps the pools of the node's pod networks full: the node set up (bridge,
/// address, nftables table), what a killed plugin or daemon left reconciled
/// at start and every half minute, free pairs topped up within a quarter of
/// a second of an ADD taking one.
struct NetworkPoolService: Service {
    let configs: [NetworkConfig]
    let logger: Logger

    func run() async throws {
        var networks: [PodNetwork] = []
        for config in configs {
            do {
                let network = try PodNetwork(config: config)
                try network.ensureNode(force: true)
                let repair = try network.reconcile()
                if repair != PodNetwork.Repair() {
                    logger.notice("network: reconciled what a killed process left", metadata: [
                        "network": "\(config.name)", "dropped-slots": "\(repair.droppedSlots)",
                        "released": "\(repair.releasedAttachments)", "deleted-links": "\(repair.deletedLinks)"])
                }
                let made = try network.fill()
                logger.info("network: pool ready", metadata: ["network": "\(config.name)", "bridge": "\(config.bridge)",
                                                             "subnet": "\(config.subnet)", "made": "\(made)"])
                networks.append(network)
            } catch {
                throw CLIError("node: network \(config.name): \(error)")
            }
        }
        // Refills wait for the quiet after a burst (an ADD builds on the
        // spot once the pool is out) and run on a thread of their own at a
        // lower priority.
        let activity = NodeActivity.shared
        var rounds = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            rounds += 1
            guard activity.isQuiet() else { continue }
            for network in networks {
                do {
                    let repair = rounds % 120 == 0
                    try await OwnThread.run(nice: 10) { () throws(NetworkError) in
                        if repair {
                            try network.ensureNode(force: true)
                            try network.reconcile()
                        }
                        try network.fill(stop: { !activity.isQuiet() })
                    }
                } catch {
                    logger.warning("network: cannot fill the pool", metadata: ["network": "\(network.config.name)", "error": "\(error)"])
                }
            }
        }
    }
}

struct NetworkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "The node's pod networks (kangaroo-cni): status, filling the pool, removal.",
        subcommands: [NetworkStatusCommand.self, NetworkFill.self, NetworkRemove.self])
}

struct NetworkConfigOption: ParsableArguments {
    @Argument(help: ArgumentHelp("The network's CNI configuration (.conf or .conflist with a kangaroo-cni plugin).", valueName: "config"))
    var config: String

    func load() throws -> NetworkConfig {
        do { return try NetworkConfig.load(config) } catch { throw CLIError("network: \(error)") }
    }
}

struct NetworkStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the pool and the pods of a network.")
    @OptionGroup var options: NetworkConfigOption
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let status: NetworkStatus
        do { status = try NetworkStatus(try options.load()) } catch let e as NetworkError { throw CLIError("network status: \(e)") }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(status), as: UTF8.self))
        } else {
            status.lines.forEach { print($0) }
        }
    }
}

struct NetworkFill: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fill", abstract: "Set the node up for a network and fill its pool once (the node daemon does it continuously).")
    @OptionGroup var options: NetworkConfigOption

    func run() throws {
        let config = try options.load()
        do {
            let network = try PodNetwork(config: config)
            try network.ensureNode(force: true)
            let repair = try network.reconcile()
            let made = try network.fill()
            print("\(config.name): \(made) interfaces made; reconciled \(repair.droppedSlots) slots, \(repair.releasedAttachments) attachments, \(repair.deletedLinks) stray interfaces")
        } catch { throw CLIError("network fill: \(error)") }
    }
}

struct NetworkRemove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Remove a network from the node: its interfaces, bridge, nftables table and state (pods lose their network).")
    @OptionGroup var options: NetworkConfigOption

    func run() throws {
        let config = try options.load()
        do { try PodNetwork(config: config).remove() } catch { throw CLIError("network remove: \(error)") }
    }
}
