#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import KangarooSystem
import SystemPackage

/// What a pod got: its interface, address and routes (the CNI result).
public struct PodAttachment: Sendable, Equatable {
    public var containerID: String
    public var ifname: String
    public var netns: String
    public var slot: UInt32
    public var address: IPv4Prefix
    public var gateway: IPv4
    public var bridge: String
    public var bridgeMAC: String
    public var hostInterface: String
    public var hostMAC: String
    public var podMAC: String
    public var ports: [PortMapping]
    /// Whether the interface came from the pool (false: built on the spot).
    public var fromPool: Bool
    /// How long the ADD took, lock wait included (microseconds).
    public var setupMicros: Int?
}

/// The node's pod network: one bridge with the subnet's gateway address,
/// node-wide NAT and isolation rules in one nftables table (installed once,
/// never per pod), and a pool of veth pairs already on the bridge with
/// their addresses reserved. A pod's ADD takes a pair from the pool, moves
/// its peer into the pod's namespace and configures it there; DEL destroys
/// the pair (the filler makes a fresh one). Every change of the slots
/// happens under the lock of the network's state directory, so the CNI
/// plugin (one process per call) and the node daemon's filler can run at
/// once; the kernel is changed first and the state written last, and
/// `reconcile` removes what a killed process left between the two.
///
/// Sendable for handing to a worker thread: its state is on disk under the
/// lock, and its one netlink socket must be used by one thread at a time
/// (the callers do so).
public final class PodNetwork: @unchecked Sendable {
    public let config: NetworkConfig
    let store: PoolStore
    let netlink: Netlink

    public init(config: NetworkConfig) throws(NetworkError) {
        self.config = config
        store = try PoolStore(directory: config.directory)
        netlink = try Netlink()
    }

    // MARK: Node set-up

    /// The bridge, its address, forwarding and the nftables table: checked
    /// (one netlink lookup and a marker file) and made only when missing,
    /// unless `force`.
    public func ensureNode(force: Bool = false) throws(NetworkError) {
        if !force, let bridge = try netlink.link(named: config.bridge), bridge.isUp,
           (try? FileSystem.readString(markerPath)) == marker(bridgeIndex: bridge.index) {
            return
        }
        try store.update { (state: inout PoolState) throws(NetworkError) in
            try setUpNode(state)
        }
    }

    var markerPath: String { config.directory + "/node" }

    /// What the marker holds once the node is set up: the boot and the
    /// bridge it was set up for (a reboot or a recreated bridge redoes it).
    func marker(bridgeIndex: Int32) -> String {
        let boot = (try? FileSystem.readString("/proc/sys/kernel/random/boot_id")) ?? ""
        return "\(boot.filter { !$0.isWhitespace }) \(config.bridge) \(bridgeIndex) \(config.subnet)\n"
    }

    func setUpNode(_ state: PoolState) throws(NetworkError) {
        let bridge = try bridgeLink()
        let gatewayPrefix = IPv4Prefix(config.gateway, config.subnet.length)
        if !(try netlink.addresses()).contains(where: { $0.index == bridge.index && $0.prefix == gatewayPrefix }) {
            do { try netlink.addAddress(gatewayPrefix, index: bridge.index) } catch .fileExists {} catch {
                throw NetworkError(.system, "cannot give the bridge \(config.bridge) the address \(gatewayPrefix)", underlying: error)
            }
        }
        if !bridge.isUp {
            do { try netlink.setUp(index: bridge.index) } catch {
                throw NetworkError(.system, "cannot set the bridge \(config.bridge) up", underlying: error)
            }
        }
        // Forwarding for the pods' egress; route_localnet so that a hostPort
        // reached at 127.0.0.1 on the node can be forwarded to a pod.
        try sysctl("net/ipv4/ip_forward", "1")
        try sysctl("net/ipv4/conf/\(config.bridge)/route_localnet", "1")
        try Nft.run(rules(state), in: config.directory)
        do { try FileSystem.replace(markerPath, marker(bridgeIndex: bridge.index)) } catch {
            throw NetworkError(.system, "cannot write \(markerPath)", underlying: error)
        }
    }

