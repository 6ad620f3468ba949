/// An IPv4 address.
public struct IPv4: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }
    init(_ bytes: [UInt8]) { value = bytes.reduce(0) { $0 << 8 | UInt32($1) } }

    /// Parses dotted quad notation; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy(\.isASCII), let octet = UInt8(p) else { return nil }
            v = v << 8 | UInt32(octet)
        }
        value = v
    }

    /// Network byte order.
    public var bytes: [UInt8] { [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)] }
    public var description: String { bytes.map(String.init).joined(separator: ".") }
    public static func < (a: IPv4, b: IPv4) -> Bool { a.value < b.value }

}

/// An address with a prefix length (10.77.0.5/16), or a subnet.
public struct IPv4Prefix: Sendable, Hashable, CustomStringConvertible {
    public var address: IPv4
    public var length: UInt8

    public init(_ address: IPv4, _ length: UInt8) {
        self.address = address
        self.length = length
    }

    /// Parses "A.B.C.D/N"; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let ip = IPv4(String(parts[0])), let n = UInt8(parts[1]), n <= 32 else { return nil }
        self.init(ip, n)
    }

    public var mask: UInt32 { length == 0 ? 0 : ~UInt32(0) << (32 - UInt32(length)) }
    /// The subnet's first address (the address with the host bits cleared).
    public var network: IPv4 { IPv4(address.value & mask) }
    /// How many addresses the subnet has.
    public var size: UInt64 { UInt64(1) << (32 - UInt64(length)) }
    public func contains(_ ip: IPv4) -> Bool { ip.value & mask == network.value }
    /// The subnet's address at `offset` from its start.
    public func host(_ offset: UInt32) -> IPv4 { IPv4(network.value &+ offset) }
    public var description: String { "\(address)/\(length)" }

}
