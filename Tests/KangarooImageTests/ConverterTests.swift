import Foundation
import KangarooOCI
import SystemPackage
import Testing
@testable import KangarooImage

/// Builds a small OCI layout with two layers written by Python's tarfile.
func makeSourceLayout(_ dir: TempDir) throws -> (OCILayout, ImageManifest) {
    let script = """
    import tarfile, io, sys, gzip
    def add(t, name, data=None, type=tarfile.REGTYPE, mode=0o644, linkname='', uid=0, mtime=1700000000):
        ti = tarfile.TarInfo(name); ti.type = type; ti.mode = mode; ti.uid = uid; ti.gid = uid; ti.mtime = mtime; ti.linkname = linkname
        if data is not None: ti.size = len(data)
        t.addfile(ti, io.BytesIO(data) if data is not None else None)
    out = sys.argv[1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
        add(t, './', type=tarfile.DIRTYPE, mode=0o755, mtime=1234)
        add(t, 'etc/', type=tarfile.DIRTYPE, mode=0o755)
        add(t, 'etc/passwd', b'root:x:0:0::/root:/bin/sh\\n')
        add(t, 'etc/old', b'old')
        add(t, 'usr/', type=tarfile.DIRTYPE)
        add(t, 'usr/bin/', type=tarfile.DIRTYPE)
        add(t, 'usr/bin/tool', bytes(range(256)) * 3000, mode=0o4755)
        add(t, 'usr/bin/same', bytes(range(256)) * 3000, mode=0o755)
        add(t, 'usr/lib/', type=tarfile.DIRTYPE)
        add(t, 'usr/lib/libx.so', b'ELF' * 50000)
        add(t, 'opq/', type=tarfile.DIRTYPE)
        add(t, 'opq/lower', b'lower')
    open(out + '/l1.tar.gz', 'wb').write(gzip.compress(buf.getvalue(), mtime=0))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
        add(t, 'etc/.wh.old', b'')
        add(t, 'etc/hosts', b'127.0.0.1 localhost\\n', uid=1000)
        add(t, 'usr/bin/tool-link', type=tarfile.LNKTYPE, linkname='usr/bin/tool')
        add(t, 'usr/bin/sh', type=tarfile.SYMTYPE, linkname='tool', mode=0o777)
        add(t, 'opq/.wh..wh..opq', b'')
        add(t, 'opq/upper', b'upper')
    open(out + '/l2.tar', 'wb').write(buf.getvalue())
    """
    try script.write(toFile: dir.path + "/mk.py", atomically: true, encoding: .utf8)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    p.arguments = [dir.path + "/mk.py", dir.path]
    try p.run()
    p.waitUntilExit()
    try #require(p.terminationStatus == 0)
    let layout = try OCILayout(at: FilePath(dir.path + "/src"), create: true)
    let l1 = try layout.writeBlob(bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir.path + "/l1.tar.gz"))), mediaType: MediaTypes.layerGzip)
    let l2 = try layout.writeBlob(bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir.path + "/l2.tar"))), mediaType: MediaTypes.layer)
    let config = try layout.writeBlob(bytes: Array(#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.utf8),
                                      mediaType: MediaTypes.imageConfig)
    let manifest = ImageManifest(config: config, layers: [l1, l2])
    return (layout, manifest)
}

