import Foundation
import KangarooOCI
import SystemPackage
import Testing
@testable import KangarooImage

/// Measurement, not a unit test: converts the image tagged `latest` of the
/// OCI layout named by KANGAROO_IMAGE_BENCH_LAYOUT with each compression and
/// prints sizes next to the source layers' size.
@Suite struct BenchTests {
    static let layoutPath = ProcessInfo.processInfo.environment["KANGAROO_IMAGE_BENCH_LAYOUT"]

    @Test(.enabled(if: layoutPath != nil, "set KANGAROO_IMAGE_BENCH_LAYOUT"),
          arguments: [(ChunkCompression.zstd, Int32(3)), (.zstd, 9), (.lz4, 0), (.lz4, 9)])
    func compressionAgainstSourceLayers(_ compression: ChunkCompression, level: Int32) throws {
        let source = try OCILayout(at: FilePath(Self.layoutPath ?? ""), create: false)
        let manifest = try source.readManifest(source.resolve(tag: "latest"))
        let dir = try TempDir()
        let dest = try OCILayout(at: FilePath(dir.path + "/dst"), create: true)
        let start = ContinuousClock.now
        let result = try ImageConverter(options: BuildOptions(compression: compression, level: level))
            .convert(source: source, manifest: manifest, destination: dest, tag: "bench")
        let elapsed = ContinuousClock.now - start
        let sourceBytes = manifest.layers.reduce(Int64(0)) { $0 + $1.size }
        print("BENCH \(compression.name) level \(level): source layers \(sourceBytes) B, blobs \(result.stats.compressedSize) B, bootstrap \(result.stats.bootstrapSize) B, files \(result.stats.files), chunks \(result.stats.chunks), unique \(result.stats.uniqueChunks), \(elapsed)")
        #expect(result.stats.compressedSize > 0)
    }
}
