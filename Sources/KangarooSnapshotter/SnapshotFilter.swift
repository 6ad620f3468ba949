import Foundation

/// containerd's filter syntax (containerd/filters/filter.go) for List:
/// `field==value`, `field!=value`, `field~=regexp` or a bare field (present),
/// joined by `,` (and); several filters are alternatives (or). Fields: name,
/// parent, kind, labels.KEY or labels."KEY". Values may be quoted.
public struct SnapshotFilter: Sendable {
    enum Op: Sendable { case present, equal, notEqual, matches }
    struct Term: @unchecked Sendable {  // NSRegularExpression is immutable once built
        var field: [String]
        var op: Op
        var value: String
        var regex: NSRegularExpression?
    }
    private let alternatives: [[Term]]

    /// Parses the List request's filters; an empty list matches everything.
    public init(_ filters: [String]) throws(SnapshotterError) {
        var alternatives: [[Term]] = []
        for filter in filters where !filter.trimmingCharacters(in: .whitespaces).isEmpty {
            alternatives.append(try Self.parse(filter))
        }
        self.alternatives = alternatives
    }

    public func matches(_ s: Snapshot) -> Bool {
        if alternatives.isEmpty { return true }
        return alternatives.contains { terms in terms.allSatisfy { Self.test($0, s) } }
    }

    private static func test(_ t: Term, _ s: Snapshot) -> Bool {
        let value: String?
        switch t.field.first {
        case "name": value = s.name
        case "parent": value = s.parent ?? ""
        case "kind": value = s.kind.rawValue
        case "labels":
            value = t.field.count > 1 ? s.labels[t.field.dropFirst().joined(separator: ".")] : nil
        default: value = nil
        }
        switch t.op {
        case .present: return value != nil && !(value!.isEmpty && t.field.first == "parent")
        case .equal: return value == t.value
        case .notEqual: return value != t.value
        case .matches:
            guard let value, let regex = t.regex else { return false }
            return regex.firstMatch(in: value, range: NSRange(value.startIndex..., in: value)) != nil
        }
    }

    private static func parse(_ filter: String) throws(SnapshotterError) -> [Term] {
        var terms: [Term] = []
        var chars = Array(filter)
        chars.append(",")
        var i = 0
        func bad(_ why: String) -> SnapshotterError {
            SnapshotterError(.invalidArgument, "snapshot filter '\(filter)': \(why)")
        }
        func skipSpaces() { while i < chars.count, chars[i] == " " { i += 1 } }
        // A field component or value: bare characters or a "quoted" string.
        func token(stopAt stops: Set<Character>) throws(SnapshotterError) -> String {
            skipSpaces()
            if i < chars.count, chars[i] == "\"" || chars[i] == "/" {
                let quote = chars[i]
                i += 1
                var out = ""
                while i < chars.count, chars[i] != quote {
                    if chars[i] == "\\", i + 1 < chars.count { i += 1 }
                    out.append(chars[i])
                    i += 1
                }
                guard i < chars.count else { throw bad("unterminated quote") }
                i += 1
                return out
            }
            var out = ""
            while i < chars.count, !stops.contains(chars[i]) {
                out.append(chars[i])
                i += 1
            }
            return out.trimmingCharacters(in: .whitespaces)
        }
        while i < chars.count {
            var field: [String] = []
            while true {
                let part = try token(stopAt: [".", "=", "!", "~", ","])
                guard !part.isEmpty else { throw bad("empty field name") }
                field.append(part)
                skipSpaces()
                if i < chars.count, chars[i] == "." { i += 1; continue }
                break
            }
            guard ["name", "parent", "kind", "labels"].contains(field[0]) else {
                throw bad("unknown field '\(field[0])' (name, parent, kind, labels.KEY)")
            }
            skipSpaces()
            var op = Op.present
            if i + 1 < chars.count, chars[i + 1] == "=" {
                switch chars[i] {
                case "=": op = .equal
                case "!": op = .notEqual
                case "~": op = .matches
                default: throw bad("unknown operator at '\(chars[i])'")
                }
                i += 2
            } else if chars[i] != "," {
                throw bad("expected ==, != or ~= after '\(field.joined(separator: "."))'")
            }
            var value = ""
            var regex: NSRegularExpression?
            if op != .present {
                value = try token(stopAt: [","])
                if op == .matches {
                    do { regex = try NSRegularExpression(pattern: value) } catch {
                        throw bad("invalid regular expression '\(value)'")
                    }
                }
            }
            skipSpaces()
            guard i < chars.count, chars[i] == "," else { throw bad("expected ',' after '\(value)'") }
            i += 1
            terms.append(Term(field: field, op: op, value: value, regex: regex))
        }
        return terms
    }
}
