import Foundation
import KangarooTestSupport
import Testing

/// The kernel is the oracle: every test image, converted, materialized and
/// mounted with the kernel's EROFS driver, must equal `umoci unpack` of the
/// same OCI image, and so must `kangaroo image unpack`.
@Suite("Kangaroo images vs umoci, through the kernel's EROFS driver", .serialized,
       .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct ImageOracleTests {
    static let images: [(layout: String, tag: String)] = [
        ("sample", "latest"),
        ("synthetic", "synthetic"),
        ("debian-python", "base"),
        ("debian-python", "python"),
    ]

    @Test("kernel EROFS mount and unpack equal umoci unpack", arguments: images)
    func kernelMountEqualsUmoci(image: (layout: String, tag: String)) throws {
        let tmp = try TempDir("oracle")
        let store = tmp.sub("store")
        let source = "oci:\(TestEnv.images)/\(image.layout):\(image.tag)"
        try kangaroo(["image", "convert", "--quiet", source, "img:\(image.tag)"], store: store)
        try kangaroo(["image", "check", "img:\(image.tag)"], store: store)

        try run("umoci", ["unpack", "--image", "\(TestEnv.images)/\(image.layout):\(image.tag)", tmp.sub("umoci")],
                check: true)
        let reference = tmp.sub("umoci/rootfs")

        try kangaroo(["image", "materialize", "--mount", tmp.sub("mnt"), "img:\(image.tag)", tmp.sub("erofs")],
                     store: store)
        // findmnt, not a read of /proc/self/mounts: with many mounts (other
        // suites' containers) one read of that file may stop short.
        let type = try run("findmnt", ["-n", "-o", "FSTYPE", "--mountpoint", tmp.sub("mnt")]).stdout
        #expect(type.trimmingCharacters(in: .whitespacesAndNewlines) == "erofs", "materialize --mount did not leave an erofs mount")
        try expectSameTree(reference, tmp.sub("mnt"), "kernel EROFS mount vs umoci unpack of \(image)")
        #expect(umount(tmp.sub("mnt")) == 0)

        try kangaroo(["image", "unpack", "img:\(image.tag)", tmp.sub("unpacked")], store: store)
        try expectSameTree(reference, tmp.sub("unpacked"), "kangaroo image unpack vs umoci unpack of \(image)")
    }

    @Test("conversion is deterministic: same input and options give the same digests")
    func deterministic() throws {
        let tmp = try TempDir("determinism")
        let source = "oci:\(TestEnv.images)/synthetic:synthetic"
        var digests: [String] = []
        for store in ["a", "b"] {
            try kangaroo(["image", "convert", "--quiet", source, "img"], store: tmp.sub(store))
            let index = try String(contentsOfFile: tmp.sub("\(store)/index.json"), encoding: .utf8)
            digests.append(index)
        }
        #expect(digests[0] == digests[1])
        let blobs = try FileManager.default.contentsOfDirectory(atPath: tmp.sub("a/blobs/sha256")).sorted()
        let blobsB = try FileManager.default.contentsOfDirectory(atPath: tmp.sub("b/blobs/sha256")).sorted()
        #expect(blobs == blobsB)
    }
}
