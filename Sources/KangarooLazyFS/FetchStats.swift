import KangarooChunks
import Synchronization

/// A snapshot of a lazy mount's counters (`kangaroo image stats`).
public struct LazyStats: Codable, Sendable, Equatable {
    public var mountPoint: String = ""
    public var mode: String = "fuse"
    public var pid: Int32 = 0
    /// Compressed bytes read from the chunk source.
    public var bytesFetched: UInt64 = 0
    /// Range requests sent to the source (after merging).
    public var rangeRequests: UInt64 = 0
    public var chunksFetched: UInt64 = 0
    public var chunksCached = 0
    public var chunksTotal = 0
    /// Chunk lookups by reads that found the chunk cached / missing.
    public var cacheHits: UInt64 = 0
    public var cacheMisses: UInt64 = 0
    /// Chunks whose fetch is under way.
    public var inFlight = 0
    public var errors: UInt64 = 0
    public var verificationFailures: UInt64 = 0
    public var timeouts: UInt64 = 0
    /// Latency of range requests (milliseconds) over the last 4096 requests.
    public var fetchLatencyP50Ms: Double = 0
    public var fetchLatencyP90Ms: Double = 0
    public var fetchLatencyP99Ms: Double = 0
    public var prefetchDone = false
    /// Bytes per host (mirrors, the registry) when the source reports them.
    public var sources: [SourceStats]? = nil
    public var updatedAt: Double = 0

    public init() {}
}

/// Counters shared by the fetcher's threads.
final class FetchCounters: Sendable {
    struct State {
        var stats = LazyStats()
        var latencies: [Double] = []
        var next = 0
    }

    let state = Mutex(State())

    func update(_ body: (inout LazyStats) -> Void) { state.withLock { body(&$0.stats) } }

    func recordLatency(milliseconds: Double) {
        state.withLock { s in
            if s.latencies.count < 4096 { s.latencies.append(milliseconds) } else {
                s.latencies[s.next] = milliseconds
                s.next = (s.next + 1) % 4096
            }
        }
    }

    func snapshot() -> LazyStats {
        state.withLock { s in
            var out = s.stats
            let sorted = s.latencies.sorted()
            func percentile(_ p: Double) -> Double {
                guard !sorted.isEmpty else { return 0 }
                return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
            }
            out.fetchLatencyP50Ms = percentile(0.5)
            out.fetchLatencyP90Ms = percentile(0.9)
            out.fetchLatencyP99Ms = percentile(0.99)
            return out
        }
    }
}
