import Logging
import Synchronization
import SystemPackage

/// Negotiation parameters the server offers in the INIT reply.
public struct FUSEInitOptions: Sendable, Hashable {
    /// Upper bound for the kernel's readahead (it cannot exceed what the
    /// kernel offers; raise the bdi's read_ahead_kb for more).
    public var maxReadahead: UInt32 = UInt32(FUSEProtocol.maxTransfer)
    /// Max background requests (readahead, async reads) in flight.
    public var maxBackground: UInt16 = 64
    public var congestionThreshold: UInt16 = 48
    public var flags: FUSEInitFlags = .wanted
    public init() {}
}

/// Decodes requests, calls the filesystem and encodes replies. Shared by all
/// workers; per-connection state (the INIT outcome) sits behind a Mutex.
final class FUSESession: Sendable {
    struct Negotiated: Sendable, Equatable {
        var minor: UInt32
        var flags: FUSEInitFlags
    }

    let fileSystem: any FUSEFileSystem
    let options: FUSEInitOptions
    let logger: Logger
    let counters = FUSECounters()
    private let negotiated = Mutex<Negotiated?>(nil)
    private let destroyed = Mutex(false)
    /// The /dev/fuse descriptor for notifications (open between start and stop).
    let notifications = FUSENotifyChannel()

    init(fileSystem: any FUSEFileSystem, options: FUSEInitOptions, logger: Logger) {
        self.fileSystem = fileSystem
        self.options = options
        self.logger = logger
    }

    var negotiatedState: Negotiated? { negotiated.withLock { $0 } }
    /// Serves a connection another server initialised (a takeover).
    func adopt(minor: UInt32, flags: FUSEInitFlags) { negotiated.withLock { $0 = Negotiated(minor: minor, flags: flags) } }
    var isDestroyed: Bool { destroyed.withLock { $0 } }
    func destroyedNow() { destroyed.withLock { $0 = true } }

    var pageCache: FUSEPageCache? {
        notifications.isOpen ? FUSEPageCache(channel: notifications) : nil
    }

    /// Handles one request (`request` holds exactly what read(2) returned)
    /// and writes the reply into `reply`. Returns the reply length, or nil
    /// when the request takes no reply (FORGET, BATCH_FORGET, INTERRUPT).
    func handle(request: UnsafeRawBufferPointer, reply: UnsafeMutableRawBufferPointer) -> Int? {
        guard let header = FUSEInHeader(request), Int(header.length) <= request.count,
              Int(header.length) >= FUSEWireSize.inHeader
        else {
            logger.warning("fuse: dropped malformed request of \(request.count) bytes")
            return nil
        }
        let end = Int(header.length) - Int(header.totalExtensionLength) * 8
        let payload = UnsafeRawBufferPointer(rebasing: request[FUSEWireSize.inHeader..<max(FUSEWireSize.inHeader, end)])
        counters.begin()
        let result = dispatch(header: header, payload: payload, reply: reply)
        counters.end()
        switch result {
        case .none:
            return nil
        case .ok(let length):
            if header.opcode == FUSEOpcode.read.rawValue {
                counters.reads.add(1, ordering: .relaxed)
                counters.bytesRead.add(length, ordering: .relaxed)
            }
            FUSEOutHeader.encode(into: reply, length: FUSEWireSize.outHeader + length, error: 0, unique: header.unique)
            return FUSEWireSize.outHeader + length
        case .error(let errno):
            // ENOSYS is how a server declines optional requests, not a failure.
            if errno != .noFunction { counters.errors.add(1, ordering: .relaxed) }
            FUSEOutHeader.encode(into: reply, length: FUSEWireSize.outHeader, error: -errno.rawValue, unique: header.unique)
            return FUSEWireSize.outHeader
        }
    }

    enum Outcome: Equatable {
        /// Success with this many payload bytes written after the out header.
        case ok(Int)
        case error(Errno)
        case none
    }

    private func dispatch(header: FUSEInHeader, payload: UnsafeRawBufferPointer, reply: UnsafeMutableRawBufferPointer) -> Outcome {
        let body = UnsafeMutableRawBufferPointer(rebasing: reply[FUSEWireSize.outHeader...])
        guard let opcode = FUSEOpcode(rawValue: header.opcode) else {
            return .error(.noFunction)
        }
        if opcode == .initialize {
            return initialize(payload: payload, body: body)
        }
        guard negotiated.withLock({ $0 != nil }) else {
            logger.warning("fuse: opcode \(opcode) before INIT")
            return opcode.expectsNoReply ? .none : .error(.ioError)
        }
        if opcode.isWrite { return .error(.readOnlyFileSystem) }
        do throws(FUSEError) {
            return try perform(opcode, header: header, payload: payload, body: body)
        } catch {
            return .error(error.errno)
        }
    }

    private func initialize(payload: UnsafeRawBufferPointer, body: UnsafeMutableRawBufferPointer) -> Outcome {
        guard let input = FUSEInitIn(payload) else { return .error(.invalidArgument) }
        if input.major > FUSEProtocol.major {
            // Ask the kernel to retry with our major version.
            let out = FUSEInitOut(major: FUSEProtocol.major, minor: FUSEProtocol.minor, maxReadahead: 0, flags: [],
                                  maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGranularity: 0, maxPages: 0)
            out.encode(into: body)
            return .ok(8)
        }
        guard input.major == FUSEProtocol.major, input.minor >= FUSEProtocol.minimumMinor else {
            logger.error("fuse: kernel protocol \(input.major).\(input.minor) is too old (need 7.\(FUSEProtocol.minimumMinor))")
            return .error(Errno(rawValue: 71))  // EPROTO
        }
        let minor = min(input.minor, FUSEProtocol.minor)
        let flags = options.flags.intersection(input.flags)
        let out = FUSEInitOut(
            major: FUSEProtocol.major, minor: minor,
            maxReadahead: min(input.maxReadahead, options.maxReadahead),
            flags: flags, maxBackground: options.maxBackground,
            congestionThreshold: options.congestionThreshold,
            maxWrite: UInt32(FUSEProtocol.maxTransfer), timeGranularity: 1,
            maxPages: FUSEProtocol.maxPages)
        out.encode(into: body)
        negotiated.withLock { $0 = Negotiated(minor: minor, flags: flags) }
        logger.debug("fuse: INIT kernel 7.\(input.minor) -> 7.\(minor), flags 0x\(String(flags.rawValue, radix: 16))")
        return .ok(FUSEWireSize.initOut)
    }
}
