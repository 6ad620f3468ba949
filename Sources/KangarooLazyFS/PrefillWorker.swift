import Foundation
import Synchronization

/// Runs page-cache prefills of listed directories on one background
/// thread, oldest first, so a listing's reply does not wait for them: the
/// reader goes on with the entries while their contents are pushed (a read
/// that comes first is served by a normal request; the push of the same
/// bytes afterwards is harmless). At most `limit` directories wait; beyond
/// that the oldest is dropped, as a prefill is only an optimisation; so are
/// directories that waited longer than `maxAge` (a reader that far ahead
/// has read the files already, or moved on).
final class PrefillWorker: Sendable {
    private struct State {
        var queue: [(queued: ContinuousClock.Instant, work: @Sendable () -> Void)] = []
        var started = false
        var stopped = false
    }

    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let limit: Int
    private let maxAge: Duration

    init(limit: Int = 64, maxAge: Duration = .seconds(1)) {
        self.limit = limit
        self.maxAge = maxAge
    }

    /// Queues one directory's prefill.
    func submit(_ work: @escaping @Sendable () -> Void) {
        let start = state.withLock { state -> Bool? in
            guard !state.stopped else { return nil }
            let now = ContinuousClock.now
            Self.dropStale(&state.queue, now: now, maxAge: maxAge)
            if state.queue.count >= limit { state.queue.removeFirst() }  // the newest listing matters most
            state.queue.append((now, work))
            defer { state.started = true }
            return !state.started
        }
        guard let start else { return }
        if start { Thread.detachNewThread { [self] in run() } }
        wake.signal()
    }

    /// Drops what waits and ends the thread.
    func stop() {
        let started = state.withLock { state -> Bool in
            state.stopped = true
            state.queue.removeAll()
            return state.started
        }
        if started { wake.signal() }
    }

    private static func dropStale(_ queue: inout [(queued: ContinuousClock.Instant, work: @Sendable () -> Void)],
                                  now: ContinuousClock.Instant, maxAge: Duration) {
        while let first = queue.first, now - first.queued > maxAge { queue.removeFirst() }
    }

    private enum Next {
        case work(@Sendable () -> Void)
        case idle  // woken for work that was dropped since
        case stop
    }

    private func run() {
        while true {
            wake.wait()
            let next = state.withLock { state -> Next in
                if state.stopped { return .stop }
                Self.dropStale(&state.queue, now: ContinuousClock.now, maxAge: maxAge)
                if state.queue.isEmpty { return .idle }
                return .work(state.queue.removeFirst().work)
            }
            switch next {
            case .work(let work): work()
            case .idle: continue
            case .stop: return
            }
        }
    }
}
