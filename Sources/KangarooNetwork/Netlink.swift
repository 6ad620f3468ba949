#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import SystemPackage

/// rtnetlink: links (veth, bridge), addresses and routes, in the network
/// namespace the socket was opened in. One request at a time, each
/// acknowledged; errors carry the kernel's errno.
public final class Netlink {
    // Message types and flags (linux/netlink.h, linux/rtnetlink.h).
    static let done: UInt16 = 3, error: UInt16 = 2
    static let newLink: UInt16 = 16, delLink: UInt16 = 17, getLink: UInt16 = 18
    static let newAddr: UInt16 = 20, getAddr: UInt16 = 22
    static let newRoute: UInt16 = 24, getRoute: UInt16 = 26
    static let fRequest: UInt16 = 1, fAck: UInt16 = 4, fDump: UInt16 = 0x300
    static let fReplace: UInt16 = 0x100, fExcl: UInt16 = 0x200, fCreate: UInt16 = 0x400
    // Attributes.
    static let iflaAddress: UInt16 = 1, iflaIfname: UInt16 = 3, iflaMTU: UInt16 = 4, iflaMaster: UInt16 = 10
    static let iflaLinkinfo: UInt16 = 18, iflaNetNSFD: UInt16 = 28
    static let infoKind: UInt16 = 1, infoData: UInt16 = 2, vethPeer: UInt16 = 1
    static let ifaAddress: UInt16 = 1, ifaLocal: UInt16 = 2, ifaBroadcast: UInt16 = 4
    static let rtaDst: UInt16 = 1, rtaOif: UInt16 = 4, rtaGateway: UInt16 = 5
    static let iffUp: UInt32 = 1

    let fd: Int32
    private var seq: UInt32 = 0

    /// A socket in the calling thread's network namespace.
    public convenience init() throws(NetworkError) {
        self.init(fd: try Netlink.openSocket())
    }

    /// A socket in the network namespace `netns` (a path such as
    /// /var/run/netns/NAME or /proc/PID/ns/net): the calling thread enters
    /// it, opens the socket and returns to its own namespace.
    public convenience init(netns: String) throws(NetworkError) {
        let target = open(netns, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw NetworkError(.invalidEnvironment, "cannot open the network namespace \(netns)", underlying: Errno(rawValue: errno)) }
        defer { close(target) }
        try self.init(netnsFD: target, name: netns)
    }

    public convenience init(netnsFD target: Int32, name: String) throws(NetworkError) {
        let own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard own >= 0 else { throw NetworkError(.system, "cannot open this thread's network namespace", underlying: Errno(rawValue: errno)) }
        defer { close(own) }
        guard kr_setns(target, 0x4000_0000 /* CLONE_NEWNET */) == 0 else {
            throw NetworkError(.invalidEnvironment, "cannot enter the network namespace \(name)", underlying: Errno(rawValue: errno))
        }
        let opened = Result { () throws(NetworkError) -> Int32 in try Netlink.openSocket() }
        if kr_setns(own, 0x4000_0000 /* CLONE_NEWNET */) != 0 {
            // A thread left in a pod's namespace would configure the wrong one.
            fatalError("cannot return to this thread's network namespace: errno \(errno)")
        }
        self.init(fd: try opened.get())
    }

    private init(fd: Int32) { self.fd = fd }

