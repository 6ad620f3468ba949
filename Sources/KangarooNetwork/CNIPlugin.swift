import KangarooSystem

/// The CNI plugin protocol (spec 1.0): the command and the container in
/// CNI_* variables, the network configuration on stdin, a result or an
/// error as JSON on stdout. `run` does one call; the `kangaroo-cni`
/// executable is this function with the process's environment and stdin.
public enum CNIPlugin {
    public static let supportedVersions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]

    public struct Output: Sendable, Equatable {
        public var stdout: String
        public var exitCode: Int32
    }

    public static func run(environment: [String: String], stdin: String) -> Output {
        let requested = (try? JSON.parse(stdin))?["cniVersion"]?.string ?? "1.0.0"
        do {
            let text = try call(environment: environment, stdin: stdin)
            return Output(stdout: text, exitCode: 0)
        } catch {
            var fields: [(String, JSON)] = [("cniVersion", .string(supportedVersions.contains(requested) ? requested : "1.0.0")),
                                            ("code", .int(error.code.cniCode)), ("msg", .string(error.message))]
            if let underlying = error.underlying { fields.append(("details", .string(String(describing: underlying)))) }
            return Output(stdout: JSON.object(fields).serialized() + "\n", exitCode: 1)
        }
    }

    static func call(environment env: [String: String], stdin: String) throws(NetworkError) -> String {
        guard let command = env["CNI_COMMAND"], !command.isEmpty else {
            throw NetworkError(.invalidEnvironment, "CNI_COMMAND is not set (ADD, DEL, CHECK or VERSION)")
        }
        if command == "VERSION" {
            let version = (try? JSON.parse(stdin))?["cniVersion"]?.string ?? "1.0.0"
            return JSON.object([("cniVersion", .string(supportedVersions.contains(version) ? version : "1.0.0")),
                                ("supportedVersions", .array(supportedVersions.map { .string($0) }))]).serialized() + "\n"
        }
        let json: JSON
        do { json = try JSON.parse(stdin) } catch {
            throw NetworkError(.decoding, "the network configuration on stdin is not JSON (at byte \(error.offset): \(error.message))")
        }
        let config = try NetworkConfig(json: json)
        guard supportedVersions.contains(config.cniVersion) else {
            throw NetworkError(.incompatibleVersion, "cniVersion \(config.cniVersion) is not supported (supported: \(supportedVersions.joined(separator: ", ")))")
        }
        let containerID = try containerID(env)
        let ifname = try interfaceName(env)
        switch command {
        case "ADD":
            let netns = try netnsPath(env)
            let network = try PodNetwork(config: config)
            let attachment = try network.attach(containerID: containerID, ifname: ifname, netns: netns,
                                                ports: try portMappings(json))
            return result(attachment, config: config).serialized() + "\n"
        case "DEL":
            // DEL must succeed however often it comes and whatever is gone
            // (the namespace included).
            let network = try PodNetwork(config: config)
            try network.detach(containerID: containerID, ifname: ifname)
            return ""
        case "CHECK":
            guard config.cniVersion != "0.3.0", config.cniVersion != "0.3.1" else {
                throw NetworkError(.incompatibleVersion, "CHECK needs cniVersion 0.4.0 or later (this configuration has \(config.cniVersion))")
            }
            let netns = try netnsPath(env)
            try PodNetwork(config: config).check(containerID: containerID, ifname: ifname, netns: netns)
            return ""
        default:
            throw NetworkError(.invalidEnvironment, "CNI_COMMAND \(command) is not ADD, DEL, CHECK or VERSION")
        }
    }

    static func containerID(_ env: [String: String]) throws(NetworkError) -> String {
        guard let id = env["CNI_CONTAINERID"], !id.isEmpty else { throw NetworkError(.invalidEnvironment, "CNI_CONTAINERID is not set") }
        guard id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2d || $0 == 0x2e || $0 == 0x5f }),
              id.utf8.first.map({ $0 != 0x2d && $0 != 0x2e }) ?? false else {
            throw NetworkError(.invalidEnvironment, "CNI_CONTAINERID \"\(id)\" must start with a letter or digit and hold only letters, digits, _ . -")
        }
        return id
    }

    static func interfaceName(_ env: [String: String]) throws(NetworkError) -> String {
        guard let name = env["CNI_IFNAME"], !name.isEmpty else { throw NetworkError(.invalidEnvironment, "CNI_IFNAME is not set") }
        guard name.utf8.count <= 15, name != ".", name != "..",
              name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }) else {
            throw NetworkError(.invalidEnvironment, "CNI_IFNAME \"\(name)\" is not an interface name (1-15 characters, no /, : or spaces)")
        }
        return name
    }

    static func netnsPath(_ env: [String: String]) throws(NetworkError) -> String {
        guard let netns = env["CNI_NETNS"], !netns.isEmpty else { throw NetworkError(.invalidEnvironment, "CNI_NETNS is not set") }
        guard netns.hasPrefix("/") else { throw NetworkError(.invalidEnvironment, "CNI_NETNS \"\(netns)\" is not an absolute path") }
        return netns
    }

    /// `runtimeConfig.portMappings` (the portMappings capability).
    static func portMappings(_ json: JSON) throws(NetworkError) -> [PortMapping] {
        guard let list = json["runtimeConfig"]?["portMappings"], list != .null else { return [] }
        guard let entries = list.array else { throw NetworkError(.invalidConfig, "runtimeConfig.portMappings must be an array") }
        var out: [PortMapping] = []
        for entry in entries {
            // Keys as Go decodes them, case-insensitively: containerd's
            // go-cni sends HostPort, ContainerPort, Protocol, HostIP.
            guard case let .object(fields) = entry else {
                throw NetworkError(.invalidConfig, "runtimeConfig.portMappings: \(entry.serialized()) is not an object")
            }
            var lowered: [(String, JSON)] = []
            for (k, v) in fields { lowered.append((k.lowercased(), v)) }
            let e = JSON.object(lowered)
            guard let h = e["hostport"]?.int, let host = UInt16(exactly: h), host > 0,
                  let c = e["containerport"]?.int, let container = UInt16(exactly: c), container > 0 else {
                throw NetworkError(.invalidConfig, "runtimeConfig.portMappings: \(entry.serialized()) needs hostPort and containerPort in 1...65535")
            }
            let proto = (e["protocol"]?.string ?? "tcp").lowercased()
            guard proto == "tcp" || proto == "udp" else {
                throw NetworkError(.unsupportedField, "runtimeConfig.portMappings: protocol \(proto) is not tcp or udp")
            }
            if let ip = e["hostip"]?.string, !ip.isEmpty, ip != "0.0.0.0" {
                throw NetworkError(.unsupportedField, "runtimeConfig.portMappings: hostIP \(ip) is not supported (host ports listen on every address of the node)")
            }
            out.append(PortMapping(hostPort: host, containerPort: container, proto: proto))
        }
        return out
    }

    /// The ADD result (spec 1.0; 0.3.x and 0.4.0 name the IP version too).
    static func result(_ a: PodAttachment, config: NetworkConfig) -> JSON {
        let old = config.cniVersion.hasPrefix("0.")
        var ip: [(String, JSON)] = [("address", .string(a.address.description)), ("gateway", .string(a.gateway.description)), ("interface", .int(2))]
        if old { ip.insert(("version", .string("4")), at: 0) }
        var fields: [(String, JSON)] = [
            ("cniVersion", .string(config.cniVersion)),
            ("interfaces", .array([
                .object([("name", .string(a.bridge)), ("mac", .string(a.bridgeMAC))]),
                .object([("name", .string(a.hostInterface)), ("mac", .string(a.hostMAC))]),
                .object([("name", .string(a.ifname)), ("mac", .string(a.podMAC)), ("sandbox", .string(a.netns))]),
            ])),
            ("ips", .array([.object(ip)])),
            ("routes", .array([.object([("dst", .string("0.0.0.0/0")), ("gw", .string(a.gateway.description))])])),
        ]
        fields.append(("dns", config.dns ?? .object([])))
        return .object(fields)
    }
}
