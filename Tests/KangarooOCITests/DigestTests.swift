import Testing
@testable import KangarooOCI

@Suite struct DigestTests {
    @Test func sha256OfKnownInput() throws {
        let d = Digest.sha256(of: Array("abc".utf8))
        #expect(d.description == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(d.bytes.count == 32)
        #expect(try Digest(sha256Bytes: d.bytes) == d)
    }

    @Test func incrementalHasherMatchesOneShot() {
        var h = DigestHasher()
        h.update(Array("ab".utf8))
        h.update(Array("c".utf8))
        #expect(h.finalize() == Digest.sha256(of: Array("abc".utf8)))
    }

    @Test(arguments: [
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha512:" + String(repeating: "a", count: 128),
    ])
    func parsesValid(_ s: String) throws {
        #expect(try Digest(parsing: s).description == s)
    }

    @Test(arguments: [
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:" + String(repeating: "g", count: 64),
    ])
    func rejectsInvalid(_ s: String) {
        #expect(throws: OCIError.self) { try Digest(parsing: s) }
    }

    @Test func codableRoundTrip() throws {
        let d = Digest.sha256(of: [1, 2, 3])
        let bytes = try CanonicalJSON.encode([d])
        #expect(try CanonicalJSON.decode([Digest].self, from: bytes, what: "test") == [d])
        #expect(throws: OCIError.self) { try CanonicalJSON.decode([Digest].self, from: Array("[\"sha256:zz\"]".utf8), what: "test") }
    }
}
