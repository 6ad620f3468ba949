#if canImport(Glibc)
import Glibc
#endif
import KangarooSystem
import SystemPackage

/// A host port the node forwards to a pod (CNI `portMappings`).
public struct PortMapping: Sendable, Hashable {
    public var hostPort: UInt16
    public var containerPort: UInt16
    /// "tcp" or "udp".
    public var proto: String

    public init(hostPort: UInt16, containerPort: UInt16, proto: String) {
        self.hostPort = hostPort
        self.containerPort = containerPort
        self.proto = proto
    }

    var json: JSON { .object([("hostPort", .int(hostPort)), ("containerPort", .int(containerPort)), ("protocol", .string(proto))]) }
}

/// One address of the subnet with its veth pair.
public struct Slot: Sendable, Equatable {
    public enum State: String, Sendable {
        /// In the pool: the pair is on the bridge, its peer the configured
        /// interface of a prepared network namespace pinned at `pin`.
        case free
        /// Handed to a pod: the peer is the pod's interface.
        case attached
        /// Given back by DEL; its pair is being deleted outside the lock (the
        /// kernel takes 20-40 ms, which ADDs need not wait for). A crash
        /// here: the next reconcile finishes it.
        case releasing
    }

    public var number: UInt32
    public var state: State
    public var containerID: String?
    public var ifname: String?
    public var netns: String?
    public var ports: [PortMapping] = []
    public var podMAC: String?
    /// The prepared namespace's bind mount (free slots).
    public var pin: String?
    /// Attached slots: whether the pod got a prepared network from the pool,
    /// and how long its ADD took (lock wait included), in microseconds.
    public var pooled: Bool?
    public var setupMicros: Int?
    /// The process attaching it, while it does (reconcile leaves the slot
    /// of a live one alone).
    public var pid: Int32?

    var json: JSON {
        var m: [(String, JSON)] = [("slot", .int(number)), ("state", .string(state.rawValue))]
        if let containerID { m.append(("containerID", .string(containerID))) }
        if let ifname { m.append(("ifname", .string(ifname))) }
        if let netns { m.append(("netns", .string(netns))) }
        if !ports.isEmpty { m.append(("ports", .array(ports.map(\.json)))) }
        if let podMAC { m.append(("podMAC", .string(podMAC))) }
        if let pin { m.append(("pin", .string(pin))) }
        if let pooled { m.append(("pooled", .bool(pooled))) }
        if let setupMicros { m.append(("setupMicros", .int(setupMicros))) }
        if let pid { m.append(("pid", .int(pid))) }
        return .object(m)
    }

    init(number: UInt32, state: State) {
        self.number = number
        self.state = state
    }

    init?(_ j: JSON) {
        guard let n = j["slot"]?.int, n > 0, let s = j["state"]?.string.flatMap(State.init(rawValue:)) else { return nil }
        number = UInt32(n)
        state = s
        containerID = j["containerID"]?.string
        ifname = j["ifname"]?.string
        netns = j["netns"]?.string
        podMAC = j["podMAC"]?.string
        pin = j["pin"]?.string
        pooled = j["pooled"]?.bool
        setupMicros = j["setupMicros"]?.int
        pid = j["pid"]?.int.map { Int32($0) }
        ports = (j["ports"]?.array ?? []).compactMap { p in
            guard let h = p["hostPort"]?.int, let c = p["containerPort"]?.int, let proto = p["protocol"]?.string,
                  let hp = UInt16(exactly: h), let cp = UInt16(exactly: c) else { return nil }
            return PortMapping(hostPort: hp, containerPort: cp, proto: proto)
        }
    }
}

/// The slots of one network, in `DIR/state.json`, changed only under the
/// exclusive lock of `DIR/lock` and replaced atomically (write, rename): a
/// process killed at any point leaves the previous or the next state.
public struct PoolState: Sendable, Equatable {
    public var slots: [UInt32: Slot] = [:]
    /// Where the search for an unused address starts (round robin, so that a
    /// released address is not handed out again at once).
    public var cursor: UInt32 = 0

    public func slot(container: String, ifname: String) -> Slot? {
        slots.values.first { $0.state == .attached && $0.containerID == container && $0.ifname == ifname }
    }

    public var free: [Slot] { slots.values.filter { $0.state == .free }.sorted { $0.number < $1.number } }
    public var attached: [Slot] { slots.values.filter { $0.state == .attached }.sorted { $0.number < $1.number } }

    /// An address no slot holds, after the cursor; nil when the subnet is full.
    mutating func unusedNumber(in range: ClosedRange<UInt32>) -> UInt32? {
        let count = range.count
        guard slots.count < count else { return nil }
        var n = cursor
        for _ in 0..<count {
            n = n >= range.upperBound || n < range.lowerBound ? range.lowerBound : n + 1
            if slots[n] == nil { cursor = n; return n }
        }
        return nil
    }

    var json: JSON {
        .object([("cursor", .int(cursor)), ("slots", .array(slots.values.sorted { $0.number < $1.number }.map(\.json)))])
    }

    init() {}

    init(_ j: JSON) {
        cursor = UInt32(j["cursor"]?.int ?? 0)
        for s in (j["slots"]?.array ?? []).compactMap(Slot.init) { slots[s.number] = s }
    }
}

/// The lock and the file of a network's `PoolState`.
public struct PoolStore: Sendable {
    public let directory: String
    var path: String { directory + "/state.json" }

    public init(directory: String) throws(NetworkError) {
        self.directory = directory
        do { try FileSystem.makeDirectories(directory, mode: 0o700) } catch {
            throw NetworkError(.system, "cannot create the network state directory \(directory)", underlying: error)
        }
    }

    /// Runs `body` on the state under the lock; what it leaves is written
    /// back when it changed.
    public func update<T>(_ body: (inout PoolState) throws(NetworkError) -> T) throws(NetworkError) -> T {
        do {
            return try FileSystem.withExclusiveLock(directory + "/lock") { () throws(NetworkError) -> T in
                let before = try read()
                var state = before
                let result = try body(&state)
                if state != before { try write(state) }
                return result
            }
        } catch {
            switch error {
            case .lock(let e): throw NetworkError(.system, "cannot lock \(directory)/lock", underlying: e)
            case .body(let e): throw e
            }
        }
    }

    /// The state as it is now (no lock: a snapshot for status).
    public func read() throws(NetworkError) -> PoolState {
        guard FileSystem.exists(path) else { return PoolState() }
        do {
            return PoolState(try JSON.parse(try FileSystem.readString(path)))
        } catch let e as Errno {
            throw NetworkError(.system, "cannot read \(path)", underlying: e)
        } catch {
            throw NetworkError(.system, "\(path) is damaged (not JSON); move it away to start the network's state afresh", underlying: error)
        }
    }

    func write(_ state: PoolState) throws(NetworkError) {
        do { try FileSystem.replace(path, state.json.serialized() + "\n") } catch {
            throw NetworkError(.system, "cannot write \(path)", underlying: error)
        }
    }
}
