import SystemPackage
import Testing
@testable import KangarooOCI

@Suite struct ReferenceTests {
    struct Case: Sendable, CustomStringConvertible {
        var input: String
        var host: String
        var repository: String
        var tag: String?
        var digest: String?
        var description: String { input }
    }

    static let digest = "sha256:" + String(repeating: "ab", count: 32)

    @Test(arguments: [
        Case(input: "debian", host: "docker.io", repository: "library/debian"),
        Case(input: "debian:12", host: "docker.io", repository: "library/debian", tag: "12"),
        Case(input: "127.0.0.1:5000/debian:12", host: "127.0.0.1:5000", repository: "debian", tag: "12"),
        Case(input: "localhost/a/b/c", host: "localhost", repository: "a/b/c"),
        Case(input: "ghcr.io/org/app:v1.2-rc_3", host: "ghcr.io", repository: "org/app", tag: "v1.2-rc_3"),
        Case(input: "ghcr.io/org/app@\(digest)", host: "ghcr.io", repository: "org/app", digest: digest),
        Case(input: "registry.example.com:443/x/y:t@\(digest)", host: "registry.example.com:443", repository: "x/y", tag: "t", digest: digest),
        Case(input: "user/repo", host: "docker.io", repository: "user/repo"),
        Case(input: "a.b/c__d/e---f/g.h", host: "a.b", repository: "c__d/e---f/g.h"),
    ])
    func parses(_ c: Case) throws {
        let r = try Reference(parsing: c.input)
        #expect(r.host == c.host)
        #expect(r.repository == c.repository)
        #expect(r.tag == c.tag)
        #expect(r.digest?.description == c.digest)
        #expect(r.manifestReference == (c.digest ?? c.tag ?? "latest"))
    }

    @Test(arguments: [
        ("", "empty"),
        ("Debian:12", "lowercase"),
        ("127.0.0.1:5000/Debian", "lowercase"),
        ("127.0.0.1:99999/debian", "port"),
        ("127.0.0.1:5000/", "no repository"),
        ("debian:", "tag"),
        ("debian:-bad", "tag"),
        ("debian@sha256:123", "digest"),
        ("ghcr.io/org//app", "empty path component"),
        ("ghcr.io/org/-app", "start and end"),
        ("ghcr.io/org/a..b", "invalid characters"),
        ("ghcr.io/org/a b", "invalid characters"),
    ])
    func rejects(_ input: String, _ complaint: String) {
        do {
            let r = try Reference(parsing: input)
            Issue.record("parsed '\(input)' as \(r)")
        } catch {
            #expect(error.code == .invalidReference)
            #expect(error.message.contains(complaint), "message: \(error.message)")
        }
    }

    @Test func descriptionRoundTrips() throws {
        let r = try Reference(parsing: "127.0.0.1:5000/a/b:c@\(Self.digest)")
        #expect(try Reference(parsing: r.description) == r)
    }

    enum Expected: Sendable {
        case registry(String)
        case layout(String, String)
        case store(String)
    }

    @Test(arguments: [
        ("oci:/tmp/dir:v1", Expected.layout("/tmp/dir", "v1")),
        ("oci:/tmp/dir", Expected.layout("/tmp/dir", "latest")),
        ("oci:relative/dir:tag", Expected.layout("relative/dir", "tag")),
        ("oci:/tmp/a:b/dir", Expected.layout("/tmp/a:b/dir", "latest")),
        ("127.0.0.1:5000/debian:12", Expected.registry("127.0.0.1:5000/debian:12")),
        ("localhost/app", Expected.registry("localhost/app")),
        ("docker.io/library/debian:12", Expected.registry("docker.io/library/debian:12")),
        ("docker://debian:12", Expected.registry("docker.io/library/debian:12")),
        ("sample:latest", Expected.store("sample:latest")),
        ("debian-python", Expected.store("debian-python")),
        ("library/debian", Expected.store("library/debian")),
    ])
    func imageLocations(_ input: String, _ expected: Expected) throws {
        let location = try ImageLocation.parse(input)
        switch (location, expected) {
        case (.registry(let r), .registry(let s)): #expect(r.description == s)
        case (.ociLayout(let p, let t), .layout(let ep, let et)):
            #expect(p == FilePath(ep))
            #expect(t == et)
        case (.store(let n), .store(let en)): #expect(n == en)
        default: Issue.record("\(input) parsed as \(location)")
        }
    }

    @Test(arguments: ["", "oci:", "oci::tag", "oci:/dir:", "127.0.0.1:5000/UPPER", "has space"])
    func rejectsLocations(_ input: String) {
        #expect(throws: OCIError.self) { try ImageLocation.parse(input) }
    }

    @Test(arguments: [
        ("linux/amd64", "amd64", nil as String?),
        ("linux/arm64/v8", "arm64", "v8"),
    ])
    func platforms(_ s: String, _ arch: String, _ variant: String?) throws {
        let p = try Platform(parsing: s)
        #expect(p.os == "linux" && p.architecture == arch && p.variant == variant)
        #expect(p.description == s)
    }
}
