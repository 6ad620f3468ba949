import CKangaroo
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Reaps this process's children on one dedicated thread and reports the
/// exit of the ones it watches. With `becomeSubreaper`, orphaned descendants
/// (a container's daemonised processes) come here too. Children it does not
/// watch are left alone for `grace`, so code that waits for its own child
/// (a hook, a failed container init) gets its status first, then reaped.
public final class Reaper: Sendable {
    public typealias Handler = @Sendable (_ pid: Int32, _ status: Int32) -> Void

    private struct State {
        var watched: [Int32: Handler] = [:]
        var unknownSince: [Int32: ContinuousClock.Instant] = [:]
        /// Children reaped unwatched after the grace, with their status: a
        /// watch that comes late (its caller was descheduled between spawn
        /// and watch) still gets the exit. Kept for `keepUnclaimed`.
        var unclaimed: [Int32: (status: Int32, at: ContinuousClock.Instant)] = [:]
        var started = false
    }
    static let keepUnclaimed: Duration = .seconds(60)
    private let state = Mutex(State())
    let grace: Duration

    public init(grace: Duration = .seconds(1)) {
        self.grace = grace
    }

    /// Calls `onExit` (on the reaper thread, or at once on this one if the
    /// child was already reaped) with the wait status once `pid`, a child of
    /// this process, has exited.
    public func watch(_ pid: Int32, onExit: @escaping Handler) {
        let early = state.withLock { s -> Int32? in
            if let u = s.unclaimed.removeValue(forKey: pid) { return u.status }
            s.watched[pid] = onExit
            return nil
        }
        if let early { onExit(pid, early) }
    }

    /// The exit of `pid` learnt elsewhere (a former child of a previous
    /// daemon, reaped by its supervisor): reported as if reaped here.
    public func deliver(_ pid: Int32, status: Int32) {
        let handler = state.withLock { s -> Handler? in
            if let h = s.watched.removeValue(forKey: pid) { return h }
            s.unclaimed[pid] = (status, ContinuousClock.now)
            return nil
        }
        handler?(pid, status)
    }

    public func start(becomeSubreaper: Bool) {
        let go = state.withLock { s -> Bool in defer { s.started = true }; return !s.started }
        guard go else { return }
        if becomeSubreaper { _ = kr_set_child_subreaper() }
        let thread = Thread { [self] in loop() }
        thread.start()
    }

    private func loop() {
        while true {
            // Watched children first: an unwatched zombie must not hide them.
            let watched = state.withLock { Array($0.watched.keys) }
            for pid in watched {
                var status: Int32 = 0
                if kr_try_reap(pid, &status) == 1 {
                    let handler = state.withLock { $0.watched.removeValue(forKey: pid) }
                    handler?(pid, status)
                }
            }
            let pid = kr_peek_exited()
            if pid == 0 || pid < 0 {
                usleep(20_000)  // no children (or an error): nothing to block on
                continue
            }
            let known = state.withLock { $0.watched[pid] != nil }
            if known { continue }
            let now = ContinuousClock.now
            let old = state.withLock { s -> Bool in
                let since = s.unknownSince[pid] ?? now
                s.unknownSince[pid] = since
                return now - since >= grace
            }
            if old {
                var status: Int32 = 0
                let reaped = kr_try_reap(pid, &status) == 1
                // A watch may have come in since the check above.
                let late = state.withLock { s -> Handler? in
                    s.unknownSince.removeValue(forKey: pid)
                    let cutoff = now - Self.keepUnclaimed
                    s.unclaimed = s.unclaimed.filter { $0.value.at > cutoff }
                    guard reaped else { return nil }
                    if let h = s.watched.removeValue(forKey: pid) { return h }
                    s.unclaimed[pid] = (status, now)
                    return nil
                }
                late?(pid, status)
            } else {
                usleep(10_000)
            }
        }
    }
}

/// Thread without Foundation: a detached pthread running `body`.
final class Thread: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func start() {
        var tid = pthread_t()
        let box = Unmanaged.passRetained(self)
        pthread_create(&tid, nil, { arg in
            let t = Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue()
            t.body()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
    }
}
