#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import Logging
import Synchronization
import SystemPackage

/// Serves a `FUSEFileSystem` at a mount point over the raw FUSE protocol.
/// `start()` mounts, answers INIT and starts the workers: with FUSE over
/// io_uring (when the kernel offers it and `ioUring` is set) pinned
/// workers per CPU queue, each owning one ring entry, plus two /dev/fuse
/// readers for FORGET and INTERRUPT; otherwise `threads` workers, each
/// reading its own cloned /dev/fuse descriptor. Either way a request that
/// blocks (a read fetching data over the network) holds only its worker.
/// `stop()` unmounts and waits for the workers.
public final class FUSEServer: Sendable {
    public struct Configuration: Sendable {
        public var mountPoint: FilePath
        public var mount = FUSEMount.Options()
        /// Worker threads, each with a cloned /dev/fuse descriptor and
        /// 2 MiB of buffers. Bounds the requests served at once.
        public var threads = 16
        /// Sets /sys/class/bdi/<dev>/read_ahead_kb after mounting (the INIT
        /// reply cannot raise it above the kernel's 128 KiB offer); nil
        /// keeps the kernel default.
        public var readaheadKiB: Int? = 1024
        public var initialization = FUSEInitOptions()
        /// Use FUSE over io_uring when the kernel offers it (the fuse
        /// module's enable_uring parameter); /dev/fuse otherwise.
        public var ioUring = true
        /// Ring workers per CPU queue; nil: max(2, threads / queues).
        public var ringWorkersPerQueue: Int?
        /// Every worker reads the one session descriptor (no clones, no
        /// io_uring), so that a keeper holding a copy of it
        /// (`sessionDescriptor`, through pidfd_getfd) keeps the connection
        /// and the requests this server had read when it dies; a new server
        /// started with `takeover` then answers them (FUSE_NOTIFY_RESEND).
        public var failover = false
        /// Serve an existing connection instead of mounting: the session
        /// descriptor a keeper held and what the first server's INIT agreed.
        public var takeover: Takeover?

        public init(mountPoint: FilePath) { self.mountPoint = mountPoint }
    }

    /// An existing FUSE connection to serve (see `Configuration.takeover`).
    public struct Takeover: Sendable {
        public var descriptor: Int32
        public var minor: UInt32
        public var flags: FUSEInitFlags
        public init(descriptor: Int32, minor: UInt32, flags: FUSEInitFlags) {
            self.descriptor = descriptor
            self.minor = minor
            self.flags = flags
        }
        public init(descriptor: Int32, minor: UInt32, rawFlags: UInt64) {
            self.init(descriptor: descriptor, minor: minor, flags: FUSEInitFlags(rawValue: rawFlags))
        }
    }

    private enum State {
        case idle
        case running(FUSELatch)
        case stopped
    }

    public let configuration: Configuration
    private let session: FUSESession
    private let logger: Logger
    private let state = Mutex<State>(.idle)

    public init(fileSystem: some FUSEFileSystem, configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var options = configuration.initialization
        if !configuration.ioUring || configuration.failover { options.flags.remove(.overIOUring) }
        self.session = FUSESession(fileSystem: fileSystem, options: options, logger: logger)
    }

    /// The protocol minor version agreed in INIT (nil before).
    public var negotiatedMinor: UInt32? { session.negotiatedState?.minor }
    /// Request counters since start.
    public var statistics: FUSEStatistics { session.counters.snapshot }
    /// INIT flags both sides agreed on (empty before INIT).
    public var negotiatedFlags: FUSEInitFlags { session.negotiatedState?.flags ?? [] }
    /// Workers started (ring workers and /dev/fuse readers): bounds the
    /// requests served at once.
    public var workerCount: Int { workers.withLock { $0 } }
    private let workers = Mutex(0)
    /// Pushes into the kernel's page cache of this mount (nil unless running).
    public var pageCache: FUSEPageCache? { session.pageCache }
    /// Whether requests travel through io_uring queues (set by `start()`).
    public var usesIOUring: Bool { ringInUse.withLock { $0 } }
    private let ringInUse = Mutex(false)
    /// The session descriptor, kept open while serving with `failover`.
    public var sessionDescriptor: Int32? { kept.withLock { $0 >= 0 ? $0 : nil } }
    private let kept = Mutex<Int32>(-1)

