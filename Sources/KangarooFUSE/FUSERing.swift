#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import Logging
import Synchronization
import SystemPackage

/// FUSE over io_uring (Linux 6.14+, when the fuse module's `enable_uring`
/// is set): the kernel puts each request on the queue of the CPU that
/// issued it, and a worker pinned to that CPU takes it from its ring entry
/// and commits the reply in the same system call that waits for the next
/// one. The requester and the worker meet on one CPU, so a request costs
/// no cross-CPU wake-up; on this project's VMs that halves the cost of a
/// metadata-bound walk (docs/LAZYFS.md).
///
/// Each worker owns one ring entry (its own io_uring), so a request that
/// blocks, such as a read fetching a chunk, holds only its worker, as with
/// /dev/fuse. FORGET and INTERRUPT keep coming through /dev/fuse.
enum FUSERing {
    /// What the registration of every worker came to.
    final class Registration: Sendable {
        private let latch: FUSELatch
        private let failures = Mutex<[Errno]>([])

        init(workers: Int) { latch = FUSELatch(count: workers) }

        func report(_ result: Int32) {
            if result != 0 { failures.withLock { $0.append(Errno(rawValue: -result)) } }
            latch.countDown()
        }

        /// Waits for every worker; nil when all registered, else the first error.
        func wait() -> Errno? {
            latch.wait()
            return failures.withLock { $0.first }
        }
    }

    /// Queues the kernel keeps (one per possible CPU); nil if unknown.
    static var queueCount: Int? {
        let count = ckg_possible_cpus()
        return count > 0 ? Int(count) : nil
    }

    /// A worker: pins itself to `queue`'s CPU, registers one entry on a
    /// private io_uring (over its own clone of the session's /dev/fuse
    /// descriptor), reports the outcome, then serves until the connection
    /// goes away.
    static func serve(fd: Int32, queue: Int, session: FUSESession, logger: Logger, registration: Registration) {
        defer { close(fd) }
        // Only a preference: a cpuset may not allow the CPU.
        _ = ckg_pin_current_thread(Int32(queue))
        var ring: OpaquePointer?
        let payload = max(FUSEProtocol.maxTransfer, Int(FUSEProtocol.maxPages) * 4096)
        let opened = ckg_fuse_ring_open(fd, UInt32(queue), payload, &ring)
        registration.report(opened)
        guard opened == 0, let ring else { return }
        defer { ckg_fuse_ring_close(ring) }
        let reply = UnsafeMutableRawBufferPointer(start: ckg_fuse_ring_reply_buffer(ring),
                                                  count: FUSEWireSize.outHeader + payload)
        var replyLength = 0
        while true {
            let count = ckg_fuse_ring_next(ring, replyLength)
            if count < 0 {
                switch Int32(-count) {
                case ENOTCONN, ECONNABORTED, ECANCELED, ENODEV:
                    return  // Unmounted, aborted or torn down.
                default:
                    logger.error("fuse: io_uring queue \(queue) failed: \(Errno(rawValue: Int32(-count)))")
                    return
                }
            }
            let request = UnsafeRawBufferPointer(start: ckg_fuse_ring_request(ring), count: count)
            if let length = session.handle(request: request, reply: reply) {
                replyLength = length
            } else {
                // Only malformed requests get here (no-reply opcodes do not
                // travel through the ring), and the entry needs a commit.
                FUSEOutHeader.encode(into: reply, length: FUSEWireSize.outHeader, error: -Errno.ioError.rawValue,
                                     unique: FUSEInHeader(request)?.unique ?? 0)
                replyLength = FUSEWireSize.outHeader
            }
        }
    }
}
