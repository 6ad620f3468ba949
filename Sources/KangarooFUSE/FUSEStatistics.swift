import Synchronization

/// Counters of a running server, for metrics and tests.
public struct FUSEStatistics: Sendable, Hashable {
    /// Requests received (all opcodes, INIT included).
    public var requests: Int
    /// READ requests answered with data (or EOF).
    public var reads: Int
    /// Bytes returned by READ.
    public var bytesRead: Int
    /// Requests answered with an errno.
    public var errors: Int
    /// Requests being served right now.
    public var inFlight: Int
    /// Most requests ever served at once (bounded by the worker count).
    public var peakInFlight: Int
}

/// Lock-free counters behind `FUSEStatistics`.
final class FUSECounters: Sendable {
    let requests = Atomic<Int>(0)
    let reads = Atomic<Int>(0)
    let bytesRead = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
    let inFlight = Atomic<Int>(0)
    let peakInFlight = Atomic<Int>(0)

    func begin() {
        requests.add(1, ordering: .relaxed)
        let now = inFlight.add(1, ordering: .relaxed).newValue
        var peak = peakInFlight.load(ordering: .relaxed)
        while now > peak {
            let (exchanged, original) = peakInFlight.compareExchange(expected: peak, desired: now, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
    }

    func end() { inFlight.subtract(1, ordering: .relaxed) }

    var snapshot: FUSEStatistics {
        FUSEStatistics(
            requests: requests.load(ordering: .relaxed), reads: reads.load(ordering: .relaxed),
            bytesRead: bytesRead.load(ordering: .relaxed), errors: errors.load(ordering: .relaxed),
            inFlight: inFlight.load(ordering: .relaxed), peakInFlight: peakInFlight.load(ordering: .relaxed))
    }
}