    func bridgeLink() throws(NetworkError) -> Netlink.Link {
        if let b = try netlink.link(named: config.bridge) { return b }
        do { try netlink.addBridge(config.bridge, mtu: config.mtu) } catch .fileExists {} catch {
            throw NetworkError(.system, "cannot create the bridge \(config.bridge)", underlying: error)
        }
        guard let b = try netlink.link(named: config.bridge) else {
            throw NetworkError(.system, "the bridge \(config.bridge) vanished right after it was created")
        }
        return b
    }

    func sysctl(_ key: String, _ value: String) throws(NetworkError) {
        let path = "/proc/sys/" + key
        if let current = try? FileSystem.readString(path), current.filter({ !$0.isWhitespace }) == value { return }
        do { try FileSystem.write(path, value + "\n") } catch {
            throw NetworkError(.system, "cannot set \(key.replacingSlashes) to \(value)", underlying: error)
        }
    }

    /// The whole nftables table of the network, replaced in one transaction
    /// (`nft -f` is atomic): egress NAT, isolation of the pods from other
    /// interfaces, and the host-port map with the elements of `state`.
    func rules(_ state: PoolState) -> String {
        let t = config.table, br = config.bridge, net = "\(config.subnet.network)/\(config.subnet.length)"
        var text = """
        table ip \(t) {}
        delete table ip \(t)
        table ip \(t) {
          map hostports {
            type inet_proto . inet_service : ipv4_addr . inet_service
          }
          chain prerouting {
            type nat hook prerouting priority dstnat; policy accept;
            fib daddr type local dnat ip to meta l4proto . th dport map @hostports
          }
          chain output {
            type nat hook output priority -100; policy accept;
            fib daddr type local dnat ip to meta l4proto . th dport map @hostports
          }
          chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr \(net) ip daddr != \(net) masquerade
            ip saddr 127.0.0.0/8 ip daddr \(net) ct status dnat masquerade
          }
          chain forward {
            type filter hook forward priority filter; policy accept;
            iifname "\(br)" accept
            oifname "\(br)" ct state established,related accept
            oifname "\(br)" ct status dnat accept
            oifname "\(br)" drop
          }
        }

        """
        text += portElements(state)
        return text
    }

    func portElements(_ state: PoolState) -> String {
        let elements = state.attached.flatMap { slot in
            slot.ports.map { "\($0.proto) . \($0.hostPort) : \(config.subnet.host(slot.number)) . \($0.containerPort)" }
        }
        guard !elements.isEmpty else { return "" }
        return "add element ip \(config.table) hostports { \(elements.joined(separator: ", ")) }\n"
    }

    /// Rewrites the host-port map from `state` (one transaction).
    func syncPorts(_ state: PoolState) throws(NetworkError) {
        try Nft.run("flush map ip \(config.table) hostports\n" + portElements(state), in: config.directory)
    }

    // MARK: Pool

    /// What `reconcile` found and fixed.
    public struct Repair: Sendable, Equatable {
        /// Pool slots dropped: their pair or their namespace was gone.
        public var droppedSlots = 0
        /// Attachments whose host interface is gone (the pod's namespace was
        /// destroyed, which destroys the pair).
        public var releasedAttachments = 0
        /// Interfaces with the network's prefix, and prepared namespaces,
        /// that no slot accounts for (a process killed while making them).
        public var deletedLinks = 0
        public init() {}
    }

    var pinDirectory: String { config.directory + "/ns" }
    func pinPath(_ number: UInt32) -> String { pinDirectory + "/" + String(number) }

