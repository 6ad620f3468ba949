#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// When the node last started a container, so that the pools refill in the
/// quiet after a burst instead of taking CPU from the starts themselves (a
/// start finds its network and disk prepared as long as the pool lasts, and
/// makes them on the spot after that, which costs what a refill would).
public final class NodeActivity: Sendable {
    public static let shared = NodeActivity()
    private let lastStart = Atomic<Int64>(0)  // CLOCK_MONOTONIC, ns

    public init() {}

    static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// A container (or sandbox) is being started.
    public func noteStart() { lastStart.store(Self.now(), ordering: .relaxed) }

    /// True when no start was noted for `seconds`.
    public func isQuiet(for seconds: Double = 1) -> Bool {
        let last = lastStart.load(ordering: .relaxed)
        return last == 0 || Self.now() - last >= Int64(seconds * 1e9)
    }
}
