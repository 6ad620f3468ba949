import Foundation
import KangarooOCI
import SystemPackage
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import KangarooImage

/// Measurement, not a unit test: converts the image tagged `latest` of the
/// OCI layout named by KANGAROO_IMAGE_BENCH_LAYOUT with each compression and
/// prints sizes next to the source layers' size.
@Suite struct BenchTests {
    static let layoutPath = ProcessInfo.processInfo.environment["KANGAROO_IMAGE_BENCH_LAYOUT"]

    @Test(.enabled(if: layoutPath != nil, "set KANGAROO_IMAGE_BENCH_LAYOUT"),
          arguments: [(ChunkCompression.zstd, Int32(3)), (.zstd, 5), (.zstd, 6), (.zstd, 7), (.lz4, 0)].filter { c in
              ProcessInfo.processInfo.environment["KANGAROO_IMAGE_BENCH_LEVEL"].map { l in "\(c.0.name)\(c.1)" == l } ?? true
          })
    func compressionAgainstSourceLayers(_ compression: ChunkCompression, level: Int32) throws {
        let source = try OCILayout(at: FilePath(Self.layoutPath ?? ""), create: false)
        let manifest = try source.readManifest(source.resolve(tag: "latest"))
        let dir = try TempDir()
        let dest = try OCILayout(at: FilePath(dir.path + "/dst"), create: true)
        let start = ContinuousClock.now
        var options = BuildOptions(compression: compression, level: level)
        if let w = ProcessInfo.processInfo.environment["KANGAROO_IMAGE_BENCH_WORKERS"].flatMap(Int.init) { options.workers = w }
        let result = try ImageConverter(options: options)
            .convert(source: source, manifest: manifest, destination: dest, tag: "bench")
        let elapsed = ContinuousClock.now - start
        let sourceBytes = manifest.layers.reduce(Int64(0)) { $0 + $1.size }
        print("BENCH \(compression.name) level \(level) workers \(options.workers): source layers \(sourceBytes) B, blobs \(result.stats.compressedSize) B, bootstrap \(result.stats.bootstrapSize) B, files \(result.stats.files), chunks \(result.stats.chunks), unique \(result.stats.uniqueChunks), \(elapsed)")
        #expect(result.stats.compressedSize > 0)
    }
}

/// With KANGAROO_IMAGE_BENCH_LAYOUT and KANGAROO_IMAGE_BENCH_ROOTFS (the
/// directory the layout's single layer was made from) and integration
/// enabled: convert, materialize, mount with the kernel, diff against the
/// rootfs and run python3 from the mounted image.
@Suite struct BenchMountTests {
    static let rootfs = ProcessInfo.processInfo.environment["KANGAROO_IMAGE_BENCH_ROOTFS"]

    @Test(.enabled(if: BenchTests.layoutPath != nil && rootfs != nil && integrationEnabled, "set KANGAROO_IMAGE_BENCH_LAYOUT/ROOTFS"))
    func realImageMountsAndRuns() throws {
        let source = try OCILayout(at: FilePath(BenchTests.layoutPath ?? ""), create: false)
        let manifest = try source.readManifest(source.resolve(tag: "latest"))
        let dir = try TempDir()
        let dest = try OCILayout(at: FilePath(dir.path + "/dst"), create: true)
        let result = try ImageConverter().convert(source: source, manifest: manifest, destination: dest, tag: "deb")
        let image = try KangarooImage.load(from: dest, tag: "deb")
        let files = try image.materialize(to: dir.path + "/m", source: LayoutChunkSource(layout: dest, image: image))
        let mnt = dir.path + "/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try #require(mount(files.bootstrapPath, mnt, "erofs", UInt(MS_RDONLY), files.mountOptions) == 0)
        defer { umount2(mnt, Int32(MNT_DETACH)) }
        func run(_ args: [String]) throws -> (Int32, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: args[0])
            p.arguments = Array(args.dropFirst())
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            try p.run()
            let out = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: out, as: UTF8.self))
        }
        let (diffStatus, diffOut) = try run(["/usr/bin/diff", "-r", "--no-dereference", Self.rootfs ?? "", mnt])
        #expect(diffStatus == 0, "\(diffOut.prefix(2000))")
        // Metadata: type+mode, owner, size (not for dirs), mtime, link target, link count of files.
        let format = "%P %M %U %G %T@ %l\\n"
        let (_, fromRoot) = try run(["/bin/sh", "-c", "cd '\(Self.rootfs ?? "")' && find . -printf '\(format)' | sort"])
        let (_, fromMount) = try run(["/bin/sh", "-c", "cd '\(mnt)' && find . -printf '\(format)' | sort"])
        #expect(fromRoot.split(separator: "\n").count > 1000)
        #expect(fromRoot == fromMount)
        let (pyStatus, pyOut) = try run(["/usr/sbin/chroot", mnt, "/usr/bin/python3", "-c", "import json, sqlite3; print(json.dumps({'ok': sqlite3.sqlite_version != ''}))"])
        #expect(pyStatus == 0 && pyOut.contains("\"ok\": true"), "\(pyOut)")
        print("BENCH mount: \(result.stats.files) files, \(result.stats.compressedSize) B blobs, diff \(diffStatus), python \(pyStatus)")
    }
}
