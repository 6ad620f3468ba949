#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import Dispatch
import KangarooSystem
import Synchronization
import SystemPackage

/// The one error type of the disk pool.
public struct DiskError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var underlying: (any Error)?
    public init(_ message: String, underlying: (any Error)? = nil) {
        self.message = message
        self.underlying = underlying
    }
    public var description: String { underlying.map { "\(message): \($0)" } ?? message }
}

/// The node's sandbox disks: regions of one preallocated-size sparse node
/// file, each on a loop device, formatted ext4 ahead of time. (On a kernel
/// with device-mapper, the same pool maps onto a thin pool: a region is a
/// thin volume, the punch on release a discard that returns its blocks to
/// the pool.)
public struct DiskConfig: Sendable, Equatable {
    /// The node disk file; created sparse at `nodeSize` and never grown.
    public var nodeFile: String
    public var nodeSize: UInt64
    /// A disk's size when the sandbox asks for none.
    public var defaultSize: UInt64
    /// Formatted disks of `defaultSize` kept ready.
    public var poolSize: Int
    /// Where the pool's state and lock live.
    public var stateDir: String

    public init(nodeFile: String = "/var/lib/kangaroo/disks/node.img", nodeSize: UInt64 = 64 << 30,
                defaultSize: UInt64 = 1 << 30, poolSize: Int = 4, stateDir: String = "/var/lib/kangaroo/disks") {
        self.nodeFile = nodeFile
        self.nodeSize = nodeSize
        self.defaultSize = defaultSize
        self.poolSize = poolSize
        self.stateDir = stateDir
    }
}

/// One disk: a region of the node file.
public struct Disk: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Being attached and formatted outside the lock (a crash here: the
        /// next reconcile detaches and punches it).
        case formatting
        /// Formatted, in the pool.
        case free
        /// A sandbox's.
        case attached
        /// Given back: being detached and punched outside the lock.
        case releasing
    }

    public var offset: UInt64
    public var size: UInt64
    public var loop: Int?
    public var state: State
    public var owner: String?
    /// The process formatting it (reconcile leaves a live one's disk alone).
    public var pid: Int32?
    /// Attached disks: whether it came from the pool (false: made on the
    /// spot), and how long acquiring it took (microseconds).
    public var pooled: Bool?
    public var setupMicros: Int?

    public var device: String? { loop.map { "/dev/loop\($0)" } }

    var json: JSON {
        var m: [(String, JSON)] = [("offset", .uint64(offset)), ("size", .uint64(size)), ("state", .string(state.rawValue))]
        if let loop { m.append(("loop", .int(loop))) }
        if let owner { m.append(("owner", .string(owner))) }
        if let pid { m.append(("pid", .int(pid))) }
        if let pooled { m.append(("pooled", .bool(pooled))) }
        if let setupMicros { m.append(("setupMicros", .int(setupMicros))) }
        return .object(m)
    }

    init(offset: UInt64, size: UInt64, state: State) {
        self.offset = offset
        self.size = size
        self.state = state
        if state == .formatting { pid = getpid() }
    }

    init?(_ j: JSON) {
        guard case let .number(o)? = j["offset"], let offset = UInt64(o), case let .number(s)? = j["size"], let size = UInt64(s),
              let state = j["state"]?.string.flatMap(State.init(rawValue:)) else { return nil }
        self.init(offset: offset, size: size, state: state)
        loop = j["loop"]?.int
        owner = j["owner"]?.string
        pid = j["pid"]?.int.map { Int32($0) }
        pooled = j["pooled"]?.bool
        setupMicros = j["setupMicros"]?.int
    }
}