    /// Makes the state and the kernel agree: run by the node daemon at start
    /// and now and then.
    @discardableResult
    public func reconcile() throws(NetworkError) -> Repair {
        try store.update { (state: inout PoolState) throws(NetworkError) -> Repair in
            var repair = Repair()
            let links = try netlink.links()
            let names = Set(links.map(\.name))
            let portsBefore = portElements(state)
            for slot in state.slots.values.sorted(by: { $0.number < $1.number }) {
                let host = config.hostName(slot.number)
                // Being attached by a live plugin: its pair may not exist yet.
                if let pid = slot.pid, pid != getpid(), kill(pid, 0) == 0 || errno == EPERM { continue }
                if slot.pid != nil {
                    // Its plugin died half way: the pod never got it.
                    try deleteLink(host)
                    if let pin = slot.pin { Self.unpin(pin) }
                    state.slots[slot.number] = nil
                    repair.releasedAttachments += 1
                    continue
                }
                switch slot.state {
                case .free where !names.contains(host) || slot.pin.map({ !Self.isNamespace($0) }) ?? true:
                    try deleteLink(host)
                    if let pin = slot.pin { Self.unpin(pin) }
                    state.slots[slot.number] = nil
                    repair.droppedSlots += 1
                case .releasing:
                    try deleteLink(host)
                    state.slots[slot.number] = nil
                    repair.releasedAttachments += 1
                case .attached where !names.contains(host):
                    state.slots[slot.number] = nil
                    repair.releasedAttachments += 1
                default:
                    break
                }
            }
            for link in links {
                guard let n = slotNumber(of: link.name), state.slots[n] == nil else { continue }
                try deleteLink(link.name)
                repair.deletedLinks += 1
            }
            let pinned = Set(state.slots.values.compactMap(\.pin))
            for name in (try? FileSystem.list(pinDirectory)) ?? [] where !pinned.contains(pinDirectory + "/" + name) {
                Self.unpin(pinDirectory + "/" + name)
                repair.deletedLinks += 1
            }
            if portElements(state) != portsBefore, (try? netlink.link(named: config.bridge)) != nil { try syncPorts(state) }
            return repair
        }
    }

    /// The slot number in a name of this network's host interfaces
    /// (PREFIX N, or PREFIX N p of older pools), or nil.
    func slotNumber(of name: String) -> UInt32? {
        guard name.hasPrefix(config.ifPrefix) else { return nil }
        var rest = name.dropFirst(config.ifPrefix.count)
        if rest.hasSuffix("p") { rest = rest.dropLast() }
        guard !rest.isEmpty, rest.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt32(rest),
              config.slots.contains(n) else { return nil }
        return n
    }

    func deleteLink(_ name: String) throws(NetworkError) {
        do { try netlink.deleteLink(named: name) } catch {
            throw NetworkError(.system, "cannot delete the interface \(name)", underlying: error)
        }
    }

    /// Tops the pool up to `poolSize` free slots, a few under each hold of
    /// the lock so that pods' ADDs wait little; returns how many it made.
    /// A free slot is a whole pod network made ahead: a network namespace
    /// (pinned by a bind mount) with lo up and `podInterface` configured
    /// (address, default route), its veth peer on the bridge.
    @discardableResult
    public func fill(batch: Int = 4, stop: () -> Bool = { false }) throws(NetworkError) -> Int {
        try ensureNode()
        do { try FileSystem.makeDirectories(pinDirectory, mode: 0o700) } catch {
            throw NetworkError(.system, "cannot create \(pinDirectory)", underlying: error)
        }
        var made = 0
        while !stop() {
            let n = try store.update { (state: inout PoolState) throws(NetworkError) -> Int in
                let missing = min(batch, config.poolSize - state.free.count)
                guard missing > 0 else { return 0 }
                let bridge = try bridgeLink()
                var n = 0
                for _ in 0..<missing {
                    guard let number = state.unusedNumber(in: config.slots) else { break }
                    state.slots[number] = try prepare(number, bridge: bridge.index)
                    n += 1
                }
                return n
            }
            made += n
            if n == 0 { return made }
        }
        return made
    }

    /// The interface name of the prepared namespaces (CRI asks for eth0).
    public static let podInterface = "eth0"

    func prepare(_ number: UInt32, bridge: Int32) throws(NetworkError) -> Slot {
        let pin = pinPath(number)
        let fd = try Self.pinNewNamespace(pin)
        defer { close(fd) }
        do {
            try makePair(number, peer: Self.podInterface, bridge: bridge, peerNetnsFD: fd)
            var slot = Slot(number: number, state: .free)
            slot.podMAC = try configurePod(number, netnsFD: fd, netns: pin, ifname: Self.podInterface, loopback: true)
            slot.pin = pin
            return slot
        } catch {
            _ = try? netlink.deleteLink(named: config.hostName(number))
            Self.unpin(pin)
            throw error
        }
    }

