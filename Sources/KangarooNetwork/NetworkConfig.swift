import KangarooSystem

/// A node's pod network: what `kangaroo-cni` reads from its CNI network
/// configuration and `kangaroo node --network` from the same file.
///
///     {"cniVersion": "1.0.0", "name": "kangaroo", "type": "kangaroo-cni",
///      "bridge": "kgr0", "subnet": "10.77.0.0/16", "poolSize": 32,
///      "ifPrefix": "kg", "stateDir": "/var/lib/kangaroo/network",
///      "mtu": 1500, "dns": {"nameservers": ["10.77.0.1"]},
///      "preparedNamespaces": true,
///      "capabilities": {"portMappings": true}}
public struct NetworkConfig: Sendable, Equatable {
    public var name: String
    public var cniVersion: String
    public var bridge: String
    public var subnet: IPv4Prefix
    /// Interfaces kept ready in the pool.
    public var poolSize: Int
    /// Host-side names are PREFIX + slot number (peers: + "p").
    public var ifPrefix: String
    public var stateDir: String
    public var mtu: UInt32?
    /// Handed to the runtime in the result (`dns`), as the spec's DNS type.
    public var dns: JSON?
    /// ADD may put a prepared namespace from the pool on the runtime's
    /// namespace path (see PodNetwork.attach): right for runtimes that make
    /// the namespace, call ADD and only then start the pod (containerd's
    /// CRI, podman); off for runtimes that hand over a namespace already in
    /// use.
    public var preparedNamespaces = true

    public static let defaultStateDir = "/var/lib/kangaroo/network"

    public init(name: String = "kangaroo", cniVersion: String = "1.0.0", bridge: String = "kgr0",
                subnet: IPv4Prefix = IPv4Prefix("10.77.0.0/16")!, poolSize: Int = 32, ifPrefix: String = "kg",
                stateDir: String = NetworkConfig.defaultStateDir, mtu: UInt32? = nil, dns: JSON? = nil) {
        self.name = name
        self.cniVersion = cniVersion
        self.bridge = bridge
        self.subnet = subnet
        self.poolSize = poolSize
        self.ifPrefix = ifPrefix
        self.stateDir = stateDir
        self.mtu = mtu
        self.dns = dns
    }

    public static func == (a: NetworkConfig, b: NetworkConfig) -> Bool {
        a.name == b.name && a.bridge == b.bridge && a.subnet == b.subnet && a.poolSize == b.poolSize
            && a.ifPrefix == b.ifPrefix && a.stateDir == b.stateDir && a.mtu == b.mtu && a.dns == b.dns
            && a.cniVersion == b.cniVersion && a.preparedNamespaces == b.preparedNamespaces
    }

    /// The gateway: the bridge's address, the subnet's first host.
    public var gateway: IPv4 { subnet.host(1) }
    /// Slot numbers run from 2 (after the gateway) to the last host before
    /// the broadcast address.
    public var slots: ClosedRange<UInt32> { 2...UInt32(subnet.size - 2) }
    public var directory: String { stateDir + "/" + name }
    /// The nftables table of this network (nft names: letters, digits, _).
    public var table: String { "kangaroo_" + String(name.map { $0.isLetter || $0.isNumber ? $0 : "_" }) }
    public func hostName(_ slot: UInt32) -> String { ifPrefix + String(slot) }
    public func peerName(_ slot: UInt32) -> String { ifPrefix + String(slot) + "p" }