@Suite struct ConverterTests {
    @Test func convertLoadCheckAndDedup() throws {
        let dir = try TempDir()
        let (source, manifest) = try makeSourceLayout(dir)
        let dest = try OCILayout(at: FilePath(dir.path + "/dst"), create: true)
        let converter = ImageConverter(options: BuildOptions(chunkSize: 1 << 16))
        let first = try converter.convert(source: source, manifest: manifest, destination: dest, tag: "kg")
        let second = try converter.convert(source: source, manifest: manifest, destination: dest, tag: "kg2")
        #expect(first.manifestDescriptor.digest == second.manifestDescriptor.digest)
        // The config is the source's with rootfs.diff_ids naming the Kangaroo
        // layers (what containerd's unpacker builds chain ids from).
        let sourceConfig = try JSONSerialization.jsonObject(with: Data(source.readBlob(manifest.config.digest, limit: 1 << 20))) as! [String: Any]
        let config = try JSONSerialization.jsonObject(with: Data(dest.readBlob(first.manifest.config.digest, limit: 1 << 20))) as! [String: Any]
        #expect((config["rootfs"] as? [String: Any])?["diff_ids"] as? [String] == first.manifest.layers.map(\.digest.description))
        #expect((config["rootfs"] as? [String: Any])?["type"] as? String == "layers")
        for key in sourceConfig.keys where key != "rootfs" {
            #expect(String(describing: config[key]) == String(describing: sourceConfig[key]), "\(key)")
        }
        #expect(first.manifest.layers[0].mediaType == KangarooMediaTypes.bootstrap)
        #expect(first.manifest.layers.allSatisfy { $0.annotations?[KangarooMediaTypes.snapshotLayerAnnotation] != nil })
        #expect(first.manifest.annotations?[KangarooMediaTypes.versionAnnotation] == "1")

        let image = try KangarooImage.load(from: dest, tag: "kg")
        let b = image.bootstrap
        let src = LayoutChunkSource(layout: dest, image: image)
        #expect(try b.readlink(b.lookup(path: "usr/bin/sh")) == "tool")
        #expect(try b.lookup(path: "usr/bin/tool").nid == b.lookup(path: "usr/bin/tool-link").nid)
        #expect(try b.lookup(path: "usr/bin/tool").mode == 0o104755)
        #expect(throws: ImageError.self) { try b.lookup(path: "etc/old") }
        #expect(throws: ImageError.self) { try b.lookup(path: "opq/lower") }
        #expect(try b.lookup(path: "").mtimeSeconds == 1234)
        let hosts = try b.lookup(path: "etc/hosts")
        #expect(hosts.uid == 1000)
        #expect(try b.readFile(hosts, offset: 0, length: 100, source: src) == Array("127.0.0.1 localhost\n".utf8))
        let tool = try b.lookup(path: "usr/bin/tool")
        #expect(try b.readFile(tool, offset: 0, length: 768_000, source: src) == Array((0..<768_000).map { UInt8($0 % 256) }))

        let summary = try image.inspect()
        #expect(summary.files == 6)
        #expect(summary.hardlinks == 1)
        #expect(summary.uniqueChunks < summary.chunks)
        #expect(first.stats.uniqueChunks == summary.uniqueChunks)

        let report = image.check(source: src)
        #expect(report.ok, "\(report.problems)")
        #expect(report.chunksChecked == b.chunks.count)

        // Converting again with the image as chunk dictionary stores no new blob.
        let withDict = ImageConverter(options: BuildOptions(chunkSize: 1 << 16), dictionaries: [image], dictionaryLayouts: [dest])
        let third = try withDict.convert(source: source, manifest: manifest, destination: dest, tag: "kg3")
        #expect(third.stats.newBytesStored == 0)
        #expect(third.manifest.layers.count == 2)
        #expect(third.manifest.layers[1].digest == first.manifest.layers[1].digest)

        // Corrupt one byte of the blob: check names blob, chunk and a path.
        let blobPath = dest.blobPath(image.blobDigest(0)).string
        var blob = [UInt8](try Data(contentsOf: URL(fileURLWithPath: blobPath)))
        let victim = b.chunks[0]
        blob[Int(victim.compressedOffset)] ^= 0x55
        try Data(blob).write(to: URL(fileURLWithPath: blobPath))
        let bad = image.check(source: src)
        #expect(!bad.ok)
        let chunkProblem = bad.problems.first { $0.chunkIndex == 0 }
        #expect(chunkProblem?.blobDigest == image.blobDigest(0).description)
        #expect(chunkProblem?.paths.isEmpty == false)
        #expect(bad.problems.contains { $0.message.contains("does not match its digest") && $0.chunkIndex == nil })
    }

    @Test func corruptSourceLayerIsRejected() throws {
        let dir = try TempDir()
        let (source, manifest) = try makeSourceLayout(dir)
        let path = source.blobPath(manifest.layers[1].digest).string
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[600] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let dest = try OCILayout(at: FilePath(dir.path + "/dst"), create: true)
        let result = Result { () throws(ImageError) in
            try ImageConverter(options: BuildOptions(chunkSize: 1 << 16)).convert(source: source, manifest: manifest, destination: dest, tag: "x")
        }
        guard case .failure(let error) = result else { Issue.record("corrupt layer accepted"); return }
        #expect(error.code == .digestMismatch)
        #expect(error.message.contains("layer 1"))
    }
}
