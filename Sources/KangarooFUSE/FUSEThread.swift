#if canImport(Glibc)
import Glibc
#endif

/// Detached POSIX threads for the workers (blocking reads of /dev/fuse do
/// not belong on Swift's cooperative pool) and a countdown they signal when
/// they exit.
enum FUSEThread {
    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    static func spawnDetached(_ run: @escaping @Sendable () -> Void) throws(FUSEError) {
        let box = Unmanaged.passRetained(Body(run)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let body = Unmanaged<Body>.fromOpaque(argument).takeRetainedValue()
            body.run()
            return nil
        }, box)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(box).release()
            throw FUSEError(.thread, "cannot start a FUSE worker thread", errno: .init(rawValue: result))
        }
        pthread_detach(thread)
    }
}

/// A countdown latch over pthread mutex/condvar: `wait` blocks until
/// `countDown` was called `count` times.
final class FUSELatch: @unchecked Sendable {
    // Heap-allocated: pthread objects must not move.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var count: Int

    init(count: Int) {
        self.count = count
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Expects `count` more countdowns (a worker about to start).
    func add(_ count: Int) {
        pthread_mutex_lock(mutex)
        self.count += count
        pthread_mutex_unlock(mutex)
    }

    func countDown() {
        pthread_mutex_lock(mutex)
        count -= 1
        if count <= 0 { pthread_cond_broadcast(condition) }
        pthread_mutex_unlock(mutex)
    }

    func wait() {
        pthread_mutex_lock(mutex)
        while count > 0 { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }

    var isDone: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return count <= 0
    }
}
