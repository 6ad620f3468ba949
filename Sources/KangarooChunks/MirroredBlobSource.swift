import Foundation
import KangarooOCI
import Logging
import Synchronization

/// The hosts of one registry tried in order: mirrors first, as hosts.toml
/// lists them, the registry itself last (`RegistryHosts`).
///
/// Health: a host that fails (connection refused, 5xx, a timeout, a short
/// answer) is taken out of use for a backoff that starts at 1 s and doubles
/// with each further failure up to 60 s; once it has passed, one request is
/// let through as its probe while the others go on to the next host, and a
/// success brings the host back (a circuit breaker: no probe traffic of its
/// own, a dead mirror costs one request per backoff). A host that answers
/// 404 lacks that blob: the next host is tried, the host stays in use. When
/// every host is out of use they are tried anyway, in order, so a request
/// fails only after each host failed it.
///
/// Trust: a host's bytes are checked by the caller's `accept` (the chunks'
/// ToC digests). A host whose bytes fail it is blocked for `blockSeconds`
/// (10 minutes), never tried meanwhile, and the next host is asked: a
/// mirror or peer that serves a wrong byte costs one request, not a wrong
/// file. Only when no host gives accepted bytes are the last bytes returned
/// (the caller reports them as failing verification).
public final class MirroredBlobSource: BlobSource, SourceReporting {
    enum Health: Sendable, Equatable {
        case up
        /// Out of use until `until` (monotonic seconds).
        case down(until: Double, failures: Int)
        /// Its backoff passed; one request is finding out.
        case probing(failures: Int)
        /// It served bytes that failed verification: not used until `until`.
        case blocked(until: Double)
    }

    final class Entry: Sendable {
        let host: RegistryHost
        let source: any BlobSource
        /// `source` as a planning source, cast once (not on every read).
        let planning: (any PlanningBlobSource)?
        let state: Mutex<(health: Health, stats: SourceStats)>

        init(host: RegistryHost, source: any BlobSource, role: String? = nil) {
            self.host = host
            self.source = source
            planning = source as? any PlanningBlobSource
            state = Mutex((.up, SourceStats(name: host.url, role: role ?? (host.isMirror ? "mirror" : "origin"))))
        }

        /// Whether a request may use the host now (claims the probe).
        func admit(now: Double) -> Bool {
            state.withLock { s in
                switch s.health {
                case .up: return true
                case .probing: return false
                case .blocked(let until):
                    guard now >= until else { return false }
                    s.health = .probing(failures: 0)
                    return true
                case .down(let until, let failures):
                    guard now >= until else { return false }
                    s.health = .probing(failures: failures)
                    return true
                }
            }
        }
    }

    let entries: [Entry]
    /// Per entry with a planning source: the hosts after it, as its origin.
    let origins: [Int: MirroredBlobSource]
    let clients: [RegistryClient]
    let logger: Logger
    static let firstBackoff = 1.0
    static let maxBackoff = 60.0
    static let blockSeconds = 600.0

    /// Hosts in the order they are tried, each with its source (and a
    /// role for stats; by default mirror or origin).
    public init(_ hosts: [(RegistryHost, any BlobSource, String?)], clients: [RegistryClient] = [], logger: Logger) {
        let entries = hosts.map { Entry(host: $0.0, source: $0.1, role: $0.2) }
        self.entries = entries
        self.origins = Self.origins(entries, logger: logger)
        self.clients = clients
        self.logger = logger
    }

    /// The hosts after a planning source, sharing their health and stats.
    init(entries: ArraySlice<Entry>, logger: Logger) {
        self.entries = Array(entries)
        self.origins = Self.origins(self.entries, logger: logger)
        self.clients = []
        self.logger = logger
    }

    static func origins(_ entries: [Entry], logger: Logger) -> [Int: MirroredBlobSource] {
        var out: [Int: MirroredBlobSource] = [:]
        for (i, entry) in entries.enumerated() where entry.planning != nil {
            out[i] = MirroredBlobSource(entries: entries[(i + 1)...], logger: logger)
        }
        return out
    }

