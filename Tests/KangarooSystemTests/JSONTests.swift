import Testing
import KangarooSystem


@Suite struct JSONTests {
    @Test func parsesNestedDocumentAndKeepsNumberText() throws {
        let j = try JSON.parse(#"{"a": [1, -2, 18446744073709551615, 1.5e3], "b": {"c": null, "d": true}, "e": "x\"\u00e9\n"}"#)
        #expect(j["a"] == .array([.number("1"), .number("-2"), .number("18446744073709551615"), .number("1.5e3")]))
        #expect(j["b"]?["c"] == .null)
        #expect(j["b"]?["d"] == .bool(true))
        #expect(j["e"] == .string("x\"é\n"))
    }

    @Test func roundTripsThroughSerialization() throws {
        let text = #"{"id":"c1","n":[1,2,{"k":"v\\w\t"}],"empty":{},"list":[]}"#
        let j = try JSON.parse(text)
        #expect(j.serialized() == text)
        #expect(try JSON.parse(j.serialized(indent: "  ")) == j)
    }

    @Test func decodesSurrogatePairs() throws {
        #expect(try JSON.parse(#""\ud83d\ude00""#) == .string("😀"))
    }

    @Test(arguments: [
        "{", "[1,]", "{\"a\" 1}", "tru", "\"abc", "{} x", "[1 2]", "{\"a\":1,}", "-",
    ])
    func rejectsMalformedInput(_ text: String) {
        #expect(throws: JSONSyntaxError.self) { try JSON.parse(text) }
    }

    @Test func lastDuplicateKeyWins() throws {
        #expect(try JSON.parse(#"{"a":1,"a":2}"#)["a"] == .number("2"))
    }
}