    func makePair(_ number: UInt32, peer: String, bridge: Int32, peerNetnsFD: Int32) throws(NetworkError) {
        let host = config.hostName(number)
        do {
            try netlink.addVeth(host: host, peer: peer, master: bridge, mtu: config.mtu, peerNetnsFD: peerNetnsFD)
        } catch .fileExists {
            // The host name left by a process killed before it recorded the
            // slot (a peer name taken in the namespace: the caller checked).
            try deleteLink(host)
            do { try netlink.addVeth(host: host, peer: peer, master: bridge, mtu: config.mtu, peerNetnsFD: peerNetnsFD) } catch {
                throw NetworkError(.system, "cannot create the veth pair \(host)/\(peer)", underlying: error)
            }
        } catch {
            throw NetworkError(.system, "cannot create the veth pair \(host)/\(peer) on \(config.bridge)", underlying: error)
        }
    }

    /// A new network namespace bind-mounted on `path` (the calling thread
    /// enters it only to pin it); returns a descriptor of it.
    static func pinNewNamespace(_ path: String) throws(NetworkError) -> Int32 {
        unpin(path)
        let file = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard file >= 0 else { throw NetworkError(.system, "cannot create \(path)", underlying: Errno(rawValue: errno)) }
        close(file)
        let own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard own >= 0 else { throw NetworkError(.system, "cannot open this thread's network namespace", underlying: Errno(rawValue: errno)) }
        defer { close(own) }
        guard kr_unshare(0x4000_0000 /* CLONE_NEWNET */) == 0 else {
            let e = Errno(rawValue: errno)
            unlink(path)
            throw NetworkError(.system, "cannot create a network namespace", underlying: e)
        }
        let mounted = mount("/proc/thread-self/ns/net", path, nil, 4096 /* MS_BIND */, nil) == 0 ? 0 : errno
        if kr_setns(own, 0x4000_0000) != 0 {
            fatalError("cannot return to this thread's network namespace: errno \(errno)")
        }
        guard mounted == 0 else {
            unlink(path)
            throw NetworkError(.system, "cannot pin a network namespace on \(path)", underlying: Errno(rawValue: mounted))
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno(rawValue: errno)
            unpin(path)
            throw NetworkError(.system, "cannot open the namespace pinned on \(path)", underlying: e)
        }
        return fd
    }

    static func unpin(_ path: String) {
        while umount2(path, 2 /* MNT_DETACH */) == 0 {}
        unlink(path)
    }

    /// Whether `path` is a network namespace (nsfs) rather than a plain file.
    static func isNamespace(_ path: String) -> Bool {
        kr_fs_type(path) == 0x6e73_6673 /* NSFS_MAGIC */
    }

    // MARK: Pods

    /// Gives the pod in `netns` the interface `ifname`. From the pool when it
    /// can: the runtime's namespace (fresh: only lo) is replaced on its path
    /// by a prepared one, so that the pod's start creates, moves and
    /// configures nothing. Otherwise (the pool is empty, another interface
    /// name, a namespace in use or given as /proc/PID/ns/net, or
    /// `preparedNamespaces` off) a pair is made on the spot with its peer
    /// directly in the pod's namespace. A second ADD of the same container
    /// and interface answers the first one's attachment.
    /// With `loopback`, lo is set up too (a namespace no CNI loopback plugin
    /// sees: `kangaroo run`'s).
    public func attach(containerID: String, ifname: String, netns: String, ports: [PortMapping] = [],
                       loopback: Bool = false) throws(NetworkError) -> PodAttachment {
        try attach(containerID: containerID, ifname: ifname, netns: netns, ports: ports, loopback: loopback, prepared: true, started: .now)
    }

