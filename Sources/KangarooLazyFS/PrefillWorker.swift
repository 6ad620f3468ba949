import Foundation
import Synchronization

/// Runs page-cache prefills of listed directories on one background
/// thread, oldest first, so a listing's reply does not wait for them: the
/// reader goes on with the entries while their contents are pushed (a read
/// that comes first is served by a normal request; the push of the same
/// bytes afterwards is harmless). At most `limit` directories wait; more
/// are dropped, as a prefill is only an optimisation.
final class PrefillWorker: Sendable {
    private struct State {
        var queue: [@Sendable () -> Void] = []
        var started = false
        var stopped = false
    }

    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let limit: Int

    init(limit: Int = 256) { self.limit = limit }

    /// Queues one directory's prefill.
    func submit(_ work: @escaping @Sendable () -> Void) {
        let start = state.withLock { state -> Bool? in
            guard !state.stopped, state.queue.count < limit else { return nil }
            state.queue.append(work)
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

    private func run() {
        while true {
            wake.wait()
            let next = state.withLock { state -> (@Sendable () -> Void)?? in
                if state.stopped { return .some(nil) }
                return state.queue.isEmpty ? nil : state.queue.removeFirst()
            }
            switch next {
            case .some(nil): return
            case .some(let work?): work()
            case nil: continue
            }
        }
    }
}
