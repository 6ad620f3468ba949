#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking work (clone and waits on an init, mounts, loop devices,
/// mkfs, netlink) on a thread of its own, off Swift's cooperative pool,
/// and awaits it. Not Dispatch: its global queues run about as many jobs
/// at once as there are CPUs, even a custom concurrent queue only a few
/// more, so under a burst jobs that wait (on an init, a device) queue
/// behind each other; a thread costs tens of microseconds.
public enum OwnThread {
    private final class Job: @unchecked Sendable {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// `nice`: the thread's CPU priority (background refills use 10);
    /// children it spawns (mkfs) inherit it.
    @discardableResult
    public static func run<T: Sendable, E: Error>(nice: Int32 = 0, _ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, E>, Never>) in
            let job = Job {
                // who 0 is the calling thread on Linux.
                if nice != 0 { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) }
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
