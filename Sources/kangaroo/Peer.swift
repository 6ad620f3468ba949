import ArgumentParser
import Foundation
import KangarooChunks
import KangarooP2P
import Logging
import ServiceLifecycle
import Synchronization

struct PeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract: "Serve this node's verified chunk cache to other nodes.",
        discussion: """
        Answers GET /v2/<name>/blobs/<digest> with a Range header, in the OCI blob URL form, with the bytes the \
        registry would give, for ranges of whole chunks this node holds (404 otherwise). Other nodes list it \
        as a mirror in their hosts.toml with the header Authorization = "Bearer <token>"; they verify every \
        chunk against its digest, so a peer is never trusted with content. Mounts keep what a peer serves of \
        compressed chunks with --keep-compressed. Whole blobs of --store (bootstraps) are served too. \
        POST /v1/preheat runs `kangaroo image preheat` on this cache and store (through --trackers if \
        given); GET /v1/stats counts what was served. docs/P2P.md.
        """)

    @OptionGroup var options: GlobalOptions
    @Option(help: "The chunk cache directory to serve.") var cache: String = "/var/lib/kangaroo/cache"
    @Option(help: "HOST:PORT to listen on (IPv4; port 0 picks one).") var listen: String = "0.0.0.0:5050"
    @Option(help: "File holding the cluster token that requests must present (Authorization: Bearer <token>).")
    var tokenFile: String?
    @Flag(help: "Serve anyone, without a token (a network of trusted hosts only).") var noAuth = false
    @Option(help: "Uploads served at once; more get 503 and go elsewhere.") var maxUploads: Int = 16
    @Option(help: "Cap the upload bandwidth, bytes per second (K/M/G allowed; 0: no cap).") var maxUploadRate: String = "0"
    @Option(help: "Trackers for the preheats this peer runs (POST /v1/preheat; HOST:PORT,...): they then take chunks from other nodes.")
    var trackers: String?
    @Option(help: "Where other nodes reach this peer (HOST:PORT; default: the --listen address with the bound port).")
    var advertise: String?

    func run() async throws {
        let logger = options.makeLogger("kangaroo.peer")
        do {
            let address = try parseHostPort(listen, option: "--listen")
            guard (tokenFile != nil) != noAuth else {
                throw CLIError("give either --token-file (the cluster token) or --no-auth")
            }
            let token = try tokenFile.map(readClusterToken)
            guard maxUploads >= 1 else { throw CLIError("--max-uploads \(maxUploads) must be at least 1") }
            guard let rate = parseSize(maxUploadRate), rate >= 0 else {
                throw CLIError("--max-upload-rate '\(maxUploadRate)' is not a size (bytes per second, K/M/G allowed)")
            }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: cache, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw CLIError("--cache \(cache) is not a directory")
            }
            var configuration = PeerServer.Configuration(host: address.host, port: Int(address.port), token: token)
            configuration.maxUploads = maxUploads
            configuration.maxUploadBytesPerSecond = UInt64(rate)
            // Preheats run this executable on the same cache, store and registry hosts.
            let serving = Mutex<PeerServer?>(nil)
            let listenHost = address.host, advertise = self.advertise, trackers = self.trackers, options = self.options
            let cache = self.cache, tokenFile = self.tokenFile
            if trackers != nil, tokenFile == nil { throw CLIError("--trackers needs --token-file (trackers and peers check the cluster token)") }
            if let advertise { _ = try parseHostPort(advertise, option: "--advertise") }
            if trackers != nil, advertise == nil, listenHost == "0.0.0.0" {
                throw CLIError("--trackers with --listen on 0.0.0.0 needs --advertise (the address other nodes reach)")
            }
            configuration.preheat = { request in
                var args = ["--store", options.store, "--hosts-dir", options.hostsDir, "--log-level", options.logLevel, "--keep-compressed"]
                if options.plainHTTP { args.append("--plain-http") }
                if let trackers, let tokenFile {
                    args += ["--trackers", trackers, "--peer-address", advertise ?? "\(listenHost):\(serving.withLock { $0 }?.boundPort ?? 0)", "--peer-token-file", tokenFile]
                }
                return try await preheatProcess(request, cache: cache, args: args, reaper: nil, logger: logger)
            }
            let server = PeerServer(reader: CacheReader(directory: cache, store: options.store), configuration: configuration, logger: logger)
            serving.withLock { $0 = server }
            let group = ServiceGroup(configuration: .init(services: [.init(service: PeerService(server: server))],
                                                          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        } catch {
            fail(error)
        }
    }
}

struct TrackerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tracker",
        abstract: "Tell nodes which other nodes hold the chunks they need, and which node fetches a chunk first.",
        discussion: """
        Nodes (mounts with --trackers) announce the chunks they hold and ask where to get the ones they miss: \
        a parent that holds them, or the seed role (fetch from the registry; the others wait for it). Run two \
        or more; blobs map to trackers by consistent hashing with a replica. State is in memory. docs/P2P.md.
        """)

    @OptionGroup var options: GlobalOptions
    @Option(help: "HOST:PORT to listen on (IPv4; port 0 picks one).") var listen: String = "0.0.0.0:5051"
    @Option(help: "File holding the cluster token that requests must present.") var tokenFile: String?
    @Flag(help: "Serve anyone, without a token (a network of trusted hosts only).") var noAuth = false
    @Option(help: "Seconds a seed may take to announce a chunk before another node is made its seed.") var seedTimeout: Double = 5

    func run() async throws {
        let logger = options.makeLogger("kangaroo.tracker")
        do {
            let address = try parseHostPort(listen, option: "--listen")
            guard (tokenFile != nil) != noAuth else { throw CLIError("give either --token-file (the cluster token) or --no-auth") }
            guard seedTimeout > 0, seedTimeout <= 600 else { throw CLIError("--seed-timeout \(seedTimeout) is not between 0 and 600 seconds") }
            let tracker = Tracker(host: address.host, port: Int(address.port), token: try tokenFile.map(readClusterToken),
                                  seedTimeout: seedTimeout, logger: logger)
            let group = ServiceGroup(configuration: .init(services: [.init(service: TrackerService(tracker: tracker, host: address.host))],
                                                          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        } catch {
            fail(error)
        }
    }
}

struct TrackerService: Service {
    let tracker: Tracker
    let host: String

    func run() async throws {
        let port = try await tracker.start()
        FileHandle.standardOutput.write(Data("tracker listening on \(host):\(port)\n".utf8))
        try? await gracefulShutdown()
        await tracker.stop()
    }
}

/// The cluster token in `path`: one line of at least 16 characters.
func readClusterToken(_ path: String) throws -> String {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw CLIError("cannot read the cluster token file \(path)")
    }
    let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
    guard token.count >= 16, !token.contains(where: { $0.isWhitespace }) else {
        throw CLIError("the cluster token in \(path) must be one word of at least 16 characters")
    }
    return token
}

/// The peer's HTTP server as a service: on graceful shutdown it closes its listener.
struct PeerService: Service {
    let server: PeerServer

    func run() async throws {
        let port = try await server.start()
        FileHandle.standardOutput.write(Data("peer listening on \(server.configuration.host):\(port)\n".utf8))
        try? await gracefulShutdown()
        await server.stop()
    }
}
