import ArgumentParser
import Foundation
import KangarooChunks
import KangarooImage
import KangarooLazyFS
import KangarooOCI
import KangarooP2P
import Logging

/// Where a lazy image's chunks come from and where they are kept: the
/// options `image mount` and `image preheat` share.
struct ChunkSourceOptions: ParsableArguments {
    @Option(help: "Chunk cache directory.") var cache: String = "/var/lib/kangaroo/cache"
    @Option(help: "Seconds a read may wait for its chunks before it fails with EIO.") var deadline: Double = 30
    @Option(help: "Retries of a failed range request (within the deadline).") var retries: Int = 3
    @Option(help: "Seconds a mirror (--hosts-dir) may take to answer a range request before the next host is tried (a hosts.toml timeout overrides it).")
    var mirrorTimeout: Double = 5
    @Option(help: "Trackers to find chunks on other nodes with (HOST:PORT,...; needs --peer-address and --peer-token-file, implies --keep-compressed).")
    var trackers: String?
    @Option(help: "Where other nodes reach this node's peer (kangaroo peer on the same --cache), HOST:PORT.")
    var peerAddress: String?
    @Option(help: "The cluster token file (peers and trackers).") var peerTokenFile: String?
    @Option(help: "Seconds a read waits for a seed or parent before it goes to the registry.") var peerWait: Double = 2

    func validate() throws {
        guard deadline > 0, deadline <= 3600 else { throw CLIError("--deadline \(deadline) is not between 0 and 3600 seconds") }
        guard retries >= 0 else { throw CLIError("--retries \(retries) must not be negative") }
        guard mirrorTimeout > 0, mirrorTimeout <= 3600 else { throw CLIError("--mirror-timeout \(mirrorTimeout) is not between 0 and 3600 seconds") }
    }

    /// Deadline, retries and, with trackers, compressed chunks kept for the peer.
    var fetchConfiguration: FetchConfiguration {
        var fetch = FetchConfiguration()
        fetch.deadline = .milliseconds(Int64(deadline * 1000))
        fetch.retries = retries
        fetch.keepCompressed = trackers != nil
        return fetch
    }

    /// The image, where its chunks come from, and what closes that source.
    func resolve(_ reference: String, options: GlobalOptions, logger: Logger) async throws -> (KangarooImage, any ChunkSource, (@Sendable () async -> Void)?) {
        switch try ImageLocation.parse(reference) {
        case .registry(let ref):
            let store = try options.openStore()
            let peers = try peerSource(logger: logger)
            do {
                let descriptor = try await options.withPullHosts(ref, logger: logger) { client in
                    try await pullBootstrap(ref, client: client, into: store, peers: peers, logger: logger)
                }
                let image = try KangarooImage.load(from: store, descriptor: descriptor)
                // Chunks by blob digest from the registry's mirrors, then the registry.
                let creds = try options.credentials().map { RegistryClient.Credentials(username: $0.username, password: $0.password) }
                let blobs = try MirroredBlobSource.registry(
                    try options.registryHosts(for: ref, logger: logger), repository: ref.repository, credentials: creds,
                    timeout: .milliseconds(Int64(deadline * 1000)), mirrorTimeout: .milliseconds(Int64(mirrorTimeout * 1000)),
                    retries: options.registryRetries, peers: peers.map { ("trackers \($0.ring.trackers.joined(separator: ","))", $0) },
                    logger: logger)
                return (image, BlobChunkSource(blobs, image: image), {
                    await blobs.shutdown()
                    await peers?.shutdown()
                })
            } catch {
                // Its HTTP client must be shut down before it goes (a trap otherwise).
                await peers?.shutdown()
                throw error
            }
        case .store(let name):
            let store = try options.openStore()
            let image = try KangarooImage.load(from: store, tag: storeTag(name))
            return (image, LayoutChunkSource(layout: store, image: image), nil)
        case .ociLayout(let path, let tag):
            let layout = try OCILayout(at: path, create: false)
            let image = try KangarooImage.load(from: layout, tag: tag)
            return (image, LayoutChunkSource(layout: layout, image: image), nil)
        }
    }

    /// The P2P source of --trackers, if given.
    func peerSource(logger: Logger) throws -> PeerBlobSource? {
        guard let trackers else {
            guard peerAddress == nil, peerTokenFile == nil else { throw CLIError("--peer-address and --peer-token-file go with --trackers") }
            return nil
        }
        let list = trackers.split(separator: ",").map(String.init)
        for t in list { _ = try parseHostPort(t, option: "--trackers") }
        guard !list.isEmpty else { throw CLIError("--trackers '\(trackers)' names no HOST:PORT") }
        guard let peerAddress, let peerTokenFile else { throw CLIError("--trackers needs --peer-address (where this node's peer listens) and --peer-token-file") }
        let address = try parseHostPort(peerAddress, option: "--peer-address")
        guard address.host != "0.0.0.0", address.port != 0 else {
            throw CLIError("--peer-address \(peerAddress) must be an address and port other nodes can reach")
        }
        guard peerWait > 0, peerWait <= 60 else { throw CLIError("--peer-wait \(peerWait) is not between 0 and 60 seconds") }
        var configuration = PeerBlobSource.Configuration(trackers: list, selfAddress: peerAddress, token: try readClusterToken(peerTokenFile),
                                                         cacheDirectory: MountControl.normalize(cache))
        configuration.wait = .milliseconds(Int64(peerWait * 1000))
        return PeerBlobSource(configuration, logger: logger)
    }
}
