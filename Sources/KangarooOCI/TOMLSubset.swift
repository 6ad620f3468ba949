/// The part of TOML that containerd's `hosts.toml` files use: comments,
/// `[table."header"]` lines (bare, basic-quoted and literal-quoted keys,
/// dotted), `key = value` with basic and literal strings, booleans,
/// integers, floats and arrays of those (nested, across lines). Inline
/// tables, multi-line strings, dates and arrays of tables are refused with
/// an error naming the line. (No TOML package on the machine's list
/// resolves: TOMLKit needs a package that is not there.)
enum TOMLValue: Sendable, Equatable {
    case string(String)
    case bool(Bool)
    case integer(Int64)
    case float(Double)
    case array([TOMLValue])
    case table([String: TOMLValue])

    var typeName: String {
        switch self {
        case .string: "a string"
        case .bool: "a boolean"
        case .integer: "an integer"
        case .float: "a float"
        case .array: "an array"
        case .table: "a table"
        }
    }
}

struct TOMLSubset {
    struct ParseError: Error, Sendable, CustomStringConvertible {
        let line: Int
        let message: String
        var description: String { "line \(line): \(message)" }
    }

    /// Scalars, not Characters: "\r\n" is one Character.
    private var chars: [Unicode.Scalar]
    private var position = 0
    private var line = 1

    /// A parsed document: the root table, and every table header and key
    /// path in the order they appear (a dictionary has none, and hosts are
    /// tried in the order listed).
    struct Document {
        var root: [String: TOMLValue]
        var pathOrder: [[String]]
    }

    static func parse(_ text: String) throws(ParseError) -> Document {
        var parser = TOMLSubset(chars: Array(text.unicodeScalars))
        return try parser.document()
    }

    private init(chars: [Unicode.Scalar]) { self.chars = chars }

    private var atEnd: Bool { position >= chars.count }
    private var current: Unicode.Scalar? { atEnd ? nil : chars[position] }

    private func fail(_ message: String) -> ParseError { ParseError(line: line, message: message) }

    private mutating func advance() {
        if current == "\n" { line += 1 }
        position += 1
    }

    /// Spaces and tabs (not newlines).
    private mutating func skipBlanks() {
        while let c = current, c == " " || c == "\t" { advance() }
    }

    /// Blanks, newlines and comments (inside arrays and between statements).
    private mutating func skipWhitespaceAndComments() {
        while let c = current {
            if c == " " || c == "\t" || c == "\n" || c == "\r" { advance() } else if c == "#" { skipComment() } else { break }
        }
    }

    private mutating func skipComment() {
        while let c = current, c != "\n" { advance() }
    }

    /// After a statement: blanks, an optional comment, then a newline or the end.
    private mutating func endOfLine() throws(ParseError) {
        skipBlanks()
        if current == "#" { skipComment() }
        if current == "\r" { advance() }
        guard atEnd || current == "\n" else { throw fail("unexpected '\(current!)' after the value") }
    }

    private mutating func document() throws(ParseError) -> Document {
        var root: [String: TOMLValue] = [:]
        var tablePath: [String] = []
        var definedTables: Set<[String]> = []
        var order: [[String]] = []
        while true {
            skipWhitespaceAndComments()
            guard let c = current else { break }
            if c == "[" {
                advance()
                if current == "[" { throw fail("arrays of tables ([[...]]) are not supported") }
                skipBlanks()
                let path = try keyPath()
                skipBlanks()
                guard current == "]" else { throw fail("expected ']' to close the table header") }
                advance()
                try endOfLine()
                guard definedTables.insert(path).inserted else {
                    throw fail("table [\(path.joined(separator: "."))] is defined twice")
                }
                try Self.ensureTable(&root, path, line: line)
                order.append(path)
                tablePath = path
            } else {
                let key = try keyPath()
                skipBlanks()
                guard current == "=" else { throw fail("expected '=' after key '\(key.joined(separator: "."))'") }
                advance()
                skipBlanks()
                let value = try self.value()
                try endOfLine()
                try Self.insert(&root, tablePath + key, value, line: line)
                order.append(tablePath + key)
            }
        }
        return Document(root: root, pathOrder: order)
    }

    private mutating func keyPath() throws(ParseError) -> [String] {
        var parts: [String] = []
        while true {
            skipBlanks()
            parts.append(try key())
            skipBlanks()
            guard current == "." else { return parts }
            advance()
        }
    }

