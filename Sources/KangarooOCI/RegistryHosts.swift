import Foundation
import Logging

/// One place a registry's content can come from: a mirror (a `[host."URL"]`
/// table of containerd's hosts.toml) or the registry itself (`server`).
public struct RegistryHost: Sendable, Equatable, CustomStringConvertible {
    public enum Capability: String, Sendable, CaseIterable {
        case pull, resolve, push
    }

    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String
    }

    /// `http` or `https`.
    public var scheme: String
    /// Host and optional port.
    public var host: String
    /// The API root on that host (`/v2`, or the URL's path with `override_path`).
    public var apiPath: String
    public var capabilities: Set<Capability>
    public var tls: RegistryClient.TLSOptions
    public var headers: [Header]
    /// How long one request may take before the next host is tried
    /// (a Kangaroo key, `timeout`; nil: the caller's default).
    public var timeout: Duration?
    /// False for the registry itself (`server`), true for a mirror.
    public var isMirror: Bool

    public var url: String { scheme == "p2p" ? "p2p://\(host)" : "\(scheme)://\(host)\(apiPath)" }

    /// Not a host: what names a P2P source among the hosts (`p2p://trackers`).
    public static let peerPlaceholder = RegistryHost(scheme: "p2p", host: "trackers", apiPath: "", capabilities: [.pull],
                                                     tls: .init(), headers: [], timeout: nil, isMirror: true)
    public var description: String { url }

    /// A client for this host. Mirrors get no credentials (the origin's are
    /// not theirs to see) and no retries of their own: the next host is the
    /// retry.
    public func client(credentials: RegistryClient.Credentials?, timeout defaultTimeout: Duration, retries: Int,
                       logger: Logger) -> RegistryClient {
        RegistryClient(host: host, plainHTTP: scheme == "http", credentials: isMirror ? nil : credentials,
                       timeout: timeout ?? defaultTimeout, retries: isMirror ? 0 : retries,
                       apiPath: apiPath, headers: headers.map { ($0.name, $0.value) }, tls: tls, logger: logger)
    }
}

/// The hosts of one registry, in the order they are tried: containerd's
/// `hosts.toml` format (docs/hosts.md of containerd 1.6), read from
/// `DIR/<registry>/hosts.toml` or `DIR/_default/hosts.toml`. Mirrors come
/// first in the order listed, the registry itself (`server`) last; without
/// a file the registry alone.
///
/// Supported keys: `server`; per host `capabilities`, `skip_verify`, `ca`,
/// `override_path`, `[host."URL".header]` and Kangaroo's `timeout` (seconds).
/// `client` (client certificates) is refused; other keys are reported in
/// `warnings` and otherwise ignored (containerd ignores them too).
public struct RegistryHosts: Sendable {
    public static let defaultDirectory = "/etc/kangaroo/certs.d"

    /// The registry host as references name it (`127.0.0.1:5000`, `docker.io`).
    public let registry: String
    public let hosts: [RegistryHost]
    /// The file they came from (nil: no file, the registry alone).
    public let path: String?
    /// Keys that were ignored, one line each naming the file.
    public let warnings: [String]

    /// The hosts trusted with `capability`, in order.
    public func hosts(for capability: RegistryHost.Capability) -> [RegistryHost] {
        hosts.filter { $0.capabilities.contains(capability) }
    }

    /// The registry alone, as a reference's host names it.
    public static func origin(_ registry: String, plainHTTP: Bool = false) -> RegistryHosts {
        RegistryHosts(registry: registry, hosts: [defaultServer(registry, plainHTTP: plainHTTP)], path: nil, warnings: [])
    }

    static func defaultServer(_ registry: String, plainHTTP: Bool) -> RegistryHost {
        let name = registry.split(separator: ":").first.map(String.init) ?? registry
        let local = ["127.0.0.1", "localhost"].contains(name) || registry.hasPrefix("[::1]")
        let host = registry == Reference.defaultHost ? "registry-1.docker.io" : registry
        return RegistryHost(scheme: plainHTTP || local ? "http" : "https", host: host, apiPath: "/v2",
                            capabilities: Set(RegistryHost.Capability.allCases), tls: .init(), headers: [],
                            timeout: nil, isMirror: false)
    }