    /// Opens /dev/fuse, mounts, answers INIT and starts the workers. On
    /// return the mount serves requests.
    public func start() throws(FUSEError) {
        let latch = FUSELatch(count: 0)
        try state.withLock { (state: inout State) throws(FUSEError) in
            guard case .idle = state else { throw FUSEError(.state, "FUSE server was already started", errno: .alreadyInProcess) }
            state = .running(latch)
        }
        do throws(FUSEError) {
            try launch(latch: latch)
        } catch {
            state.withLock { $0 = .stopped }
            throw error
        }
    }

    private func launch(latch: FUSELatch) throws(FUSEError) {
        let path = configuration.mountPoint
        let takeover = configuration.takeover
        let sessionFD: Int32
        if let takeover { sessionFD = takeover.descriptor } else { sessionFD = try Self.openDevice() }
        var descriptors = [sessionFD]
        var mounted = false
        do throws(FUSEError) {
            if let takeover {
                session.adopt(minor: takeover.minor, flags: takeover.flags)
                try Self.resend(fd: sessionFD)
            } else {
                try FUSEMount.mount(device: FileDescriptor(rawValue: sessionFD), at: path, options: configuration.mount)
                mounted = true
                try answerInit(fd: sessionFD)
            }
            session.notifications.open(try Self.cloneDevice(of: sessionFD))
            var readers = max(1, configuration.threads)
            if !configuration.failover, negotiatedFlags.contains(.overIOUring), try startRing(sessionFD: sessionFD, latch: latch) {
                readers = 2  // FORGET, INTERRUPT, and requests before the ring is ready.
            }
            for _ in 1..<readers {
                // failover: copies of the one open file (its requests stay
                // with the file a keeper holds); otherwise clones, a queue
                // of their own each.
                descriptors.append(configuration.failover ? try Self.duplicate(sessionFD) : try Self.cloneDevice(of: sessionFD))
            }
            if configuration.failover { kept.withLock { $0 = (try? Self.duplicate(sessionFD)) ?? -1 } }
        } catch {
            if mounted { try? FUSEMount.unmount(path, lazy: true) }
            for fd in descriptors { close(fd) }
            session.notifications.close()
            throw error
        }
        for (index, fd) in descriptors.enumerated() {
            let session = self.session
            let logger = self.logger
            do throws(FUSEError) {
                try spawnWorker(latch: latch) { Self.serve(fd: fd, session: session, logger: logger) }
            } catch {
                // Already-running workers exit once the mount goes away.
                try? FUSEMount.unmount(path, lazy: true)
                for fd in descriptors[index...] { close(fd) }
                throw error
            }
        }
        if let kib = configuration.readaheadKiB, let info = FUSEMount.mountInfo(for: Self.resolved(path)) {
            if !FUSEMount.setReadahead(kibibytes: kib, major: info.major, minor: info.minor) {
                logger.debug("fuse: could not set read_ahead_kb for \(info.major):\(info.minor)")
            }
        }
        let transport = usesIOUring ? "io_uring queues and \(descriptors.count) /dev/fuse readers" : "\(descriptors.count) workers"
        logger.info("fuse: \(takeover == nil ? "serving" : "took over") \(path) with \(transport), protocol 7.\(negotiatedMinor ?? 0)")
    }

