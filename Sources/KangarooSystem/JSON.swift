// A small JSON reader and writer without Foundation, so that kangaroo-runtime
// and kangaroo-cni start fast. Numbers keep their source text: OCI configs carry uint64 values
// (rlimits, memory limits) that Double cannot represent exactly.

public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public subscript(key: String) -> JSON? {
        if case let .object(members) = self {
            for (k, v) in members.reversed() where k == key { return v }
        }
        return nil
    }

    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

// MARK: - Parsing

public struct JSONSyntaxError: Error, Sendable {
    public var offset: Int
    public var message: String
}

extension JSON {
    public static func parse(_ text: String) throws(JSONSyntaxError) -> JSON {
        var bytes = Array(text.utf8)
        return try parse(bytes: &bytes)
    }

    public static func parse(bytes: inout [UInt8]) throws(JSONSyntaxError) -> JSON {
        var p = JSONParser(bytes: bytes)
        p.skipSpace()
        let value = try p.parseValue(depth: 0)
        p.skipSpace()
        if p.pos != p.bytes.count { throw p.error("trailing characters after the JSON value") }
        return value
    }
}

struct JSONParser {
    let bytes: [UInt8]
    var pos = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func error(_ message: String) -> JSONSyntaxError { JSONSyntaxError(offset: pos, message: message) }

    mutating func skipSpace() {
        while pos < bytes.count, bytes[pos] == 0x20 || bytes[pos] == 0x0A || bytes[pos] == 0x0D || bytes[pos] == 0x09 {
            pos += 1
        }
    }

    mutating func expect(_ literal: String, _ value: JSON) throws(JSONSyntaxError) -> JSON {
        for b in literal.utf8 {
            guard pos < bytes.count, bytes[pos] == b else { throw error("invalid literal") }
            pos += 1
        }
        return value
    }

    mutating func parseValue(depth: Int) throws(JSONSyntaxError) -> JSON {
        guard depth < 512 else { throw error("nesting too deep") }
        guard pos < bytes.count else { throw error("unexpected end of input") }
        switch bytes[pos] {
        case UInt8(ascii: "{"):
            pos += 1
            var members: [(String, JSON)] = []
            skipSpace()
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
            while true {
                skipSpace()
                guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let key = try parseString()
                skipSpace()
                guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw error("expected ':'") }
                pos += 1
                skipSpace()
                members.append((key, try parseValue(depth: depth + 1)))
                skipSpace()
                guard pos < bytes.count else { throw error("unexpected end of input") }
                if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
                throw error("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            pos += 1
            var items: [JSON] = []
            skipSpace()
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
            while true {
                skipSpace()
                items.append(try parseValue(depth: depth + 1))
                skipSpace()
                guard pos < bytes.count else { throw error("unexpected end of input") }
                if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                throw error("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"): return try expect("true", .bool(true))
        case UInt8(ascii: "f"): return try expect("false", .bool(false))
        case UInt8(ascii: "n"): return try expect("null", .null)
        default:
            let start = pos
            if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            var digits = 0
            while pos < bytes.count {
                let c = bytes[pos]
                if (c >= 0x30 && c <= 0x39) { digits += 1; pos += 1 }
                else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
                    || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") { pos += 1 }
                else { break }
            }
            guard digits > 0 else { pos = start; throw error("unexpected character") }
            return .number(String(decoding: bytes[start..<pos], as: UTF8.self))
        }
    }

    mutating func hex4() throws(JSONSyntaxError) -> UInt32 {
        guard pos + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw error("invalid \\u escape")
            }
            v = v * 16 + d
            pos += 1
        }
        return v
    }

    mutating func parseString() throws(JSONSyntaxError) -> String {
        pos += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw error("unterminated string") }
            let c = bytes[pos]
            pos += 1
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw error("control character in string") }
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard pos < bytes.count else { throw error("unterminated escape") }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xD800 && scalar < 0xDC00, pos + 6 <= bytes.count,
                   bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") {
                    pos += 2
                    let low = try hex4()
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low &- 0xDC00)
                }
                let u = Unicode.Scalar(scalar) ?? "\u{FFFD}"
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw error("invalid escape")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

// MARK: - Writing

extension JSON {
    /// Serialises compactly (`indent == nil`) or with the given indent.
    public func serialized(indent: String? = nil) -> String {
        var out = ""
        write(to: &out, indent: indent, level: 0)
        return out
    }

    static func quote(_ s: String, into out: inout String) {
        out.append("\"")
        // Most strings need no escape: appended whole (per-scalar appends
        // were most of the CNI plugin's time writing its state).
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out.append(s)
            out.append("\"")
            return
        }
        for u in s.unicodeScalars {
            switch u {
            case "\"": out.append("\\\"")
            case "\\": out.append("\\\\")
            case "\n": out.append("\\n")
            case "\r": out.append("\\r")
            case "\t": out.append("\\t")
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out.append("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out.append("\"")
    }

    func write(to out: inout String, indent: String?, level: Int) {
        switch self {
        case .null: out.append("null")
        case let .bool(b): out.append(b ? "true" : "false")
        case let .number(n): out.append(n)
        case let .string(s): JSON.quote(s, into: &out)
        case let .array(items):
            if items.isEmpty { out.append("[]"); return }
            out.append("[")
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(",") }
                newline(&out, indent, level + 1)
                item.write(to: &out, indent: indent, level: level + 1)
            }
            newline(&out, indent, level)
            out.append("]")
        case let .object(members):
            if members.isEmpty { out.append("{}"); return }
            out.append("{")
            for (i, (k, v)) in members.enumerated() {
                if i > 0 { out.append(",") }
                newline(&out, indent, level + 1)
                JSON.quote(k, into: &out)
                out.append(indent == nil ? ":" : ": ")
                v.write(to: &out, indent: indent, level: level + 1)
            }
            newline(&out, indent, level)
            out.append("}")
        }
    }

    private func newline(_ out: inout String, _ indent: String?, _ level: Int) {
        guard let indent else { return }
        out.append("\n")
        for _ in 0..<level { out.append(indent) }
    }
}

extension JSON {
    public static func int<I: BinaryInteger>(_ v: I) -> JSON { .number(String(v)) }
    public static func uint64(_ v: UInt64) -> JSON { .number(String(v)) }
}

extension JSON {
    /// The string of a `.string`, else nil.
    public var string: String? { if case let .string(s) = self { s } else { nil } }
    /// The integer of a `.number` that is one, else nil.
    public var int: Int? { if case let .number(n) = self { Int(n) } else { nil } }
    public var bool: Bool? { if case let .bool(b) = self { b } else { nil } }
    public var array: [JSON]? { if case let .array(a) = self { a } else { nil } }
    /// An object's members with `key` set to `value` (replaced, or added at the end).
    public func setting(_ key: String, _ value: JSON) -> JSON {
        guard case var .object(members) = self else { return self }
        if let i = members.firstIndex(where: { $0.0 == key }) { members[i].1 = value } else { members.append((key, value)) }
        return .object(members)
    }
}
