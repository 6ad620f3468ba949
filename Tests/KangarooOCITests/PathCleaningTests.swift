import Testing
@testable import KangarooOCI

@Suite struct PathCleaningTests {
    @Test(arguments: [
        ("etc/passwd", "etc/passwd"),
        ("/etc/passwd", "etc/passwd"),
        ("./etc/passwd", "etc/passwd"),
        ("././etc//passwd", "etc/passwd"),
        ("usr/bin/", "usr/bin"),
        ("a/./b/../c", "a/c"),
        ("a/b/../../c", "c"),
        ("///x", "x"),
        (".wh..wh..opq", ".wh..wh..opq"),
        ("dir/.wh.file", "dir/.wh.file"),
        ("..a/b..", "..a/b.."),
        ("...", "..."),
    ])
    func cleans(_ raw: String, _ clean: String) throws {
        #expect(try LayerEntry.cleanPath(raw) == clean)
    }

    @Test(arguments: ["/", ".", "./", "//", "a/..", "./a/b/../.."])
    func rootIsNil(_ raw: String) throws {
        #expect(try LayerEntry.cleanPath(raw) == nil)
    }

    @Test(arguments: ["..", "../x", "/../x", "a/../../x", "./../etc/passwd", "a/b/../../../c"])
    func hostileEscapesAreRejected(_ raw: String) {
        do {
            let p = try LayerEntry.cleanPath(raw)
            Issue.record("'\(raw)' cleaned to \(String(describing: p))")
        } catch {
            #expect(error.code == .hostileEntry)
            #expect(error.message.contains("escapes the image root"))
        }
    }

    @Test func longComponentsAreRejected() throws {
        #expect(try LayerEntry.cleanPath(String(repeating: "a", count: 255)) != nil)
        #expect(throws: OCIError.self) { try LayerEntry.cleanPath("d/" + String(repeating: "a", count: 256)) }
        #expect(throws: OCIError.self) { try LayerEntry.cleanPath("") }
    }
}