    func attach(containerID: String, ifname: String, netns: String, ports: [PortMapping], loopback: Bool,
                prepared: Bool, started: ContinuousClock.Instant) throws(NetworkError) -> PodAttachment {
        try ensureNode()
        let target = open(netns, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else {
            throw NetworkError(.invalidEnvironment, "cannot open the network namespace \(netns)", underlying: Errno(rawValue: errno))
        }
        defer { close(target) }
        let pod = try Netlink(netnsFD: target, name: netns)
        // A second ADD of the same container and interface: the first's.
        if let slot = try store.read().slot(container: containerID, ifname: ifname), slot.pid == nil { return try attachment(slot) }
        // Checked before the lock: what the runtime handed over.
        let podLinks = try pod.links()
        if podLinks.contains(where: { $0.name == ifname }) {
            throw NetworkError(.invalidConfig, "the network namespace \(netns) already has an interface \(ifname)")
        }
        let substitutable = prepared && config.preparedNamespaces && ifname == Self.podInterface && !netns.hasPrefix("/proc/")
            && podLinks.allSatisfy({ $0.name == "lo" }) && Self.isNamespace(netns)
        // The lock is held only to book a slot and, at the end, to record
        // it: the kernel work in between (the namespace put in place, or a
        // pair built on the spot) runs beside other pods' ADDs. A booked
        // slot names this process, so that reconcile leaves it alone.
        let booked = try store.update { (state: inout PoolState) throws(NetworkError) -> (Slot, done: Bool) in
            if let slot = state.slot(container: containerID, ifname: ifname) { return (slot, true) }
            for p in ports {
                if let owner = state.attached.first(where: { $0.ports.contains { $0.hostPort == p.hostPort && $0.proto == p.proto } }) {
                    throw NetworkError(.invalidConfig, "host port \(p.hostPort)/\(p.proto) is taken by container \(owner.containerID ?? "?")")
                }
            }
            var slot: Slot
            if substitutable, let free = state.free.first {
                slot = free
                slot.pooled = true
            } else {
                guard let number = state.unusedNumber(in: config.slots) else {
                    throw NetworkError(.exhausted, "the subnet \(config.subnet) of network \(config.name) has no free address (\(state.attached.count) pods attached)")
                }
                slot = Slot(number: number, state: .attached)
                slot.pooled = false
            }
            slot.state = .attached
            slot.containerID = containerID
            slot.ifname = ifname
            slot.netns = netns
            slot.ports = ports
            slot.pid = getpid()
            state.slots[slot.number] = slot
            return (slot, false)
        }
        var slot = booked.0
        if booked.done { return try attachment(slot) }
        func drop(_ error: NetworkError) -> NetworkError {
            _ = try? netlink.deleteLink(named: config.hostName(slot.number))
            if let pin = slot.pin { Self.unpin(pin) }
            _ = try? store.update { (state: inout PoolState) throws(NetworkError) in
                if state.slots[slot.number]?.pid == slot.pid { state.slots[slot.number] = nil }
            }
            return error
        }
        if let pin = slot.pin {
            do throws(NetworkError) { try substitute(pin, for: netns) } catch {
                // That slot goes; the pod gets a pair on the spot.
                _ = drop(error)
                return try attach(containerID: containerID, ifname: ifname, netns: netns, ports: ports, loopback: loopback,
                                  prepared: false, started: started)
            }
            Self.unpin(pin)
            slot.pin = nil
        } else {
            do throws(NetworkError) {
                try makePair(slot.number, peer: ifname, bridge: try bridgeLink().index, peerNetnsFD: target)
                slot.podMAC = try configurePod(slot.number, netnsFD: target, netns: netns, ifname: ifname, loopback: loopback)
            } catch {
                throw drop(error)
            }
        }
        slot.pid = nil
        let elapsed = ContinuousClock.now - started
        slot.setupMicros = Int(elapsed.components.seconds) * 1_000_000 + Int(elapsed.components.attoseconds / 1_000_000_000_000)
        let recorded = slot
        do throws(NetworkError) {
            try store.update { (state: inout PoolState) throws(NetworkError) in
                var next = state
                next.slots[recorded.number] = recorded
                if !ports.isEmpty { try syncPorts(next) }
                state = next
            }
        } catch {
            throw drop(error)
        }
        return try attachment(slot)
    }

    /// Puts the prepared namespace pinned at `pin` on the runtime's path
    /// `netns` in place of the runtime's fresh one (which the kernel then
    /// frees, off this path): mounted beneath the runtime's mount, which is
    /// then unmounted, so that a plugin the runtime runs at the same time
    /// (containerd's go-cni attaches loopback in parallel) never finds the
    /// path without a namespace.
    func substitute(_ pin: String, for netns: String) throws(NetworkError) {
        let rc = kr_mount_beneath(pin, netns)
        guard rc == 0 else {
            throw NetworkError(.system, "cannot mount the prepared namespace beneath \(netns)", underlying: Errno(rawValue: -rc))
        }
        guard umount2(netns, 2 /* MNT_DETACH */) == 0 else {
            throw NetworkError(.system, "cannot unmount the runtime's namespace from \(netns) above the prepared one", underlying: Errno(rawValue: errno))
        }
    }

    /// Configures `ifname` (the veth peer, already in the namespace): its
    /// address, the link up, the default route (unless the namespace has
    /// one); lo up too with `loopback`. Returns its MAC address.
    func configurePod(_ number: UInt32, netnsFD: Int32, netns: String, ifname: String, loopback: Bool) throws(NetworkError) -> String {
        let pod = try Netlink(netnsFD: netnsFD, name: netns)
        guard let link = try pod.link(named: ifname) else {
            throw NetworkError(.system, "\(ifname) is not in \(netns) after its creation")
        }
        let address = IPv4Prefix(config.subnet.host(number), config.subnet.length)
        let lo = loopback ? try pod.link(named: "lo") : nil
        let failed: Errno?
        do throws(Errno) {
            if let lo { try pod.setUp(index: lo.index) }
            try pod.addAddress(address, index: link.index)
            try pod.setUp(index: link.index)
            failed = nil
        } catch {
            failed = error
        }
        if let failed {
            throw NetworkError(.system, "cannot configure \(ifname) in \(netns) (\(address))", underlying: failed)
        }
        do throws(Errno) { try pod.addDefaultRoute(via: config.gateway, index: link.index) } catch {
            if error != .fileExists {
                throw NetworkError(.system, "cannot route \(netns) via \(config.gateway)", underlying: error)
            }
        }
        return link.mac
    }

    func attachment(_ slot: Slot) throws(NetworkError) -> PodAttachment {
        let host = config.hostName(slot.number)
        let hostLink = try netlink.link(named: host)
        let bridge = try netlink.link(named: config.bridge)
        return PodAttachment(containerID: slot.containerID ?? "", ifname: slot.ifname ?? "", netns: slot.netns ?? "",
                             slot: slot.number, address: IPv4Prefix(config.subnet.host(slot.number), config.subnet.length),
                             gateway: config.gateway, bridge: config.bridge, bridgeMAC: bridge?.mac ?? "",
                             hostInterface: host, hostMAC: hostLink?.mac ?? "", podMAC: slot.podMAC ?? "",
                             ports: slot.ports, fromPool: slot.pooled ?? true, setupMicros: slot.setupMicros)
    }

    /// Takes the pod's interface away: the pair is destroyed (nothing of the
    /// pod's traffic state survives into the next pod), its address and host
    /// ports released. False when the container had none (DEL of an unknown
    /// container succeeds, per the CNI spec).
    @discardableResult
    public func detach(containerID: String, ifname: String) throws(NetworkError) -> Bool {
        let released = try store.update { (state: inout PoolState) throws(NetworkError) -> Slot? in
            guard var slot = state.slot(container: containerID, ifname: ifname) else { return nil }
            slot.state = .releasing
            state.slots[slot.number] = slot
            if !slot.ports.isEmpty, (try? netlink.link(named: config.bridge)) != nil { try syncPorts(state) }
            return slot
        }
        guard let released else { return false }
        try deleteLink(config.hostName(released.number))
        try store.update { (state: inout PoolState) throws(NetworkError) in
            if state.slots[released.number]?.state == .releasing { state.slots[released.number] = nil }
        }
        return true
    }

    /// CHECK: the container's attachment is as ADD left it (host interface on
    /// the bridge and up; in the pod, the interface up with its address and
    /// the default route).
    public func check(containerID: String, ifname: String, netns: String) throws(NetworkError) {
        guard let slot = try store.read().slot(container: containerID, ifname: ifname) else {
            throw NetworkError(.unknownContainer, "container \(containerID) has no interface \(ifname) on network \(config.name)")
        }
        guard let bridge = try netlink.link(named: config.bridge) else {
            throw NetworkError(.system, "the bridge \(config.bridge) is gone")
        }
        let host = config.hostName(slot.number)
        guard let hostLink = try netlink.link(named: host), hostLink.master == bridge.index, hostLink.isUp else {
            throw NetworkError(.system, "the host interface \(host) of container \(containerID) is gone, down or off the bridge \(config.bridge)")
        }
        let pod = try Netlink(netns: netns)
        guard let link = try pod.link(named: ifname), link.isUp else {
            throw NetworkError(.system, "\(netns) has no interface \(ifname) up")
        }
        let address = IPv4Prefix(config.subnet.host(slot.number), config.subnet.length)
        guard try pod.addresses().contains(where: { $0.index == link.index && $0.prefix == address }) else {
            throw NetworkError(.system, "\(ifname) in \(netns) lacks its address \(address)")
        }
        guard try pod.routes().contains(where: { $0.destination.length == 0 && $0.gateway == config.gateway }) else {
            throw NetworkError(.system, "\(netns) lacks its default route via \(config.gateway)")
        }
    }

    // MARK: Status and removal

    public struct Status: Sendable, Equatable {
        public var free: Int
        public var attached: [PodAttachment]
        public var capacity: Int
    }

    public func status() throws(NetworkError) -> Status {
        let state = try store.read()
        return Status(free: state.free.count,
                      attached: try state.attached.map { s throws(NetworkError) in try attachment(s) },
                      capacity: config.slots.count)
    }

    /// Removes everything of the network from the node: every pair, the
    /// prepared namespaces, the bridge, the nftables table and the state
    /// directory.
    public func remove() throws(NetworkError) {
        try store.update { (state: inout PoolState) throws(NetworkError) in
            for link in try netlink.links() where slotNumber(of: link.name) != nil {
                try deleteLink(link.name)
            }
            for name in (try? FileSystem.list(pinDirectory)) ?? [] { Self.unpin(pinDirectory + "/" + name) }
            try deleteLink(config.bridge)
            try Nft.run("table ip \(config.table) {}\ndelete table ip \(config.table)\n", in: config.directory)
            state = PoolState()
        }
        FileSystem.removeTree(config.directory)
    }
}

/// Network namespaces pinned on a file (as `ip netns add` and containerd
/// make them): for `kangaroo run --network pod`.
public enum NetworkNamespace {
    public static func create(at path: String) throws(NetworkError) {
        close(try PodNetwork.pinNewNamespace(path))
    }

