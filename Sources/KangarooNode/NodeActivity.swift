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

/// Runs blocking pool work (loop devices, mkfs, netlink) on a thread of its
/// own at a lower CPU priority, off Swift's cooperative pool, and awaits it.
public enum PoolWorker {
    private final class Job: @unchecked Sendable {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    @discardableResult
    public static func run<T: Sendable, E: Error>(nice: Int32 = 10, _ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, E>, Never>) in
            let job = Job {
                // who 0 is the calling thread on Linux; children it spawns (mkfs) inherit it.
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice)
                do throws(E) { continuation.resume(returning: .success(try body())) } catch { continuation.resume(returning: .failure(error)) }
            }
            var tid = pthread_t()
            let box = Unmanaged.passRetained(job).toOpaque()
            if pthread_create(&tid, nil, { arg in
                Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue().body()
                return nil
            }, box) == 0 {
                pthread_detach(tid)
            } else {
                Unmanaged<Job>.fromOpaque(box).release()
                job.body()  // no thread to be had: run here
            }
        }
        return try result.get()
    }
}
