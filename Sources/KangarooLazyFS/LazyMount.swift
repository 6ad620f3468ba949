import Foundation
import KangarooFUSE
import KangarooImage
import Logging
import Synchronization
import SystemPackage

/// A lazy mount of one image: the bootstrap in memory, the FUSE server, the
/// chunk fetcher over a `ChunkSource`, background prefetch, a periodically
/// written stats file and an optional access trace.
public final class LazyMount: Sendable {
    /// A connection a dead server left, for a new one to serve.
    public typealias Takeover = FUSEServer.Takeover
    public struct Options: Sendable {
        public var mountPoint: String
        public var cacheDirectory: String
        public var prefetch: PrefetchMode = .list
        public var prefetchConcurrency = 2
        public var fetch = FetchConfiguration()
        /// FUSE worker threads (requests served at once).
        public var threads = 16
        /// FUSE over io_uring when the kernel offers it.
        public var ioUring = true
        /// Page-cache prefill of small files after a directory listing.
        public var prefill = LazyFileSystem.Prefill()
        /// Write the files opened, in first-access order, here (a prefetch list).
        public var tracePath: String?
        /// Write `LazyStats` JSON here every `statsInterval`.
        public var statsPath: String?
        public var statsInterval: Duration = .seconds(1)
        /// Serve Prometheus metrics on this IPv4 address and port (GET /metrics).
        public var metricsAddress: (host: String, port: UInt16)?
        /// Let a keeper hold the FUSE connection across this server's death
        /// (`FUSEServer.Configuration.failover`).
        public var failover = false
        /// Serve the connection a dead server left instead of mounting.
        public var takeover: FUSEServer.Takeover?

        public init(mountPoint: String, cacheDirectory: String) {
            self.mountPoint = mountPoint
            self.cacheDirectory = cacheDirectory
        }
    }

    public let options: Options
    public let fetcher: ChunkFetcher
    public let fileSystem: LazyFileSystem
    public let trace: AccessTrace?
    let server: FUSEServer
    let logger: Logger
    private let running = Atomic<Bool>(false)
    private let prefetchDone = Atomic<Bool>(false)
    private let metrics = Mutex<MetricsEndpoint?>(nil)

    public init(image: KangarooImage, source: any ChunkSource, options: Options, logger: Logger) throws(LazyFSError) {
        self.options = options
        self.logger = logger
        let cache = try ChunkCache(directory: options.cacheDirectory, bootstrap: image.bootstrap)
        let fetcher = ChunkFetcher(bootstrap: image.bootstrap, source: source, cache: cache, configuration: options.fetch, logger: logger)
        let trace = options.tracePath.map { AccessTrace(outputPath: $0, rootNid: image.bootstrap.rootNid) }
        let fileSystem = LazyFileSystem(fetcher: fetcher, trace: trace, prefill: options.prefill, logger: logger)
        var configuration = FUSEServer.Configuration(mountPoint: FilePath(options.mountPoint))
        configuration.threads = options.threads
        configuration.ioUring = options.ioUring
        configuration.failover = options.failover || options.takeover != nil
        configuration.takeover = options.takeover
        server = FUSEServer(fileSystem: fileSystem, configuration: configuration, logger: logger)
        self.fetcher = fetcher
        self.trace = trace
        self.fileSystem = fileSystem
    }

    /// Mounts; on return the mount serves requests. Prefetch and the stats
    /// writer run in the background.
    public func start() throws(LazyFSError) {
        do { try server.start() } catch {
            throw LazyFSError(.mount, "mounting the image at \(options.mountPoint) with FUSE failed", underlying: error)
        }
        running.store(true, ordering: .sequentiallyConsistent)
        if let address = options.metricsAddress {
            do {
                let endpoint = try MetricsEndpoint(host: address.host, port: address.port, logger: logger) { [self] in stats() }
                metrics.withLock { $0 = endpoint }
            } catch {
                try? server.stop()
                running.store(false, ordering: .sequentiallyConsistent)
                throw error
            }
        }
        writeStats()
        Prefetcher.run(fetcher, mode: options.prefetch, concurrency: options.prefetchConcurrency, logger: logger) { [self] _ in
            prefetchDone.store(true, ordering: .sequentiallyConsistent)
            writeStats()
        }
        if options.statsPath != nil || options.tracePath != nil {
            let interval = ChunkFetcher.seconds(options.statsInterval)
            Thread.detachNewThread { [self] in
                while running.load(ordering: .sequentiallyConsistent) {
                    Thread.sleep(forTimeInterval: interval)
                    writeStats()
                }
            }
        }
    }

    /// Blocks until the mount goes away (unmounted by anyone).
    public func wait() {
        server.wait()
        fileSystem.stopPrefill()
        running.store(false, ordering: .sequentiallyConsistent)
        metrics.withLock { $0?.close() }
        writeStats()
    }

    /// Unmounts (lazily if busy) and waits for the workers.
    public func stop() throws(LazyFSError) {
        do { try server.stop() } catch {
            throw LazyFSError(.mount, "unmounting \(options.mountPoint) failed", underlying: error)
        }
        fileSystem.stopPrefill()
        running.store(false, ordering: .sequentiallyConsistent)
        metrics.withLock { $0?.close() }
        writeStats()
    }

    /// What a keeper needs to hand this mount's connection to a new server
    /// (nil unless serving with failover).
    public var failoverState: (descriptor: Int32, minor: UInt32, flags: UInt64)? {
        guard let fd = server.sessionDescriptor, let minor = server.negotiatedMinor else { return nil }
        return (fd, minor, server.negotiatedFlags.rawValue)
    }

    /// The port of the metrics endpoint (nil without one).
    public var metricsPort: UInt16? { metrics.withLock { $0?.port } }

    public func stats() -> LazyStats {
        var s = fetcher.stats()
        s.mountPoint = options.mountPoint
        s.mode = "fuse"
        s.pid = getpid()
        s.prefetchDone = prefetchDone.load(ordering: .sequentiallyConsistent)
        s.updatedAt = Date().timeIntervalSince1970
        return s
    }

    /// Writes the stats file and the trace (when configured).
    public func writeStats() {
        if let path = options.statsPath {
            do {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                try encoder.encode(stats()).write(to: URL(fileURLWithPath: path), options: .atomic)
            } catch {
                logger.warning("lazyfs: writing stats to \(path) failed: \(error)")
            }
        }
        if let trace {
            do { try trace.write() } catch { logger.warning("lazyfs: writing trace \(trace.outputPath) failed: \(error)") }
        }
    }
}
