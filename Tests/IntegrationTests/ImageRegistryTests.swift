import Foundation
import KangarooTestSupport
import Testing

/// Kangaroo images through a real registry (Debian's docker-registry on
/// 127.0.0.1), OCI images put there with skopeo.
@Suite("registry", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct ImageRegistryTests {
    func skopeoCopy(_ layout: String, _ tag: String, to ref: String, creds: String? = nil) throws {
        var args = ["copy", "--quiet", "--dest-tls-verify=false", "oci:\(TestEnv.images)/\(layout):\(tag)", "docker://\(ref)"]
        if let creds { args.insert(contentsOf: ["--dest-creds", creds], at: 1) }
        try run("skopeo", args, check: true)
    }

    @Test("convert registry -> registry, pull into a fresh store, check, mount: equal to umoci")
    func roundTrip() throws {
        let registry = try TestRegistry()
        let tmp = try TempDir("registry")
        try skopeoCopy("sample", "latest", to: "\(registry.host)/library/sample:latest")
        try kangaroo(["image", "convert", "--quiet", "\(registry.host)/library/sample:latest",
                      "\(registry.host)/library/sample:kangaroo"], store: tmp.sub("store1"))
        // a store that has never seen the image
        try kangaroo(["image", "pull", "--quiet", "\(registry.host)/library/sample:kangaroo", "pulled"], store: tmp.sub("store2"))
        try kangaroo(["image", "check", "pulled"], store: tmp.sub("store2"))
        try run("umoci", ["unpack", "--image", "\(TestEnv.images)/sample:latest", tmp.sub("umoci")], check: true)
        try kangaroo(["image", "materialize", "--mount", tmp.sub("mnt"), "pulled", tmp.sub("erofs")], store: tmp.sub("store2"))
        try expectSameTree(tmp.sub("umoci/rootfs"), tmp.sub("mnt"), "pulled image mounted by the kernel")
        // push to another repository (cross-repository mount of existing blobs) and pull back
        try kangaroo(["image", "push", "--quiet", "pulled", "\(registry.host)/other/sample:v1"], store: tmp.sub("store2"))
        try kangaroo(["image", "pull", "--quiet", "\(registry.host)/other/sample:v1", "again"], store: tmp.sub("store3"))
        try kangaroo(["image", "check", "again"], store: tmp.sub("store3"))
        // the registry serves what skopeo sees as a valid OCI manifest
        let r = try run("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(registry.host)/other/sample:v1"], check: true)
        #expect(r.stdout.contains("application/vnd.oci.image.layer.kangaroo.bootstrap.v1"))
    }

    /// Every file below `dir` with its SHA-256, to show a directory unchanged.
    func snapshot(_ dir: String) throws -> String {
        guard FileManager.default.fileExists(atPath: dir) else { return "" }
        return try run("/bin/sh", ["-c", "cd '\(dir)' && find . -type f | sort | xargs -r sha256sum"], check: true).stdout
    }

    @Test("check of a registry reference verifies the bytes the registry serves, not the store's copy")
    func checkReadsTheRegistry() throws {
        let registry = try TestRegistry()
        let tmp = try TempDir("registry-check")
        let good = tmp.sub("store")
        let ref = "\(registry.host)/check/sample:v1"
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", ref], store: good)
        let clean = try kangaroo(["image", "check", "--quiet", ref], store: tmp.sub("empty"))
        #expect(clean.stdout.contains("OK"), "\(clean.output)")
        let info = try inspect(ref, store: good)
        let blob = info.blobs[0]
        let hex = String(blob.digest.dropFirst("sha256:".count))
        let data = registry.dir.sub("data/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data")
        try flipByte(data, at: UInt64(Double(blob.compressedSize) * 0.4))
        let before = try snapshot(good)
        // Whether or not the store holds a good copy, the registry's bad byte is found.
        for store in [good, tmp.sub("empty")] {
            let r = try kangaroo(["image", "check", "--quiet", ref], store: store, check: false)
            #expect(r.status != 0)
            #expect(r.output.contains("blob \(blob.digest)"), "check does not name the blob: \(r.output)")
            #expect(r.output.contains("blob content does not match its digest"), "\(r.output)")
            #expect(r.output.contains("; chunk "), "check does not name the chunk: \(r.output)")
            #expect(r.output.contains("compressed offset"), "\(r.output)")
            #expect(r.output.contains("used by /"), "check names no file path: \(r.output)")
        }
        #expect(try snapshot(good) == before, "check changed the store")
        #expect(try snapshot(tmp.sub("empty")) == "", "check wrote into an empty store")
    }

    @Test("htpasswd auth: wrong or missing credentials fail clearly, right ones work")
    func basicAuth() throws {
        let registry = try TestRegistry(user: "kangaroo", password: "s3cret")
        let tmp = try TempDir("registry-auth")
        try skopeoCopy("sample", "latest", to: "\(registry.host)/sample:latest", creds: "kangaroo:s3cret")
        let anonymous = try kangaroo(["image", "convert", "--quiet", "\(registry.host)/sample:latest", "s"],
                                     store: tmp.sub("store"), check: false)
        #expect(anonymous.status != 0)
        #expect(anonymous.stderr.contains("requires a username and password") || anonymous.stderr.contains("401"),
                "\(anonymous.stderr)")
        let wrong = try kangaroo(["image", "convert", "--quiet", "\(registry.host)/sample:latest", "s"], store: tmp.sub("store"),
                                 env: ["KANGAROO_REGISTRY_USER": "kangaroo", "KANGAROO_REGISTRY_PASSWORD": "wrong"], check: false)
        #expect(wrong.status != 0)
        let creds = ["KANGAROO_REGISTRY_USER": "kangaroo", "KANGAROO_REGISTRY_PASSWORD": "s3cret"]
        try kangaroo(["image", "convert", "--quiet", "\(registry.host)/sample:latest", "\(registry.host)/sample:kangaroo"],
                     store: tmp.sub("store"), env: creds)
        try kangaroo(["image", "pull", "--quiet", "\(registry.host)/sample:kangaroo", "p"], store: tmp.sub("store2"), env: creds)
        try kangaroo(["image", "check", "p"], store: tmp.sub("store2"))
    }

    @Test("the Debian+python image through the registry")
    func debianPython() throws {
        let registry = try TestRegistry()
        let tmp = try TempDir("registry-debian")
        try skopeoCopy("debian-python", "python", to: "\(registry.host)/debian:python")
        try kangaroo(["image", "convert", "--quiet", "\(registry.host)/debian:python", "\(registry.host)/debian:python-kangaroo"],
                     store: tmp.sub("store1"))
        try kangaroo(["image", "pull", "--quiet", "\(registry.host)/debian:python-kangaroo", "p"], store: tmp.sub("store2"))
        try kangaroo(["image", "check", "p"], store: tmp.sub("store2"))
        let a = try inspect("p", store: tmp.sub("store2"))
        #expect(a.files > 5000)
    }

    @Test("an unreachable registry fails within the timeout with a clear error")
    func unreachable() throws {
        let tmp = try TempDir("registry-down")
        let port = try TestRegistry.freePort()
        let start = Date()
        let r = try kangaroo(["image", "pull", "--quiet", "127.0.0.1:\(port)/nothing:here", "x"], store: tmp.sub("store"),
                             env: ["KANGAROO_REGISTRY_RETRIES": "2"], check: false)
        #expect(r.status != 0)
        #expect(Date().timeIntervalSince(start) < 60)
        #expect(r.stderr.contains("127.0.0.1:\(port)"), "\(r.stderr)")
    }
}