    /// The pull hosts of `hosts` for `repository`: mirrors answer within
    /// their `timeout` (default `mirrorTimeout`), the registry within
    /// `timeout`. Call `shutdown()` when done.
    /// `peers` (a P2P source, named for stats) go first.
    public static func registry(_ hosts: RegistryHosts, repository: String, credentials: RegistryClient.Credentials?,
                                timeout: Duration, mirrorTimeout: Duration, retries: Int,
                                peers: (name: String, source: any BlobSource)? = nil,
                                logger: Logger) throws(ChunksError) -> MirroredBlobSource {
        let pull = hosts.hosts(for: .pull)
        guard !pull.isEmpty else {
            throw ChunksError(.exhausted, "\(hosts.path ?? "the registry hosts") names no host with the pull capability for \(hosts.registry)")
        }
        var clients: [RegistryClient] = []
        var sources: [(RegistryHost, any BlobSource, String?)] = []
        if let peers {
            var host = RegistryHost.peerPlaceholder
            host.host = peers.name
            sources.append((host, peers.source, "peer"))
        }
        for host in pull {
            let limit = host.timeout ?? (host.isMirror ? mirrorTimeout : timeout)
            let client = host.client(credentials: credentials, timeout: limit, retries: retries, logger: logger)
            clients.append(client)
            sources.append((host, RegistryBlobSource(client: client, repository: repository, timeout: limit), nil))
        }
        return MirroredBlobSource(sources, clients: clients, logger: logger)
    }

    public func shutdown() async {
        for client in clients { await client.shutdown() }
    }

    public func sourceStats() -> [SourceStats] {
        entries.map { entry in
            entry.state.withLock { s in
                var stats = s.stats
                switch s.health {
                case .up: stats.state = "up"
                case .blocked: stats.state = "blocked"
                case .down, .probing: stats.state = "down"
                }
                return stats
            }
        }
    }

    public func read(_ digest: Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws(ChunksError) -> [UInt8] {
        var failures: [String] = []
        var skipped: [(Int, Entry)] = []
        var rejected: [UInt8]?
        let now = Self.now()
        for (i, entry) in entries.enumerated() {
            guard entry.admit(now: now) else { skipped.append((i, entry)); continue }
            if let bytes = attempt(entry, i, digest, range, accept, &failures, &rejected) { return bytes }
        }
        // Every host that was in use failed: try those that were down (not
        // the blocked ones), in order.
        for (i, entry) in skipped {
            let retry = entry.state.withLock { s -> Bool in
                guard case .down(_, let n) = s.health else { return false }
                s.health = .probing(failures: n)
                return true
            }
            if retry, let bytes = attempt(entry, i, digest, range, accept, &failures, &rejected) { return bytes }
        }
        if let rejected { return rejected }
        throw ChunksError(.exhausted, "bytes \(range) of \(digest): every host failed: " + failures.joined(separator: "; "))
    }

    public func stored(_ digest: Digest, range: Range<UInt64>) {
        for entry in entries { entry.source.stored(digest, range: range) }
    }

    private func attempt(_ entry: Entry, _ index: Int, _ digest: Digest, _ range: Range<UInt64>, _ accept: ([UInt8]) -> Bool,
                         _ failures: inout [String], _ rejected: inout [UInt8]?) -> [UInt8]? {
        do {
            // A planning source returns only accepted bytes, some of them
            // from the hosts after it (counted in their rows).
            let bytes: [UInt8]
            let own: UInt64
            let planning = entry.planning
            if let planning, let origin = origins[index] {
                let result = try planning.read(digest, range: range, accept: accept, origin: origin)
                bytes = result.bytes
                own = result.own
            } else {
                bytes = try entry.source.read(digest, range: range)
                own = UInt64(bytes.count)
            }
            guard planning != nil || accept(bytes) else {
                entry.state.withLock { s in
                    s.stats.requests += 1
                    s.stats.rejected += 1
                    s.health = .blocked(until: Self.now() + Self.blockSeconds)
                }
                logger.error("registry host \(entry.host.url) served bytes \(range) of \(digest) that fail verification: blocked for \(Int(Self.blockSeconds)) s")
                failures.append("\(entry.host.url): bytes failed verification")
                rejected = bytes
                return nil
            }
            let recovered = entry.state.withLock { s -> Bool in
                s.stats.bytes += own
                s.stats.requests += 1
                let wasDown = s.health != .up
                s.health = .up
                return wasDown
            }
            if recovered { logger.notice("registry host \(entry.host.url) answers again; back in use") }
            return bytes
        } catch {
            failures.append("\(entry.host.url): \(error)")
            let backoff: Double? = entry.state.withLock { s in
                s.stats.requests += 1
                s.stats.failures += 1
                guard error.code != .notFound else {
                    s.health = .up  // it answered: alive, only without this blob
                    return nil
                }
                let previous: Int
                switch s.health {
                case .up, .blocked: previous = 0
                case .down(_, let n), .probing(let n): previous = n
                }
                let seconds = min(Self.maxBackoff, Self.firstBackoff * Double(1 << min(previous, 10)))
                s.health = .down(until: Self.now() + seconds, failures: previous + 1)
                return seconds
            }
            if let backoff {
                logger.warning("registry host \(entry.host.url) failed, out of use for \(backoff) s: \(error)")
            }
            return nil
        }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