    /// Starts the io_uring workers, `ringWorkersPerQueue` per CPU queue.
    /// Returns whether every one registered; if not, requests keep coming
    /// through /dev/fuse (the kernel uses the ring only once every queue
    /// has an entry) and the registered workers idle until unmount.
    private func startRing(sessionFD: Int32, latch: FUSELatch) throws(FUSEError) -> Bool {
        guard let queues = FUSERing.queueCount else {
            logger.warning("fuse: cannot read /sys/devices/system/cpu/possible; serving through /dev/fuse")
            return false
        }
        let perQueue = max(1, configuration.ringWorkersPerQueue ?? max(2, configuration.threads / queues))
        let registration = FUSERing.Registration(workers: queues * perQueue)
        var started = 0
        defer { for _ in started..<(queues * perQueue) { registration.report(0) } }
        for queue in 0..<queues {
            for _ in 0..<perQueue {
                let fd = try Self.cloneDevice(of: sessionFD)
                let session = self.session
                let logger = self.logger
                do throws(FUSEError) {
                    try spawnWorker(latch: latch) {
                        FUSERing.serve(fd: fd, queue: queue, session: session, logger: logger, registration: registration)
                    }
                } catch {
                    close(fd)
                    throw error
                }
                started += 1
            }
        }
        if let failure = registration.wait() {
            logger.warning("fuse: io_uring registration failed (\(failure)); serving through /dev/fuse")
            return false
        }
        ringInUse.withLock { $0 = true }
        return true
    }

    /// Starts one worker thread running `body`, counted by `latch` and
    /// `workerCount`.
    private func spawnWorker(latch: FUSELatch, _ body: @escaping @Sendable () -> Void) throws(FUSEError) {
        latch.add(1)
        workers.withLock { $0 += 1 }
        do throws(FUSEError) {
            try FUSEThread.spawnDetached {
                body()
                latch.countDown()
            }
        } catch {
            workers.withLock { $0 -= 1 }
            latch.countDown()
            throw error
        }
    }

    /// A second descriptor of the same open /dev/fuse file.
    private static func duplicate(_ fd: Int32) throws(FUSEError) -> Int32 {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        guard copy >= 0 else { throw FUSEError(.device, "dup of /dev/fuse failed", errno: Errno(rawValue: Glibc.errno)) }
        return copy
    }