/// Sendable: its state is the state file, read and written under the
/// directory's lock; the object holds its configuration and the acquires
/// of this process waiting to be booked.
public final class DiskPool: @unchecked Sendable {
    public let config: DiskConfig
    /// Acquires that arrive together are booked in one pass under the lock
    /// (group commit): under a burst on a busy machine, one pass per
    /// acquire made each wait for every pass before it, each slow because
    /// its thread shared the CPUs with the burst (a 50-pod burst: disk
    /// set-up p50 0.4 s, max 3.4 s).
    private let bookings = Mutex(Bookings())
    var statePath: String { config.stateDir + "/disks.json" }
    var lockPath: String { config.stateDir + "/lock" }
    static let alignment: UInt64 = 1 << 20

    public init(config: DiskConfig) throws(DiskError) {
        self.config = config
        guard config.defaultSize >= 16 << 20, config.defaultSize <= config.nodeSize else {
            throw DiskError("disk size \(config.defaultSize) must be at least 16 MiB and at most the node disk's \(config.nodeSize)")
        }
        do { try FileSystem.makeDirectories(config.stateDir, mode: 0o700) } catch {
            throw DiskError("cannot create \(config.stateDir)", underlying: error)
        }
    }

    // MARK: State

    func read() throws(DiskError) -> [Disk] {
        guard FileSystem.exists(statePath) else { return [] }
        do {
            return (try JSON.parse(try FileSystem.readString(statePath))["disks"]?.array ?? []).compactMap(Disk.init)
        } catch {
            throw DiskError("\(statePath) is damaged; move it away to start the disk pool afresh", underlying: error)
        }
    }

    func update<T>(_ body: (inout [Disk]) throws(DiskError) -> T) throws(DiskError) -> T {
        do {
            return try FileSystem.withExclusiveLock(lockPath) { () throws(DiskError) -> T in
                let before = try read()
                var disks = before
                let result = try body(&disks)
                if disks != before {
                    let text = JSON.object([("disks", .array(disks.map(\.json)))]).serialized() + "\n"
                    do { try FileSystem.replace(statePath, text) } catch { throw DiskError("cannot write \(statePath)", underlying: error) }
                }
                return result
            }
        } catch {
            switch error {
            case .lock(let e): throw DiskError("cannot lock \(lockPath)", underlying: e)
            case .body(let e): throw e
            }
        }
    }

    /// The node file, opened; created sparse at `nodeSize` the first time.
    func openNodeFile() throws(DiskError) -> Int32 {
        let fd = open(config.nodeFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DiskError("cannot open the node disk \(config.nodeFile)", underlying: Errno(rawValue: errno)) }
        var st = stat()
        fstat(fd, &st)
        if st.st_size == 0 {
            guard ftruncate(fd, off_t(config.nodeSize)) == 0 else {
                let e = Errno(rawValue: errno)
                close(fd)
                throw DiskError("cannot size the node disk \(config.nodeFile)", underlying: e)
            }
        } else if UInt64(st.st_size) != config.nodeSize {
            close(fd)
            throw DiskError("the node disk \(config.nodeFile) has \(st.st_size) bytes, the configuration says \(config.nodeSize)")
        }
        return fd
    }

    /// First fit over the node file, aligned to 1 MiB.
    static func place(_ size: UInt64, among disks: [Disk], nodeSize: UInt64) -> UInt64? {
        var at: UInt64 = 0
        for d in disks.sorted(by: { $0.offset < $1.offset }) {
            if d.offset >= at + size { return at }
            at = max(at, (d.offset + d.size + alignment - 1) / alignment * alignment)
        }
        return at + size <= nodeSize ? at : nil
    }

    // MARK: Disks

    /// Attaches and formats a disk recorded as formatting; on failure it is
    /// detached, punched and forgotten.
    func make(_ disk: Disk) throws(DiskError) -> Disk {
        var d = disk
        let fd = try openNodeFile()
        defer { close(fd) }
        do {
            d.loop = try LoopDevice.attach(fd: fd, offset: d.offset, length: d.size)
            try Self.format(d.device!)
            return d
        } catch {
            if let loop = d.loop { try? LoopDevice.detach(loop) }
            _ = ckg_punch_hole(fd, Int64(d.offset), Int64(d.size))
            _ = try? update { (disks: inout [Disk]) throws(DiskError) in disks.removeAll { $0.offset == d.offset } }
            throw error as? DiskError ?? DiskError("cannot attach a loop device at offset \(d.offset) of \(config.nodeFile)", underlying: error)
        }
    }