    /// Decodes a CNI network configuration (the plugin's object, as the
    /// runtime passes it on stdin), or a conflist whose plugin of type
    /// kangaroo-cni is taken.
    public init(json: JSON) throws(NetworkError) {
        var object = json
        if let plugins = json["plugins"] {
            guard let list = plugins.array,
                  let mine = list.first(where: { $0["type"]?.string == "kangaroo-cni" }) else {
                throw NetworkError(.invalidConfig, "the network configuration list has no plugin of type kangaroo-cni")
            }
            object = mine
            for key in ["name", "cniVersion"] where json[key] != nil { object = object.setting(key, json[key]!) }
        }
        guard case .object = object else { throw NetworkError(.decoding, "the network configuration is not a JSON object") }
        func string(_ key: String) throws(NetworkError) -> String? {
            guard let v = object[key], v != .null else { return nil }
            guard let s = v.string else { throw NetworkError(.invalidConfig, "network configuration: \"\(key)\" must be a string") }
            return s
        }
        func int(_ key: String) throws(NetworkError) -> Int? {
            guard let v = object[key], v != .null else { return nil }
            guard let n = v.int else { throw NetworkError(.invalidConfig, "network configuration: \"\(key)\" must be an integer") }
            return n
        }
        guard let name = try string("name"), !name.isEmpty else {
            throw NetworkError(.invalidConfig, "network configuration: \"name\" is missing")
        }
        self.init(name: name)
        cniVersion = try string("cniVersion") ?? "1.0.0"
        if let b = try string("bridge") { bridge = b }
        if let s = try string("subnet") {
            guard let p = IPv4Prefix(s) else { throw NetworkError(.invalidConfig, "network configuration: subnet \"\(s)\" is not A.B.C.D/N") }
            subnet = IPv4Prefix(p.network, p.length)
        }
        if let n = try int("poolSize") { poolSize = n }
        if let p = try string("ifPrefix") { ifPrefix = p }
        if let d = try string("stateDir") { stateDir = d }
        if let m = try int("mtu") {
            guard (576...65535).contains(m) else { throw NetworkError(.invalidConfig, "network configuration: mtu \(m) is not in 576...65535") }
            mtu = UInt32(m)
        }
        if let v = object["preparedNamespaces"], v != .null {
            guard let b = v.bool else { throw NetworkError(.invalidConfig, "network configuration: \"preparedNamespaces\" must be true or false") }
            preparedNamespaces = b
        }
        if let d = object["dns"], d != .null {
            guard case .object = d else { throw NetworkError(.invalidConfig, "network configuration: \"dns\" must be an object") }
            dns = d
        }
        try validate()
    }

    public init(text: String) throws(NetworkError) {
        let json: JSON
        do { json = try JSON.parse(text) } catch {
            throw NetworkError(.decoding, "the network configuration is not JSON (at byte \(error.offset): \(error.message))")
        }
        try self.init(json: json)
    }

    public static func load(_ path: String) throws(NetworkError) -> NetworkConfig {
        let text: String
        do { text = try FileSystem.readString(path) } catch {
            throw NetworkError(.invalidConfig, "cannot read the network configuration \(path)", underlying: error)
        }
        do { return try NetworkConfig(text: text) } catch {
            throw NetworkError(error.code, "\(path): \(error.message)", underlying: error.underlying)
        }
    }

    func validate() throws(NetworkError) {
        func nameOK(_ s: String) -> Bool { s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") } }
        guard !bridge.isEmpty, bridge.utf8.count <= 15, nameOK(bridge) else {
            throw NetworkError(.invalidConfig, "network configuration: bridge \"\(bridge)\" is not an interface name (1-15 printable characters, no /)")
        }
        guard !ifPrefix.isEmpty, ifPrefix.utf8.count <= 8, nameOK(ifPrefix) else {
            throw NetworkError(.invalidConfig, "network configuration: ifPrefix \"\(ifPrefix)\" must be 1-8 printable characters")
        }
        // PREFIX + slot + "p" must fit IFNAMSIZ - 1.
        let digits = String(subnet.size).count
        guard ifPrefix.utf8.count + digits + 1 <= 15 else {
            throw NetworkError(.invalidConfig, "network configuration: ifPrefix \"\(ifPrefix)\" is too long for subnet \(subnet) (interface names have 15 characters)")
        }
        guard (8...29).contains(subnet.length) else {
            throw NetworkError(.invalidConfig, "network configuration: subnet \(subnet) must have a prefix length of 8 to 29")
        }
        guard (0...1024).contains(poolSize) else {
            throw NetworkError(.invalidConfig, "network configuration: poolSize \(poolSize) is not in 0...1024")
        }
        guard stateDir.hasPrefix("/") else {
            throw NetworkError(.invalidConfig, "network configuration: stateDir \"\(stateDir)\" must be an absolute path")
        }
        guard !name.contains("/"), name != ".", name != ".." else {
            throw NetworkError(.invalidConfig, "network configuration: name \"\(name)\" cannot name a directory")
        }
    }
}
