import Foundation
import KangarooChunks
import KangarooImage
import Synchronization

/// Caps the bandwidth a mount takes from its source (bytes per second,
/// token bucket with a 50 ms burst), so a node pulling many images, or a
/// prefetch of a whole image, leaves room on the link. Reads wait their
/// turn in order of arrival; on-demand reads and prefetch share the budget.
public final class RateLimitedChunkSource: ChunkSource, SourceReporting {
    let inner: any ChunkSource
    let bytesPerSecond: Double
    /// The monotonic instant (seconds) at which the bucket is next empty.
    private let nextFree = Mutex<Double>(0)

    public init(_ inner: any ChunkSource, bytesPerSecond: UInt64) {
        self.inner = inner
        self.bytesPerSecond = Double(max(1, bytesPerSecond))
    }

    public func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        try read(blob: blob, range: range, accept: { _ in true })
    }

    public func read(blob: Int, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws -> [UInt8] {
        let cost = Double(range.count) / bytesPerSecond
        let burst = 0.05
        let now = Self.now()
        // Reserve this read's share of the link; wait until it is ours.
        let done = nextFree.withLock { next in
            next = max(next, now - burst) + cost
            return next
        }
        let wait = done - now
        if wait > 0 { usleep(useconds_t(min(wait, 3600) * 1_000_000)) }
        return try inner.read(blob: blob, range: range, accept: accept)
    }

    public func stored(blob: Int, range: Range<UInt64>) { inner.stored(blob: blob, range: range) }

    public func sourceStats() -> [SourceStats] {
        (inner as? any SourceReporting)?.sourceStats() ?? []
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
