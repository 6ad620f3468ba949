#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import Logging
import Synchronization
import SystemPackage

/// Serves a `FUSEFileSystem` at a mount point over the raw /dev/fuse
/// protocol. `start()` mounts, answers INIT and starts `threads` workers,
/// each reading its own cloned /dev/fuse descriptor, so a request that
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

        public init(mountPoint: FilePath) { self.mountPoint = mountPoint }
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
        self.session = FUSESession(fileSystem: fileSystem, options: configuration.initialization, logger: logger)
    }

    /// The protocol minor version agreed in INIT (nil before).
    public var negotiatedMinor: UInt32? { session.negotiatedState?.minor }
    /// Request counters since start.
    public var statistics: FUSEStatistics { session.counters.snapshot }
    /// INIT flags both sides agreed on (empty before INIT).
    public var negotiatedFlags: FUSEInitFlags { session.negotiatedState?.flags ?? [] }

    /// Opens /dev/fuse, mounts, answers INIT and starts the workers. On
    /// return the mount serves requests.
    public func start() throws(FUSEError) {
        let latch = FUSELatch(count: max(1, configuration.threads))
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
        let sessionFD = try Self.openDevice()
        var descriptors = [sessionFD]
        var mounted = false
        do throws(FUSEError) {
            try FUSEMount.mount(device: FileDescriptor(rawValue: sessionFD), at: path, options: configuration.mount)
            mounted = true
            try answerInit(fd: sessionFD)
            for _ in 1..<max(1, configuration.threads) {
                let clone = try Self.openDevice()
                descriptors.append(clone)
                let result = ckg_fuse_dev_clone(clone, UInt32(sessionFD))
                if result != 0 {
                    throw FUSEError(.device, "FUSE_DEV_IOC_CLONE failed", errno: Errno(rawValue: -result))
                }
            }
        } catch {
            if mounted { try? FUSEMount.unmount(path, lazy: true) }
            for fd in descriptors { close(fd) }
            throw error
        }
        for (index, fd) in descriptors.enumerated() {
            let session = self.session
            let logger = self.logger
            do throws(FUSEError) {
                try FUSEThread.spawnDetached {
                    Self.serve(fd: fd, session: session, logger: logger)
                    latch.countDown()
                }
            } catch {
                // Already-running workers exit once the mount goes away.
                try? FUSEMount.unmount(path, lazy: true)
                for fd in descriptors[index...] { close(fd) }
                for _ in index..<descriptors.count { latch.countDown() }
                throw error
            }
        }
        if let kib = configuration.readaheadKiB, let info = FUSEMount.mountInfo(for: Self.resolved(path)) {
            if !FUSEMount.setReadahead(kibibytes: kib, major: info.major, minor: info.minor) {
                logger.debug("fuse: could not set read_ahead_kb for \(info.major):\(info.minor)")
            }
        }
        logger.info("fuse: serving \(path) with \(descriptors.count) workers, protocol 7.\(negotiatedMinor ?? 0)")
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
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEProtocol.replyBufferSize, alignment: 4096)
        defer {
            request.deallocate()
            reply.deallocate()
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