    private mutating func key() throws(ParseError) -> String {
        switch current {
        case "\"": return try basicString()
        case "'": return try literalString()
        default:
            var out = ""
            while let c = current, c.isASCII, c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "_" || c == "-" {
                out.unicodeScalars.append(c)
                advance()
            }
            guard !out.isEmpty else { throw fail(current.map { "unexpected '\($0)' where a key was expected" } ?? "a key was expected") }
            return out
        }
    }

    private mutating func value() throws(ParseError) -> TOMLValue {
        guard let c = current else { throw fail("a value was expected") }
        switch c {
        case "\"":
            if position + 2 < chars.count, chars[position + 1] == "\"", chars[position + 2] == "\"" {
                throw fail("multi-line strings are not supported")
            }
            return .string(try basicString())
        case "'": return .string(try literalString())
        case "[": return try array()
        case "{": throw fail("inline tables ({...}) are not supported; use a [table] header")
        default:
            var word = ""
            while let c = current, ![" ", "\t", "\r", "\n", ",", "]", "#"].contains(c) {
                word.unicodeScalars.append(c)
                advance()
            }
            if word == "true" { return .bool(true) }
            if word == "false" { return .bool(false) }
            let digits = String(word.filter { $0 != "_" })
            if let i = Int64(digits) { return .integer(i) }
            if let d = Double(digits), digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) { return .float(d) }
            throw fail("'\(word)' is not a value (strings go in double quotes)")
        }
    }

    private mutating func array() throws(ParseError) -> TOMLValue {
        advance()  // [
        var items: [TOMLValue] = []
        while true {
            skipWhitespaceAndComments()
            if current == "]" { advance(); return .array(items) }
            items.append(try value())
            skipWhitespaceAndComments()
            if current == "," { advance(); continue }
            if current == "]" { advance(); return .array(items) }
            throw fail("expected ',' or ']' in an array")
        }
    }

    private mutating func basicString() throws(ParseError) -> String {
        advance()  // "
        var out = ""
        while true {
            guard let c = current, c != "\n" else { throw fail("unterminated string") }
            advance()
            if c == "\"" { return out }
            guard c == "\\" else { out.unicodeScalars.append(c); continue }
            guard let e = current else { throw fail("unterminated string") }
            advance()
            switch e {
            case "\"": out += "\""
            case "\\": out += "\\"
            case "n": out += "\n"
            case "t": out += "\t"
            case "r": out += "\r"
            case "b": out += "\u{8}"
            case "f": out += "\u{c}"
            case "u", "U":
                let count = e == "u" ? 4 : 8
                var hex = ""
                for _ in 0..<count {
                    guard let h = current, h.properties.isASCIIHexDigit else { throw fail("bad \\\(e) escape") }
                    hex.unicodeScalars.append(h)
                    advance()
                }
                guard let scalar = UInt32(hex, radix: 16).flatMap(Unicode.Scalar.init) else { throw fail("bad \\\(e) escape") }
                out.unicodeScalars.append(scalar)
            default: throw fail("unknown escape '\\\(e)' in a string")
            }
        }
    }

    private mutating func literalString() throws(ParseError) -> String {
        advance()  // '
        var out = ""
        while true {
            guard let c = current, c != "\n" else { throw fail("unterminated string") }
            advance()
            if c == "'" { return out }
            out.unicodeScalars.append(c)
        }
    }

    private static func ensureTable(_ table: inout [String: TOMLValue], _ path: [String], line: Int) throws(ParseError) {
        guard let first = path.first else { return }
        var child: [String: TOMLValue]
        switch table[first] {
        case nil: child = [:]
        case .table(let t)?: child = t
        case let other?: throw ParseError(line: line, message: "'\(first)' is \(other.typeName), not a table")
        }
        try ensureTable(&child, Array(path.dropFirst()), line: line)
        table[first] = .table(child)
    }

    private static func insert(_ table: inout [String: TOMLValue], _ path: [String], _ value: TOMLValue, line: Int) throws(ParseError) {
        let first = path[0]
        if path.count == 1 {
            guard table[first] == nil else { throw ParseError(line: line, message: "key '\(first)' is set twice") }
            table[first] = value
            return
        }
        var child: [String: TOMLValue]
        switch table[first] {
        case nil: child = [:]
        case .table(let t)?: child = t
        case let other?: throw ParseError(line: line, message: "'\(first)' is \(other.typeName), not a table")
        }
        try insert(&child, Array(path.dropFirst()), value, line: line)
        table[first] = .table(child)
    }
}