    static func format(_ device: String) throws(DiskError) {
        let candidates: [String] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        let mkfs = candidates.first { access($0, X_OK) == 0 } ?? candidates[0]
        let pid: pid_t
        do {
            pid = try Spawn.start(mkfs, ["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", device])
        } catch { throw DiskError("cannot run \(mkfs)", underlying: error) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else { throw DiskError("\(mkfs) \(device) failed (status \(status))") }
    }

    /// Tops the pool up to `poolSize` formatted disks; returns how many it
    /// made. Stops early, between disks, once `stop` says so.
    @discardableResult
    public func fill(stop: () -> Bool = { false }) throws(DiskError) -> Int {
        for d in try read() where d.state == .releasing && !attachedLoop(d) {
            try finishRelease(d, wait: .zero)
        }
        var made = 0
        while !stop() {
            let next = try update { (disks: inout [Disk]) throws(DiskError) -> Disk? in
                let free = disks.filter { $0.state == .free && $0.size == config.defaultSize }.count
                guard free < config.poolSize,
                      let offset = Self.place(config.defaultSize, among: disks, nodeSize: config.nodeSize) else { return nil }
                let d = Disk(offset: offset, size: config.defaultSize, state: .formatting)
                disks.append(d)
                return d
            }
            guard let next else { return made }
            let formatted = try make(next)
            try update { (disks: inout [Disk]) throws(DiskError) in
                if let i = disks.firstIndex(where: { $0.offset == formatted.offset }) {
                    disks[i] = formatted
                    disks[i].state = .free
                    disks[i].pid = nil
                }
            }
            made += 1
        }
        return made
    }

    /// The owner's disk: from the pool when one of `size` is free, made on
    /// the spot otherwise. A second acquire by the same owner answers the
    /// first's disk.
    public func acquire(owner: String, size: UInt64? = nil) throws(DiskError) -> Disk {
        let size = size ?? config.defaultSize
        guard size >= 16 << 20 else { throw DiskError("a disk of \(size) bytes is too small (at least 16 MiB)") }
        let request = Booking(owner: owner, size: size)
        let leads = bookings.withLock { b in
            b.waiting.append(request)
            if b.leading { return false }
            b.leading = true
            return true
        }
        // Woken with a result, or without one to make the next pass.
        if !leads { request.done.wait() }
        if request.result == nil { bookWaiting() }
        let (disk, fresh) = try request.result!.get()
        guard fresh else { return disk }
        var made = try make(disk)
        made.state = .attached
        made.pid = nil
        made.pooled = false
        made.setupMicros = request.micros()
        try update { (disks: inout [Disk]) throws(DiskError) in
            if let i = disks.firstIndex(where: { $0.offset == made.offset }) { disks[i] = made }
        }
        return made
    }

    /// One pass under the lock that books every waiting acquire (the
    /// caller's among them); the next waiting acquire, if any, makes the
    /// next pass.
    func bookWaiting() {
        let batch = bookings.withLock { b in
            defer { b.waiting = [] }
            return b.waiting
        }
        do {
            try update { (disks: inout [Disk]) throws(DiskError) in
                for request in batch { request.result = Self.book(request, in: &disks, config: config) }
            }
        } catch {
            // The state was not written: the pass booked nothing.
            for request in batch { request.result = .failure(error) }
        }
        let next = bookings.withLock { b -> Booking? in
            if let first = b.waiting.first { return first }
            b.leading = false
            return nil
        }
        for request in batch { request.done.signal() }
        next?.done.signal()
    }

    /// One acquire's booking in the state: the owner's attached disk, a free
    /// one of its size, or a region to make a disk in (fresh).
    static func book(_ request: Booking, in disks: inout [Disk], config: DiskConfig) -> Result<(Disk, Bool), DiskError> {
        if let mine = disks.first(where: { $0.owner == request.owner && $0.state == .attached }) { return .success((mine, false)) }
        if let i = disks.firstIndex(where: { $0.state == .free && $0.size == request.size }) {
            disks[i].state = .attached
            disks[i].owner = request.owner
            disks[i].pooled = true
            disks[i].setupMicros = request.micros()
            return .success((disks[i], false))
        }
        guard let offset = place(request.size, among: disks, nodeSize: config.nodeSize) else {
            let used = disks.reduce(0) { $0 + $1.size }
            return .failure(DiskError("the node disk \(config.nodeFile) has no room for \(request.size) bytes (\(used) of \(config.nodeSize) taken)"))
        }
        var d = Disk(offset: offset, size: request.size, state: .formatting)
        d.owner = request.owner
        disks.append(d)
        return .success((d, true))
    }

    /// Gives the owner's disk back (the caller has unmounted it): detached,
    /// its region punched (the next tenant reads zeros), forgotten. False
    /// when the owner had none.
    @discardableResult
    public func release(owner: String) throws(DiskError) -> Bool {
        let disk = try update { (disks: inout [Disk]) throws(DiskError) -> Disk? in
            guard let i = disks.firstIndex(where: { $0.owner == owner && $0.state == .attached }) else { return nil }
            disks[i].state = .releasing
            return disks[i]
        }
        guard let disk else { return false }
        try finishRelease(disk, wait: .seconds(2))
        return true
    }

    /// Detaches a releasing disk's loop device and, once the kernel has let
    /// it go, punches the region and forgets the disk. A device still held
    /// (its file system mounted somewhere, even lazily detached: the kernel
    /// then only marks it to detach itself at its last close) keeps its
    /// region reserved; `fill` finishes it later. False while it is held.
    @discardableResult
    func finishRelease(_ disk: Disk, wait: Duration) throws(DiskError) -> Bool {
        if disk.loop != nil {
            try detachIfOurs(disk)
            let deadline = ContinuousClock.now + wait
            while attachedLoop(disk) {
                guard ContinuousClock.now < deadline else { return false }
                usleep(20_000)
            }
        }
        try punch(disk)
        try update { (disks: inout [Disk]) throws(DiskError) in disks.removeAll { $0.offset == disk.offset } }
        return true
    }

    /// Detaches the disk's loop device if it still maps the disk's region of
    /// the node file: a number recorded earlier may name another file's
    /// device by now (the kernel reuses numbers), which must be left alone.
    func detachIfOurs(_ disk: Disk) throws(DiskError) {
        guard let loop = disk.loop, attachedLoop(disk) else { return }
        do { try LoopDevice.detach(loop) } catch {
            throw DiskError("cannot detach \(disk.device!) (still mounted?)", underlying: error)
        }
    }

    /// Whether the disk's loop device still maps its region of the node file.
    func attachedLoop(_ disk: Disk) -> Bool {
        guard let loop = disk.loop else { return false }
        return LoopDevice.attached().contains { $0.number == loop && $0.offset == disk.offset && $0.backingFile == nodeFilePath }
    }

    var nodeFilePath: String {
        realpath(config.nodeFile, nil).map { p in defer { free(p) }; return String(cString: p) } ?? config.nodeFile
    }

    func punch(_ disk: Disk) throws(DiskError) {
        let fd = try openNodeFile()
        defer { close(fd) }
        guard ckg_punch_hole(fd, Int64(disk.offset), Int64(disk.size)) == 0 else {
            throw DiskError("cannot discard the region at \(disk.offset) of \(config.nodeFile)", underlying: Errno(rawValue: errno))
        }
    }

    func scrub(_ disk: Disk) throws(DiskError) {
        try detachIfOurs(disk)
        try punch(disk)
    }

    /// Makes the state and the kernel agree (node daemon start): loop
    /// devices over the node file that no disk accounts for are detached;
    /// disks being formatted or released when their process died are
    /// scrubbed and forgotten, free ones without their loop device too;
    /// attached ones without it (after a reboot) are attached again.
    @discardableResult
    public func reconcile() throws(DiskError) -> Int {
        let real = nodeFilePath
        return try update { (disks: inout [Disk]) throws(DiskError) -> Int in
            var fixed = 0
            let loops = LoopDevice.attached().filter { $0.backingFile == real }
            // A disk another live process (or this one) is formatting is its
            // business: its region's device is not a stray.
            func beingMade(_ d: Disk) -> Bool { d.state == .formatting && d.pid.map { kill($0, 0) == 0 } == true }
            for l in loops where !disks.contains(where: { ($0.loop == l.number || beingMade($0)) && $0.offset == l.offset }) {
                try? LoopDevice.detach(l.number)
                fixed += 1
            }
            var kept: [Disk] = []
            for var d in disks {
                let live = loops.contains { $0.number == d.loop && $0.offset == d.offset }
                switch d.state {
                case .formatting where beingMade(d):
                    kept.append(d)
                case .releasing where live:
                    // Detach again (a daemon killed before it did); a device
                    // still held keeps its region until `fill` finishes it.
                    try? detachIfOurs(d)
                    kept.append(d)
                    fixed += 1
                case .formatting, .releasing:
                    try scrub(live ? d : Disk(offset: d.offset, size: d.size, state: d.state))
                    fixed += 1
                case .free where !live:
                    try scrub(Disk(offset: d.offset, size: d.size, state: .free))
                    fixed += 1
                case .attached where !live:
                    let fd = try openNodeFile()
                    defer { close(fd) }
                    do { d.loop = try LoopDevice.attach(fd: fd, offset: d.offset, length: d.size) } catch {
                        throw DiskError("cannot attach the disk of \(d.owner ?? "?") again", underlying: error)
                    }
                    kept.append(d)
                    fixed += 1
                default:
                    kept.append(d)
                }
            }
            disks = kept
            return fixed
        }
    }

    public struct Status: Sendable, Equatable {
        public var disks: [Disk]
        /// Bytes of the node file actually allocated (it is sparse).
        public var allocatedBytes: UInt64
        public var nodeSize: UInt64
    }

    public func status() throws(DiskError) -> Status {
        var st = stat()
        let allocated = stat(config.nodeFile, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
        return Status(disks: try read(), allocatedBytes: allocated, nodeSize: config.nodeSize)
    }

    /// Detaches every disk and removes the node file and the state (for
    /// disks nobody has mounted).
    public func remove() throws(DiskError) {
        try update { (disks: inout [Disk]) throws(DiskError) in
            for d in disks { try? detachIfOurs(d) }
            disks = []
        }
        unlink(config.nodeFile)
        FileSystem.removeTree(config.stateDir)
    }
}

/// The acquires of one process waiting for a pass under the lock, and
/// whether a thread is making passes.
struct Bookings {
    var waiting: [Booking] = []
    var leading = false
}

/// One waiting acquire; `result` is written by the pass that books it,
/// before `done` is signalled.
final class Booking: @unchecked Sendable {
    let owner: String
    let size: UInt64
    let started = ContinuousClock.now
    let done = DispatchSemaphore(value: 0)
    var result: Result<(Disk, Bool), DiskError>?

    init(owner: String, size: UInt64) {
        self.owner = owner
        self.size = size
    }

    /// Microseconds since the acquire began.
    func micros() -> Int {
        let e = ContinuousClock.now - started
        return Int(e.components.seconds) * 1_000_000 + Int(e.components.attoseconds / 1_000_000_000_000)
    }
}