    /// Reads `directory/<registry>/hosts.toml`, else `directory/_default/hosts.toml`,
    /// else the registry alone. A file that exists but does not parse is an error.
    public static func load(registry: String, directory: String, plainHTTP: Bool = false) throws(OCIError) -> RegistryHosts {
        for name in [registry, "_default"] {
            let path = directory + "/" + name + "/hosts.toml"
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw OCIError(.io, "reading registry hosts file \(path) failed", underlying: SendableErrorBox(error))
            }
            return try parse(text, registry: registry, path: path, plainHTTP: plainHTTP)
        }
        return origin(registry, plainHTTP: plainHTTP)
    }

    public static func parse(_ text: String, registry: String, path: String, plainHTTP: Bool = false) throws(OCIError) -> RegistryHosts {
        func bad(_ message: String) -> OCIError { OCIError(.invalidReference, "registry hosts file \(path): \(message)") }
        let document: TOMLSubset.Document
        do { document = try TOMLSubset.parse(text) } catch { throw bad(error.description) }
        let directory = (path as NSString).deletingLastPathComponent
        var warnings: [String] = []
        var hosts: [RegistryHost] = []
        var server: RegistryHost?
        for (key, value) in document.root.sorted(by: { $0.key < $1.key }) {
            switch key {
            case "server":
                guard case .string = value else { throw bad("server is \(value.typeName), not a string URL") }
            case "host":
                guard case .table = value else { throw bad("host is \(value.typeName); write [host.\"URL\"] tables") }
            case _ where hostKeys.contains(key):
                break  // the server's own settings, read below
            default:
                warnings.append("registry hosts file \(path): unknown key '\(key)' ignored")
            }
        }
        if case .string(let url)? = document.root["server"] {
            // The root table's host keys are the server's settings.
            var table = document.root
            for key in ["server", "host"] { table.removeValue(forKey: key) }
            for key in table.keys where !hostKeys.contains(key) { table.removeValue(forKey: key) }
            server = try host(url, table: table, isMirror: false, directory: directory, plainHTTP: plainHTTP,
                              what: "server", bad: bad, warnings: &warnings)
        }
        if case .table(let table)? = document.root["host"] {
            var order: [String] = []
            for path in document.pathOrder where path.count >= 2 && path[0] == "host" && !order.contains(path[1]) {
                order.append(path[1])
            }
            for url in order {
                guard case .table(let settings)? = table[url] else {
                    throw bad("host.\"\(url)\" is \(table[url]?.typeName ?? "missing"), not a table")
                }
                hosts.append(try host(url, table: settings, isMirror: true, directory: directory, plainHTTP: plainHTTP,
                                      what: "host \"\(url)\"", bad: bad, warnings: &warnings))
            }
        }
        if let server { hosts.append(server) }
        warnings = warnings.map { $0.hasPrefix("registry hosts file") ? $0 : "registry hosts file \(path): \($0)" }
        guard !hosts.isEmpty else { throw bad("names no server and no [host.\"URL\"]: nowhere to pull \(registry) from") }
        return RegistryHosts(registry: registry, hosts: hosts, path: path, warnings: warnings)
    }

    static let hostKeys: Set<String> = ["capabilities", "skip_verify", "ca", "client", "header", "override_path", "timeout"]

    private static func host(_ url: String, table: [String: TOMLValue], isMirror: Bool, directory: String, plainHTTP: Bool,
                             what: String, bad: (String) -> OCIError, warnings: inout [String]) throws(OCIError) -> RegistryHost {
        var rest = Substring(url)
        var scheme: String?
        if let range = rest.range(of: "://") {
            scheme = String(rest[..<range.lowerBound])
            rest = rest[range.upperBound...]
        }
        guard scheme == nil || scheme == "http" || scheme == "https" else {
            throw bad("\(what): scheme '\(scheme!)' is not http or https")
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let hostPart = String(rest[..<slash])
        var urlPath = String(rest[slash...])
        while urlPath.hasSuffix("/") { urlPath.removeLast() }
        guard !hostPart.isEmpty, !hostPart.contains(where: { $0 == " " || $0 == "@" || $0 == "?" || $0 == "#" }) else {
            throw bad("\(what): '\(url)' is not a URL with a host")
        }
        var result = defaultServer(hostPart, plainHTTP: plainHTTP)
        result.host = hostPart
        if let scheme { result.scheme = scheme }
        result.isMirror = isMirror
        var overridePath = false
        for (key, value) in table.sorted(by: { $0.key < $1.key }) {
            switch key {
            case "capabilities":
                guard case .array(let items) = value else { throw bad("\(what): capabilities is \(value.typeName), not an array") }
                var set: Set<RegistryHost.Capability> = []
                for item in items {
                    guard case .string(let name) = item, let capability = RegistryHost.Capability(rawValue: name) else {
                        throw bad("\(what): capability \(item) is not one of \"pull\", \"resolve\", \"push\"")
                    }
                    set.insert(capability)
                }
                result.capabilities = set
            case "skip_verify":
                guard case .bool(let flag) = value else { throw bad("\(what): skip_verify is \(value.typeName), not true or false") }
                result.tls.skipVerify = flag
            case "override_path":
                guard case .bool(let flag) = value else { throw bad("\(what): override_path is \(value.typeName), not true or false") }
                overridePath = flag
            case "ca":
                let files: [TOMLValue]
                switch value {
                case .string: files = [value]
                case .array(let items): files = items
                default: throw bad("\(what): ca is \(value.typeName), not a path or an array of paths")
                }
                for file in files {
                    guard case .string(let name) = file else { throw bad("\(what): ca entry \(file) is not a path") }
                    let full = name.hasPrefix("/") ? name : directory + "/" + name
                    guard FileManager.default.isReadableFile(atPath: full) else { throw bad("\(what): ca file \(full) cannot be read") }
                    result.tls.caFiles.append(full)
                }
            case "client":
                throw bad("\(what): client certificates (client = ...) are not supported")
            case "header":
                guard case .table(let headers) = value else { throw bad("\(what): header is \(value.typeName); write a [header] table") }
                for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
                    switch value {
                    case .string(let text): result.headers.append(.init(name: name, value: text))
                    case .array(let items):
                        for item in items {
                            guard case .string(let text) = item else { throw bad("\(what): header \(name) has a value that is not a string") }
                            result.headers.append(.init(name: name, value: text))
                        }
                    default: throw bad("\(what): header \(name) is \(value.typeName), not a string or an array of strings")
                    }
                }
            case "timeout":
                let seconds: Double
                switch value {
                case .integer(let i): seconds = Double(i)
                case .float(let d): seconds = d
                default: throw bad("\(what): timeout is \(value.typeName), not a number of seconds")
                }
                guard seconds > 0, seconds <= 3600 else { throw bad("\(what): timeout \(seconds) is not between 0 and 3600 seconds") }
                result.timeout = .milliseconds(Int64(seconds * 1000))
            default:
                warnings.append("\(what): unknown key '\(key)' ignored")
            }
        }
        if overridePath {
            result.apiPath = urlPath
        } else {
            result.apiPath = urlPath.hasSuffix("/v2") ? urlPath : urlPath + "/v2"
        }
        return result
    }
}