    private static func openSocket() throws(NetworkError) -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0 /* NETLINK_ROUTE */)
        guard fd >= 0 else { throw NetworkError(.system, "cannot open a netlink socket", underlying: Errno(rawValue: errno)) }
        return fd
    }

    deinit { close(fd) }

    // MARK: Messages

    struct Message {
        var bytes: [UInt8] = []
        mutating func u8(_ v: UInt8) { bytes.append(v) }
        mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func pad() { while bytes.count % 4 != 0 { bytes.append(0) } }
        mutating func attr(_ type: UInt16, _ payload: [UInt8]) {
            u16(UInt16(4 + payload.count)); u16(type); bytes += payload; pad()
        }
        mutating func attr(_ type: UInt16, u32 v: UInt32) { withUnsafeBytes(of: v.littleEndian) { attr(type, Array($0)) } }
        mutating func attr(_ type: UInt16, string s: String) { attr(type, Array(s.utf8) + [0]) }
        mutating func nested(_ type: UInt16, _ body: (inout Message) -> Void) {
            let start = bytes.count
            u16(0); u16(type)
            body(&self)
            let len = UInt16(bytes.count - start)
            bytes[start] = UInt8(len & 0xff); bytes[start + 1] = UInt8(len >> 8)
        }
        /// struct ifinfomsg.
        mutating func ifinfo(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) {
            u8(0); u8(0); u16(0); u32(UInt32(bitPattern: index)); u32(flags); u32(change)
        }
    }

    /// Sends one request and waits for its acknowledgement; returns the
    /// messages that came before it (the answer of a get).
    @discardableResult
    func request(_ type: UInt16, flags: UInt16, _ body: Message, dump: Bool = false) throws(Errno) -> [(type: UInt16, payload: ArraySlice<UInt8>)] {
        seq &+= 1
        var m = Message()
        m.u32(UInt32(16 + body.bytes.count)); m.u16(type); m.u16(Netlink.fRequest | flags | (dump ? Netlink.fDump : Netlink.fAck))
        m.u32(seq); m.u32(0)
        m.bytes += body.bytes
        let sent = m.bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == m.bytes.count else { throw Errno(rawValue: errno) }
        var answers: [(UInt16, ArraySlice<UInt8>)] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { if errno == EINTR { continue }; throw Errno(rawValue: errno) }
            var at = 0
            while at + 16 <= n {
                let len = Int(le32(buffer, at)), mtype = le16(buffer, at + 4), mseq = le32(buffer, at + 8)
                guard len >= 16, at + len <= n else { break }
                defer { at += (len + 3) & ~3 }
                guard mseq == seq else { continue }
                switch mtype {
                case Netlink.error:
                    let code = Int32(bitPattern: le32(buffer, at + 16))
                    if code != 0 { throw Errno(rawValue: -code) }
                    return answers
                case Netlink.done:
                    return answers
                default:
                    answers.append((mtype, buffer[(at + 16)..<(at + len)]))
                    if !dump && flags & Netlink.fAck == 0 { /* a get answers, then acks */ }
                }
            }
        }
    }

    // MARK: Links

    public struct Link: Sendable, Equatable {
        public var index: Int32
        public var name: String
        public var flags: UInt32
        public var mac: String
        public var master: Int32?
        public var isUp: Bool { flags & Netlink.iffUp != 0 }
    }

    /// The link named `name`, or nil when there is none.
    public func link(named name: String) throws(NetworkError) -> Link? {
        var b = Message()
        b.ifinfo()
        b.attr(Netlink.iflaIfname, string: name)
        do {
            let answers = try request(Netlink.getLink, flags: 0, b)
            return answers.first.flatMap { Netlink.parseLink($0.payload) }
        } catch where error.rawValue == ENODEV {
            return nil
        } catch {
            throw NetworkError(.system, "cannot look up the interface \(name)", underlying: error)
        }
    }

    /// Every link of the namespace.
    public func links() throws(NetworkError) -> [Link] {
        var b = Message()
        b.ifinfo()
        do {
            return try request(Netlink.getLink, flags: 0, b, dump: true).compactMap { Netlink.parseLink($0.payload) }
        } catch {
            throw NetworkError(.system, "cannot list the interfaces", underlying: error)
        }
    }

    static func parseLink(_ p: ArraySlice<UInt8>) -> Link? {
        let base = p.startIndex
        guard p.count >= 16 else { return nil }
        var link = Link(index: Int32(bitPattern: le32(p, base + 4)), name: "", flags: le32(p, base + 8), mac: "", master: nil)
        for (type, value) in attributes(p[(base + 16)...]) {
            switch type {
            case iflaIfname: link.name = String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
            case iflaAddress: link.mac = value.map { hex2($0) }.joined(separator: ":")
            case iflaMaster where value.count >= 4: link.master = Int32(bitPattern: le32(value, value.startIndex))
            default: break
            }
        }
        return link
    }

    /// A bridge `name`, up (EEXIST when it is there).
    public func addBridge(_ name: String, mtu: UInt32? = nil) throws(Errno) {
        var b = Message()
        b.ifinfo(flags: Netlink.iffUp, change: Netlink.iffUp)
        b.attr(Netlink.iflaIfname, string: name)
        if let mtu { b.attr(Netlink.iflaMTU, u32: mtu) }
        b.nested(Netlink.iflaLinkinfo) { $0.attr(Netlink.infoKind, string: "bridge") }
        try request(Netlink.newLink, flags: Netlink.fCreate | Netlink.fExcl, b)
    }

    /// A veth pair: `host` up and enslaved to the bridge `master`, `peer`
    /// down.
    /// With `peerNetnsFD`, the peer is made in that namespace (cheaper by
    /// far than moving it there afterwards: the kernel's move of a link waits
    /// for RCU grace periods, 20-30 ms here).
    public func addVeth(host: String, peer: String, master: Int32, mtu: UInt32? = nil, peerNetnsFD: Int32? = nil) throws(Errno) {
        var b = Message()
        b.ifinfo(flags: Netlink.iffUp, change: Netlink.iffUp)
        b.attr(Netlink.iflaIfname, string: host)
        b.attr(Netlink.iflaMaster, u32: UInt32(bitPattern: master))
        if let mtu { b.attr(Netlink.iflaMTU, u32: mtu) }
        b.nested(Netlink.iflaLinkinfo) { li in
            li.attr(Netlink.infoKind, string: "veth")
            li.nested(Netlink.infoData) { data in
                data.nested(Netlink.vethPeer) { peerMsg in
                    peerMsg.ifinfo()
                    peerMsg.attr(Netlink.iflaIfname, string: peer)
                    if let mtu { peerMsg.attr(Netlink.iflaMTU, u32: mtu) }
                    if let peerNetnsFD { peerMsg.attr(Netlink.iflaNetNSFD, u32: UInt32(bitPattern: peerNetnsFD)) }
                }
            }
        }
        try request(Netlink.newLink, flags: Netlink.fCreate | Netlink.fExcl, b)
    }

    /// Deletes the link `name`; false when there was none.
    @discardableResult
    public func deleteLink(named name: String) throws(Errno) -> Bool {
        var b = Message()
        b.ifinfo()
        b.attr(Netlink.iflaIfname, string: name)
        do { try request(Netlink.delLink, flags: 0, b) } catch where error.rawValue == ENODEV { return false }
        return true
    }

    /// Moves link `index` into the namespace `netnsFD`, named `name` there.
    public func move(index: Int32, toNetnsFD netnsFD: Int32, name: String) throws(Errno) {
        var b = Message()
        b.ifinfo(index: index)
        b.attr(Netlink.iflaNetNSFD, u32: UInt32(bitPattern: netnsFD))
        b.attr(Netlink.iflaIfname, string: name)
        try request(Netlink.newLink, flags: 0, b)
    }

    /// Sets link `index` up (or down).
    public func setUp(index: Int32, _ up: Bool = true) throws(Errno) {
        var b = Message()
        b.ifinfo(index: index, flags: up ? Netlink.iffUp : 0, change: Netlink.iffUp)
        try request(Netlink.newLink, flags: 0, b)
    }

    // MARK: Addresses and routes

    /// Adds `address` to link `index`, with the subnet's broadcast address
    /// (EEXIST when it has it).
    public func addAddress(_ address: IPv4Prefix, index: Int32) throws(Errno) {
        var b = Message()
        b.u8(UInt8(AF_INET)); b.u8(address.length); b.u8(0); b.u8(0); b.u32(UInt32(bitPattern: index))
        b.attr(Netlink.ifaLocal, address.address.bytes)
        b.attr(Netlink.ifaAddress, address.address.bytes)
        if address.length < 31 { b.attr(Netlink.ifaBroadcast, IPv4(address.network.value | ~address.mask).bytes) }
        try request(Netlink.newAddr, flags: Netlink.fCreate | Netlink.fExcl, b)
    }

    public struct Address: Sendable, Equatable {
        public var index: Int32
        public var prefix: IPv4Prefix
    }

    /// The IPv4 addresses of the namespace.
    public func addresses() throws(NetworkError) -> [Address] {
        var b = Message()
        b.u8(UInt8(AF_INET)); b.u8(0); b.u8(0); b.u8(0); b.u32(0)
        do {
            return try request(Netlink.getAddr, flags: 0, b, dump: true).compactMap { (_, p) -> Address? in
                guard p.count >= 8 else { return nil }
                let length = p[p.startIndex + 1], index = Int32(bitPattern: le32(p, p.startIndex + 4))
                for (type, value) in Netlink.attributes(p[(p.startIndex + 8)...]) where type == Netlink.ifaLocal && value.count == 4 {
                    return Address(index: index, prefix: IPv4Prefix(IPv4(Array(value)), length))
                }
                return nil
            }
        } catch {
            throw NetworkError(.system, "cannot list the addresses", underlying: error)
        }
    }

    /// A default route through `gateway` (EEXIST when there is one).
    public func addDefaultRoute(via gateway: IPv4, index: Int32) throws(Errno) {
        var b = Message()
        // rtmsg: family, dst_len, src_len, tos, table main, protocol boot, scope universe, type unicast, flags.
        b.u8(UInt8(AF_INET)); b.u8(0); b.u8(0); b.u8(0); b.u8(254); b.u8(3); b.u8(0); b.u8(1); b.u32(0)
        b.attr(Netlink.rtaGateway, gateway.bytes)
        b.attr(Netlink.rtaOif, u32: UInt32(bitPattern: index))
        try request(Netlink.newRoute, flags: Netlink.fCreate | Netlink.fExcl, b)
    }

    public struct Route: Sendable, Equatable {
        public var destination: IPv4Prefix
        public var gateway: IPv4?
        public var index: Int32?
    }

    /// The IPv4 routes of the main table.
    public func routes() throws(NetworkError) -> [Route] {
        var b = Message()
        b.u8(UInt8(AF_INET)); b.u8(0); b.u8(0); b.u8(0); b.u8(0); b.u8(0); b.u8(0); b.u8(0); b.u32(0)
        do {
            return try request(Netlink.getRoute, flags: 0, b, dump: true).compactMap { (_, p) -> Route? in
                guard p.count >= 12, p[p.startIndex + 4] == 254 else { return nil }
                var route = Route(destination: IPv4Prefix(IPv4(0), p[p.startIndex + 1]), gateway: nil, index: nil)
                for (type, value) in Netlink.attributes(p[(p.startIndex + 12)...]) {
                    switch type {
                    case Netlink.rtaDst where value.count == 4: route.destination = IPv4Prefix(IPv4(Array(value)), route.destination.length)
                    case Netlink.rtaGateway where value.count == 4: route.gateway = IPv4(Array(value))
                    case Netlink.rtaOif where value.count == 4: route.index = Int32(bitPattern: le32(value, value.startIndex))
                    default: break
                    }
                }
                return route
            }
        } catch {
            throw NetworkError(.system, "cannot list the routes", underlying: error)
        }
    }

    // MARK: Parsing

    static func attributes(_ p: ArraySlice<UInt8>) -> [(UInt16, ArraySlice<UInt8>)] {
        var out: [(UInt16, ArraySlice<UInt8>)] = []
        var at = p.startIndex
        while at + 4 <= p.endIndex {
            let len = Int(le16(p, at)), type = le16(p, at + 2) & 0x3fff
            guard len >= 4, at + len <= p.endIndex else { break }
            out.append((type, p[(at + 4)..<(at + len)]))
            at += (len + 3) & ~3
        }
        return out
    }
}

func le16<C: RandomAccessCollection>(_ b: C, _ i: C.Index) -> UInt16 where C.Element == UInt8, C.Index == Int {
    UInt16(b[i]) | UInt16(b[i + 1]) << 8
}

func le32<C: RandomAccessCollection>(_ b: C, _ i: C.Index) -> UInt32 where C.Element == UInt8, C.Index == Int {
    UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
}

func hex2(_ v: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(v >> 4)], digits[Int(v & 15)]])
}
