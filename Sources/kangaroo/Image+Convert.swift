import ArgumentParser
import Foundation
import KangarooImage
import KangarooOCI
import SystemPackage

extension ImageCommand {
    struct Convert: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Convert an OCI image into a Kangaroo image (EROFS bootstrap + deduplicated chunk blobs).",
            discussion: """
            SRC and DST are a store name (NAME[:TAG]), a registry reference (HOST[:PORT]/REPO[:TAG]) or an \
            OCI layout (oci:DIR[:TAG]). A registry DST is converted into the store, then pushed.
            """)

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The OCI image to convert.") var source: String
        @Argument(help: "Where to store the Kangaroo image (default place: the local store).") var destination: String

        @Option(help: "Chunk size, a power of two from 64K to 16M (K/M suffixes allowed).")
        var chunkSize: String = "1M"
        @Option(help: "Chunk compression: zstd, lz4 or none.")
        var compression: String = "zstd"
        @Option(help: "Compression level (zstd 1-19, lz4 1-12 = HC; default zstd 3, lz4 fast).")
        var level: Int32?
        @Option(name: .customLong("chunk-dict"), help: "A Kangaroo image whose chunks are reused (repeatable).")
        var chunkDicts: [String] = []
        @Option(help: "File of paths in first-access order: their chunks go first in the first blob.")
        var prefetchList: String?
        @Flag(help: "Print the conversion statistics as JSON.") var json = false

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            do {
                let buildOptions = try makeBuildOptions()
                let sourceLocation = try ImageLocation.parse(source)
                let destinationLocation = try ImageLocation.parse(destination)

                let (sourceLayout, sourceTag) = try await options.openImage(sourceLocation, logger: logger, progress: progress)
                let manifestDescriptor = try sourceLayout.resolve(tag: sourceTag)
                let manifest = try sourceLayout.readManifest(manifestDescriptor)
                if manifest.layers.first.map { KangarooMediaTypes.isBootstrap($0.mediaType) } == true {
                    throw CLIError("\(source) is already a Kangaroo image")
                }

                var dictionaries: [KangarooImage] = []
                var dictionaryLayouts: [OCILayout] = []
                for ref in chunkDicts {
                    let (layout, tag) = try await options.openImage(try ImageLocation.parse(ref), logger: logger, progress: progress)
                    do { dictionaries.append(try KangarooImage.load(from: layout, tag: tag)) } catch {
                        throw CLIError("--chunk-dict \(ref): \(error)")
                    }
                    dictionaryLayouts.append(layout)
                }

                let (destLayout, destTag, pushTo): (OCILayout, String, Reference?) = try {
                    switch destinationLocation {
                    case .store(let name): return (try options.openStore(), storeTag(name), nil)
                    case .ociLayout(let path, let tag): return (try OCILayout(at: path, create: true), tag, nil)
                    case .registry(let reference): return (try options.openStore(), reference.description, reference)
                    }
                }()

                let converter = ImageConverter(options: buildOptions, dictionaries: dictionaries,
                                               dictionaryLayouts: dictionaryLayouts) { phase, done, total in
                    progress.update(phase.label, done: done, total: total > 0 ? total : nil,
                                    unit: phase == .readingLayers || phase == .compressing ? .bytes : .items)
                }
                let start = ContinuousClock.now
                let result = try converter.convert(source: sourceLayout, manifest: manifest, destination: destLayout, tag: destTag)
                progress.finish()
                let elapsed = ContinuousClock.now - start

                if let pushTo {
                    try await options.withRegistry(pushTo, logger: logger) { client in
                        try await ImageTransfer(client: client, logger: logger).push(from: destLayout, tag: destTag, to: pushTo) { done, total in
                            progress.update("pushing \(pushTo)", done: done, total: total)
                        }
                    }
                    progress.finish()
                }

                if json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                    print(String(decoding: try encoder.encode(result.stats), as: UTF8.self))
                } else {
                    let s = result.stats
                    print("converted \(source) -> \(destination) in \(elapsed.seconds) s")
                    print("  \(s.files) files, \(s.directories) directories, \(formatBytes(Int64(s.bytes))) in files")
                    print("  \(s.chunks) chunks, \(s.uniqueChunks) unique (dedup ratio \(String(format: "%.2f", s.dedupRatio))), "
                          + "\(formatBytes(Int64(s.compressedSize))) compressed, \(formatBytes(Int64(s.newBytesStored))) new in the store")
                    print("  manifest \(result.manifestDescriptor.digest)")
                }
            } catch {
                progress.finish()
                fail(error)
            }
        }

        func makeBuildOptions() throws -> BuildOptions {
            var o = BuildOptions()
            guard let size = parseSize(chunkSize) else {
                throw CLIError("--chunk-size '\(chunkSize)' is not a size (examples: 64K, 1M, 4194304)")
            }
            guard size >= 64 << 10, size <= 16 << 20, size & (size - 1) == 0 else {
                throw CLIError("--chunk-size \(chunkSize) must be a power of two from 64K to 16M")
            }
            o.chunkSize = size
            switch compression.lowercased() {
            case "zstd": o.compression = .zstd
            case "lz4": o.compression = .lz4; o.level = 0
            case "none": o.compression = .none
            default: throw CLIError("--compression '\(compression)' is not one of zstd, lz4, none")
            }
            if let level {
                let range: ClosedRange<Int32> = o.compression == .lz4 ? 0...12 : 1...19
                guard range.contains(level) else {
                    throw CLIError("--level \(level) is out of range \(range.lowerBound)-\(range.upperBound) for \(compression)")
                }
                o.level = level
            }
            if let prefetchList {
                guard let text = try? String(contentsOfFile: prefetchList, encoding: .utf8) else {
                    throw CLIError("--prefetch-list: cannot read '\(prefetchList)' as UTF-8 text")
                }
                var paths: [String] = []
                for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                    let line = raw.trimmingCharacters(in: .whitespaces)
                    if line.isEmpty || line.hasPrefix("#") { continue }
                    guard line.hasPrefix("/") else {
                        throw CLIError("--prefetch-list \(prefetchList):\(n + 1): '\(line)' is not an absolute path")
                    }
                    paths.append(line)
                }
                o.prefetch = paths
            }
            return o
        }
    }
}

/// "64K", "1M", "1048576" -> bytes.
func parseSize(_ s: String) -> Int? {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased()
    let multipliers: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = t.last, let m = multipliers[last] {
        var digits = String(t.dropLast())
        if digits.hasSuffix("I") { digits.removeLast() }
        return Int(digits).map { $0 * m }
    }
    if t.hasSuffix("IB") || t.hasSuffix("B") {
        return parseSize(String(t.dropLast(t.hasSuffix("IB") ? 2 : 1)))
    }
    return Int(t)
}

extension ConvertPhase {
    var label: String {
        switch self {
        case .readingLayers: "reading layers"
        case .compressing: "compressing chunks"
        case .assemblingBlob: "writing blob"
        case .writingBootstrap: "writing bootstrap"
        case .storing: "storing"
        }
    }
}

extension Duration {
    var seconds: String {
        let (s, atto) = components
        return String(format: "%.2f", Double(s) + Double(atto) / 1e18)
    }
}
