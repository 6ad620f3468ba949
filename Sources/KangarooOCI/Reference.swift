/// A docker-style image reference: `[host[:port]/]repo/path[:tag][@sha256:...]`
/// (distribution/reference grammar). Without a host the registry is
/// `docker.io` and a one-component repository gets the `library/` prefix.
public struct Reference: Sendable, Hashable, CustomStringConvertible {
    public static let defaultHost = "docker.io"
    public static let defaultTag = "latest"

    /// Registry host with optional port, e.g. `127.0.0.1:5000`.
    public var host: String
    /// Repository path, e.g. `library/debian`.
    public var repository: String
    public var tag: String?
    public var digest: Digest?

    public init(host: String, repository: String, tag: String? = nil, digest: Digest? = nil) throws(OCIError) {
        try Self.validateHost(host, in: "\(host)/\(repository)")
        try Self.validateRepository(repository, in: "\(host)/\(repository)")
        if let tag { try Self.validateTag(tag, in: "\(host)/\(repository):\(tag)") }
        self.host = host
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    /// Parses a reference string such as `debian:12`, `127.0.0.1:5000/debian:12`
    /// or `ghcr.io/org/app@sha256:...`.
    public init(parsing string: String) throws(OCIError) {
        guard !string.isEmpty else { throw OCIError(.invalidReference, "image reference is empty") }
        guard string.utf8.count <= 4096 else {
            throw OCIError(.invalidReference, "image reference is longer than 4096 bytes")
        }
        var rest = Substring(string)
        var digest: Digest?
        if let at = rest.firstIndex(of: "@") {
            let digestPart = String(rest[rest.index(after: at)...])
            do { digest = try Digest(parsing: digestPart) } catch {
                throw OCIError(.invalidReference, "image reference '\(string)' has an invalid digest: \(error.message)")
            }
            rest = rest[..<at]
        }
        // The tag is after the last ':' that follows the last '/'.
        var tag: String?
        let lastSlash = rest.lastIndex(of: "/")
        if let colon = rest.lastIndex(of: ":"), lastSlash.map({ colon > $0 }) ?? true {
            tag = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        var host = Self.defaultHost
        var repository = String(rest)
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            if Self.looksLikeHost(first) {
                host = String(first)
                repository = String(rest[rest.index(after: slash)...])
            }
        }
        if host == Self.defaultHost, !repository.isEmpty, !repository.contains("/") {
            repository = "library/" + repository
        }
        if repository.isEmpty {
            throw OCIError(.invalidReference, "image reference '\(string)' has no repository name")
        }
        try Self.validateHost(host, in: string)
        try Self.validateRepository(repository, in: string)
        if let tag { try Self.validateTag(tag, in: string) }
        self.host = host
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    /// Whether the first component of a name is a registry host: it has a
    /// '.' or ':' or is `localhost`.
    static func looksLikeHost(_ component: Substring) -> Bool {
        component.contains(".") || component.contains(":") || component == "localhost"
    }

    /// What registry requests use for `<reference>`: the digest if any, else the tag, else `latest`.
    public var manifestReference: String {
        digest?.description ?? tag ?? Self.defaultTag
    }

    public var description: String {
        var s = "\(host)/\(repository)"
        if let tag { s += ":\(tag)" }
        if let digest { s += "@\(digest)" }
        return s
    }

    static func validateHost(_ host: String, in ref: String) throws(OCIError) {
        var name = Substring(host)
        if let colon = host.lastIndex(of: ":"), !host.hasSuffix("]") {
            let port = host[host.index(after: colon)...]
            guard !port.isEmpty, port.count <= 5, port.allSatisfy(\.isASCIIDigit), let p = Int(port), p > 0, p < 65536 else {
                throw OCIError(.invalidReference, "image reference '\(ref)': registry port '\(port)' is not a number between 1 and 65535")
            }
            name = host[..<colon]
        }
        if name.hasPrefix("[") && name.hasSuffix("]") { return }  // IPv6 literal
        guard !name.isEmpty, name.allSatisfy({ $0.isASCIIAlnum || $0 == "." || $0 == "-" }),
              !name.hasPrefix("-"), !name.hasPrefix(".") else {
            throw OCIError(.invalidReference, "image reference '\(ref)': registry host '\(host)' is not a valid host name")
        }
    }

    /// Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, total at most 255 characters.
    static func validateRepository(_ repository: String, in ref: String) throws(OCIError) {
        guard repository.utf8.count <= 255 else {
            throw OCIError(.invalidReference, "image reference '\(ref)': repository name is longer than 255 characters")
        }
        for component in repository.split(separator: "/", omittingEmptySubsequences: false) {
            if component.isEmpty {
                throw OCIError(.invalidReference, "image reference '\(ref)': repository '\(repository)' has an empty path component")
            }
            if component.contains(where: { $0.isUppercase }) {
                throw OCIError(.invalidReference, "image reference '\(ref)': repository name '\(repository)' must be lowercase")
            }
            let chars = Array(component.utf8)
            func alnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) }
            guard alnum(chars[0]), alnum(chars[chars.count - 1]) else {
                throw OCIError(.invalidReference, "image reference '\(ref)': repository component '\(component)' must start and end with a lowercase letter or digit")
            }
            var i = 0
            while i < chars.count {
                let c = chars[i]
                if alnum(c) { i += 1; continue }
                // Separator run: '.', '_', '__' or one or more '-'.
                var j = i
                while j < chars.count, !alnum(chars[j]) { j += 1 }
                let sep = chars[i..<j]
                let ok = sep.elementsEqual([0x2e]) || sep.elementsEqual([0x5f]) || sep.elementsEqual([0x5f, 0x5f])
                    || sep.allSatisfy { $0 == 0x2d }
                guard ok else {
                    let bad = String(decoding: sep, as: UTF8.self)
                    throw OCIError(.invalidReference, "image reference '\(ref)': repository component '\(component)' contains invalid characters '\(bad)' (allowed: a-z, 0-9, and single '.', '_', '__' or '-' separators)")
                }
                i = j
            }
        }
    }

    /// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    static func validateTag(_ tag: String, in ref: String) throws(OCIError) {
        let chars = Array(tag.utf8)
        func word(_ c: UInt8) -> Bool {
            (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c == 0x5f
        }
        guard !chars.isEmpty, chars.count <= 128, word(chars[0]),
              chars.allSatisfy({ word($0) || $0 == 0x2e || $0 == 0x2d }) else {
            throw OCIError(.invalidReference, "image reference '\(ref)': tag '\(tag)' must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-' and not start with '.' or '-'")
        }
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
    var isASCIIAlnum: Bool { isASCII && (isLetter || isNumber) }
}