    /// FUSE_NOTIFY_RESEND (7.40, Linux 6.9): the kernel queues again every
    /// request a server had read and not answered, for this server.
    static let notifyResend: Int32 = 7
    private static func resend(fd: Int32) throws(FUSEError) {
        var header = [UInt8](repeating: 0, count: FUSEWireSize.outHeader)
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: UInt32(FUSEWireSize.outHeader).littleEndian, toByteOffset: 0, as: UInt32.self)
            h.storeBytes(of: notifyResend.littleEndian, toByteOffset: 4, as: Int32.self)
        }
        let written = header.withUnsafeBytes { h in retryingEINTR { write(fd, h.baseAddress, h.count) } }
        guard written == header.count else {
            throw FUSEError(.protocol, "FUSE_NOTIFY_RESEND failed (the kernel needs Linux 6.9 for a takeover)",
                            errno: Errno(rawValue: Glibc.errno))
        }
    }

    /// A fresh /dev/fuse descriptor attached to the session's connection.
    private static func cloneDevice(of sessionFD: Int32) throws(FUSEError) -> Int32 {
        let clone = try openDevice()
        let result = ckg_fuse_dev_clone(clone, UInt32(sessionFD))
        guard result == 0 else {
            close(clone)
            throw FUSEError(.device, "FUSE_DEV_IOC_CLONE failed", errno: Errno(rawValue: -result))
        }
        return clone
    }

    /// Unmounts (lazily if busy: the workers then serve until the last user
    /// goes away) and waits for the workers to exit. Idempotent; a no-op
    /// before `start()`.
    public func stop() throws(FUSEError) {
        guard let latch = runningLatch else { return }
        if !latch.isDone {
            do throws(FUSEError) {
                try FUSEMount.unmount(configuration.mountPoint)
            } catch where error.errno == .resourceBusy {
                logger.info("fuse: \(configuration.mountPoint) busy, detaching lazily")
                try FUSEMount.unmount(configuration.mountPoint, lazy: true)
            } catch where error.errno == .invalidArgument {
                // Not mounted any more (someone else unmounted it).
            }
        }
        latch.wait()
        session.notifications.close()
        kept.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
        // Workers also exit when the connection is aborted (fusectl abort):
        // do not leave the resulting ENOTCONN mount behind.
        if FUSEMount.isDeadMount(configuration.mountPoint) {
            try? FUSEMount.unmount(configuration.mountPoint, lazy: true)
        }
        state.withLock { $0 = .stopped }
    }

    /// Blocks until the mount goes away (unmounted by anyone) and every
    /// worker has exited.
    public func wait() {
        runningLatch?.wait()
    }

    /// The workers' exit latch while running.
    var runningLatch: FUSELatch? {
        state.withLock { state in
            guard case .running(let latch) = state else { return nil }
            return latch
        }
    }

    /// `path` with symlinks and relative components resolved, as mountinfo shows it.
    static func resolved(_ path: FilePath) -> FilePath {
        guard let real = path.withPlatformString({ realpath($0, nil) }) else { return path }
        defer { free(real) }
        return FilePath(platformString: real)
    }

    static func openDevice() throws(FUSEError) -> Int32 {
        let fd = retryingEINTR { open("/dev/fuse", O_RDWR | O_CLOEXEC) }
        guard fd >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            throw FUSEError(.device, "cannot open /dev/fuse (load the fuse module; need root)", errno: errno, underlying: errno)
        }
        return fd
    }

    /// Reads and answers the INIT request the kernel queues at mount time.
    private func answerInit(fd: Int32) throws(FUSEError) {
        let request = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEProtocol.requestBufferSize, alignment: 4096)
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer {
            request.deallocate()
            reply.deallocate()
        }
        while session.negotiatedState == nil {
            let count = retryingEINTR { read(fd, request.baseAddress, request.count) }
            guard count > 0 else {
                let errno = Errno(rawValue: Glibc.errno)
                throw FUSEError(.protocol, "reading INIT from /dev/fuse failed", errno: errno, underlying: errno)
            }
            let bytes = UnsafeRawBufferPointer(rebasing: request[0..<count])
            if let length = session.handle(request: bytes, reply: reply) {
                _ = retryingEINTR { write(fd, reply.baseAddress, length) }
            }
            if session.negotiatedState == nil, FUSEInHeader(bytes)?.opcode == FUSEOpcode.initialize.rawValue,
               FUSEInitIn(UnsafeRawBufferPointer(rebasing: bytes[FUSEWireSize.inHeader...]))?.major == FUSEProtocol.major {
                throw FUSEError(.protocol, "kernel FUSE protocol is older than 7.\(FUSEProtocol.minimumMinor)", errno: Errno(rawValue: 71))
            }
        }
    }

    /// A worker: read a request, answer it, until the connection ends.
    static func serve(fd: Int32, session: FUSESession, logger: Logger) {
        let request = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEProtocol.requestBufferSize, alignment: 4096)
        let replyPages = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEProtocol.replyBufferSize + 4096, alignment: 4096)
        // The payload starts on a page boundary, after the out header: copies
        // into a buffer that is not 64-byte aligned run up to 7x slower here
        // (rep movsb), and READ data is copied into and out of it.
        let reply = UnsafeMutableRawBufferPointer(rebasing: replyPages[(4096 - FUSEWireSize.outHeader)...])
        defer {
            request.deallocate()
            replyPages.deallocate()
            close(fd)
        }
        while true {
            let count = read(fd, request.baseAddress, request.count)
            if count < 0 {
                switch Glibc.errno {
                case EINTR, EAGAIN, ENOENT:
                    continue  // ENOENT: the request was interrupted before we got it.
                case ENODEV, ECONNABORTED:
                    return  // Unmounted or aborted.
                default:
                    logger.error("fuse: reading /dev/fuse failed: \(Errno(rawValue: Glibc.errno))")
                    return
                }
            }
            if count == 0 { return }
            let bytes = UnsafeRawBufferPointer(rebasing: request[0..<count])
            guard let length = session.handle(request: bytes, reply: reply) else { continue }
            let written = retryingEINTR { write(fd, reply.baseAddress, length) }
            if written < 0 {
                switch Glibc.errno {
                case ENOENT:
                    continue  // The request was interrupted/aborted; the kernel dropped it.
                case ENODEV, ECONNABORTED:
                    return
                default:
                    logger.warning("fuse: writing a reply failed: \(Errno(rawValue: Glibc.errno))")
                }
            }
        }
    }
}