    /// Unmounts and removes the pin (nothing when there is none).
    public static func remove(at path: String) {
        PodNetwork.unpin(path)
    }
}

extension String {
    var replacingSlashes: String { String(map { $0 == "/" ? "." : $0 }) }
}

/// Runs `nft -f` on a ruleset (one atomic transaction).
enum Nft {
    static let candidates = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]

    static func run(_ rules: String, in directory: String) throws(NetworkError) {
        guard let nft = candidates.first(where: { access($0, X_OK) == 0 }) else {
            throw NetworkError(.system, "nft is not installed (apt-get install nftables)")
        }
        let file = directory + "/rules.\(getpid()).nft", log = directory + "/nft.\(getpid()).log"
        defer { unlink(file); unlink(log) }
        do { try FileSystem.write(file, rules, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600) } catch {
            throw NetworkError(.system, "cannot write \(file)", underlying: error)
        }
        unlink(log)
        let pid: pid_t
        do { pid = try Spawn.start(nft, ["-f", file], Spawn.Options(log: log)) } catch {
            throw NetworkError(.system, "cannot run \(nft)", underlying: error)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw NetworkError(.system, "cannot wait for nft", underlying: Errno(rawValue: errno)) }
        }
        guard status == 0 else {
            let output = ((try? FileSystem.readString(log)) ?? "").split(separator: "\n").prefix(6).joined(separator: "; ")
            throw NetworkError(.system, "nft refused the rules of the pod network: \(output.isEmpty ? "exit status \(status)" : output)")
        }
    }
}
