import KangarooSystem

/// A JSON value with the path it was found at, for decoding config.json with
/// errors that name the offending field (`linux.namespaces[2].type`).
public struct JSONNode: Sendable {
    public let value: JSON
    public let path: String
    public let document: String

    public init(_ value: JSON, path: String = "", document: String = "config.json") {
        self.value = value
        self.path = path
        self.document = document
    }

    func child(_ key: String) -> JSONNode? {
        guard let v = value[key] else { return nil }
        if case .null = v { return nil }
        return JSONNode(v, path: path.isEmpty ? key : path + "." + key, document: document)
    }

    func fail(_ message: String) -> RuntimeError {
        RuntimeError(.invalidConfig, "\(document): \(path.isEmpty ? "(root)" : path): \(message)")
    }

    func missing(_ key: String) -> RuntimeError {
        RuntimeError(.invalidConfig, "\(document): \(path.isEmpty ? key : path + "." + key): missing required field")
    }

    func typeError(_ want: String) -> RuntimeError {
        fail("expected \(want), got \(value.typeName)")
    }

    // MARK: typed accessors of this node

    func asString() throws(RuntimeError) -> String {
        guard case let .string(s) = value else { throw typeError("a string") }
        return s
    }

    func asBool() throws(RuntimeError) -> Bool {
        guard case let .bool(b) = value else { throw typeError("a boolean") }
        return b
    }

    func asInt64() throws(RuntimeError) -> Int64 {
        guard case let .number(n) = value else { throw typeError("an integer") }
        guard let v = Int64(n) else { throw fail("\(n) is not an integer in range") }
        return v
    }

    func asUInt64() throws(RuntimeError) -> UInt64 {
        guard case let .number(n) = value else { throw typeError("an unsigned integer") }
        if let v = UInt64(n) { return v }
        // -1 means unlimited in several resource fields.
        if n == "-1" { return UInt64.max }
        throw fail("\(n) is not an unsigned integer in range")
    }

    func asUInt32() throws(RuntimeError) -> UInt32 {
        let v = try asInt64()
        guard v >= 0, v <= Int64(UInt32.max) else { throw fail("\(v) is out of range 0...\(UInt32.max)") }
        return UInt32(v)
    }

    func asInt() throws(RuntimeError) -> Int {
        Int(try asInt64())
    }

    func asArray() throws(RuntimeError) -> [JSONNode] {
        guard case let .array(items) = value else { throw typeError("an array") }
        var out: [JSONNode] = []
        out.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            out.append(JSONNode(item, path: "\(path)[\(i)]", document: document))
        }
        return out
    }

    func asObject() throws(RuntimeError) -> [(String, JSONNode)] {
        guard case let .object(members) = value else { throw typeError("an object") }
        return members.map { ($0.0, JSONNode($0.1, path: path + "." + $0.0, document: document)) }
    }

    func asStringArray() throws(RuntimeError) -> [String] {
        var out: [String] = []
        for item in try asArray() { out.append(try item.asString()) }
        return out
    }

    func asStringMap() throws(RuntimeError) -> [(String, String)] {
        var out: [(String, String)] = []
        for (k, v) in try asObject() { out.append((k, try v.asString())) }
        return out
    }

    // MARK: optional members

    func string(_ key: String) throws(RuntimeError) -> String? { try child(key)?.asString() }
    func bool(_ key: String) throws(RuntimeError) -> Bool? { try child(key)?.asBool() }
    func int64(_ key: String) throws(RuntimeError) -> Int64? { try child(key)?.asInt64() }
    func uint64(_ key: String) throws(RuntimeError) -> UInt64? { try child(key)?.asUInt64() }
    func uint32(_ key: String) throws(RuntimeError) -> UInt32? { try child(key)?.asUInt32() }
    func int(_ key: String) throws(RuntimeError) -> Int? { try child(key)?.asInt() }
    func array(_ key: String) throws(RuntimeError) -> [JSONNode] { try child(key)?.asArray() ?? [] }
    func strings(_ key: String) throws(RuntimeError) -> [String]? { try child(key)?.asStringArray() }
    func stringMap(_ key: String) throws(RuntimeError) -> [(String, String)] { try child(key)?.asStringMap() ?? [] }

    func requiredString(_ key: String) throws(RuntimeError) -> String {
        guard let c = child(key) else { throw missing(key) }
        return try c.asString()
    }

    func required(_ key: String) throws(RuntimeError) -> JSONNode {
        guard let c = child(key) else { throw missing(key) }
        return c
    }
}
