import Foundation
import KangarooTestSupport
import Testing

/// Hostile layers are rejected with a clear error or contained; nothing is
/// ever written outside the store or the target directory.
@Suite("hostile layers", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct ImageSafetyTests {
    static let rejectedCases: [(tag: String, message: String)] = [
        ("hostile-dotdot", "escapes"),
        ("hostile-symlink-write", "symlink"),
        ("hostile-hardlink-outside", "escapes"),
    ]

    @Test("rejected with an error naming the entry", arguments: rejectedCases)
    func rejected(_ c: (tag: String, message: String)) throws {
        let tmp = try TempDir("hostile")
        let before = try FileManager.default.contentsOfDirectory(atPath: "/tmp").sorted()
        let r = try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/synthetic:\(c.tag)", "bad"],
                             store: tmp.sub("store"), check: false)
        #expect(r.status != 0)
        #expect(r.stderr.lowercased().contains(c.message), "error does not explain the rejection: \(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count <= 3, "expected a short error, got: \(r.stderr)")
        // nothing tagged, nothing left behind outside the store
        let index = (try? String(contentsOfFile: tmp.sub("store/index.json"), encoding: .utf8)) ?? ""
        #expect(!index.contains("\"bad"))
        #expect(!FileManager.default.fileExists(atPath: "/escape"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/escape"))
        #expect(!FileManager.default.fileExists(atPath: "/etc/written-through"))
        let after = try FileManager.default.contentsOfDirectory(atPath: "/tmp").sorted()
        #expect(Set(after).subtracting(before).filter { !$0.hasPrefix("kangaroo-test-") }.isEmpty,
                "files left in /tmp: \(Set(after).subtracting(before))")
        let tmpInStore = try FileManager.default.contentsOfDirectory(atPath: tmp.sub("store/blobs")).filter { $0 != "sha256" }
        #expect(tmpInStore.allSatisfy { name in
            ((try? FileManager.default.contentsOfDirectory(atPath: tmp.sub("store/blobs/\(name)"))) ?? []).isEmpty
        }, "temporary files left in the store")
    }

    @Test("absolute paths are contained under the image root")
    func absoluteContained() throws {
        let tmp = try TempDir("hostile-abs")
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/synthetic:hostile-absolute", "abs"],
                     store: tmp.sub("store"))
        try kangaroo(["image", "unpack", "abs", tmp.sub("out")], store: tmp.sub("store"))
        let content = try String(contentsOfFile: tmp.sub("out/etc/absolute"), encoding: .utf8)
        #expect(content.hasPrefix("absolute path"))
        #expect(FileManager.default.fileExists(atPath: tmp.sub("out/abs-dir")))
        #expect(!FileManager.default.fileExists(atPath: "/etc/absolute"))
        #expect(!FileManager.default.fileExists(atPath: "/abs-dir"))
    }

    @Test("unpack refuses a non-empty target directory and writes nothing into it")
    func unpackTargetMustBeEmpty() throws {
        let tmp = try TempDir("unpack-target")
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", "s"], store: tmp.sub("store"))
        try FileManager.default.createDirectory(atPath: tmp.sub("out"), withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: tmp.sub("out/keep"), contents: Data("x".utf8))
        let r = try kangaroo(["image", "unpack", "s", tmp.sub("out")], store: tmp.sub("store"), check: false)
        #expect(r.status != 0)
        #expect(r.stderr.contains("not empty"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp.sub("out")) == ["keep"])
    }
}
