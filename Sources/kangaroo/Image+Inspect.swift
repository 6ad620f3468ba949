import ArgumentParser
import Foundation
import KangarooChunks
import KangarooImage
import KangarooLazyFS
import KangarooOCI
import Logging

extension GlobalOptions {
    /// Loads the Kangaroo image `ref` names (a registry image is pulled into the store first).
    func openKangarooImage(_ ref: String, logger: Logger, progress: TerminalProgress) async throws -> (KangarooImage, OCILayout) {
        let (layout, tag) = try await openImage(try ImageLocation.parse(ref), logger: logger, progress: progress)
        let descriptor = try layout.resolve(tag: tag)
        let manifest = try layout.readManifest(descriptor)
        guard manifest.layers.first.map { KangarooMediaTypes.isBootstrap($0.mediaType) } == true else {
            throw CLIError("\(ref) is an OCI image, not a Kangaroo image: convert it first (kangaroo image convert \(ref) NAME)")
        }
        return (try KangarooImage.load(from: layout, descriptor: descriptor), layout)
    }
}

extension ImageCommand {
    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a Kangaroo image: files, bytes, chunks, dedup ratio, blobs, prefetch list.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The image (store name, registry reference or oci:DIR:TAG).") var reference: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            do {
                let (image, _) = try await options.openKangarooImage(reference, logger: logger, progress: progress)
                let s = try image.inspect()
                if json {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                    var object = try JSONSerialization.jsonObject(with: encoder.encode(s)) as? [String: Any] ?? [:]
                    object["reference"] = reference
                    object["manifestDigest"] = image.manifestDescriptor?.digest.description
                    object["prefetch"] = image.bootstrap.prefetch
                    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                    return
                }
                func row(_ k: String, _ v: String) { print(k.padding(toLength: 13, withPad: " ", startingAt: 0) + v) }
                row("image", reference)
                if let d = image.manifestDescriptor { row("manifest", d.digest.description) }
                row("bootstrap", "\(s.bootstrapDigest) (\(formatBytes(Int64(s.bootstrapSize))))")
                row("entries", "\(s.files) files, \(s.directories) directories, \(s.symlinks) symlinks, "
                    + "\(s.otherEntries) other, \(s.hardlinks) hardlinks")
                row("bytes", "\(formatBytes(Int64(s.bytes))) in files (\(s.bytes) bytes)")
                row("chunks", "\(s.chunks) (\(s.uniqueChunks) unique, dedup ratio \(String(format: "%.2f", s.dedupRatio))), "
                    + "chunk size \(formatBytes(Int64(s.chunkSize))), \(s.compression)")
                row("compressed", "\(formatBytes(Int64(s.compressedSize))) in \(s.blobs.count) blob\(s.blobs.count == 1 ? "" : "s")")
                for b in s.blobs {
                    row("  blob", "\(b.digest): \(formatBytes(Int64(b.compressedSize))) compressed, "
                        + "\(formatBytes(Int64(b.uncompressedSize))) uncompressed, \(b.chunks) chunks, \(b.compression)")
                }
                row("prefetch", "\(s.prefetchCount) files")
            } catch {
                progress.finish()
                fail(error)
            }
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a Kangaroo image: bootstrap digest, ToC, every chunk and blob digest.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The image (store name, registry reference or oci:DIR:TAG).") var reference: String
        @Flag(help: "Print the report as JSON.") var json = false

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            let report: CheckReport
            do {
                let onProgress: @Sendable (UInt64, UInt64) -> Void = { done, total in
                    progress.update("checking \(reference)", done: Int64(done), total: Int64(total))
                }
                if case .registry(let ref) = try ImageLocation.parse(reference) {
                    // What the registry serves, never the store's copy: the
                    // manifest, the bootstrap and every blob come from it.
                    report = try await options.withRegistry(ref, logger: logger) { (client: RegistryClient) async throws -> CheckReport in
                        try await Self.checkRegistry(ref, client: client, onProgress: onProgress)
                    }
                } else {
                    let (image, layout) = try await options.openKangarooImage(reference, logger: logger, progress: progress)
                    report = image.check(source: LayoutChunkSource(layout: layout, image: image), progress: onProgress)
                }
                progress.finish()
            } catch let error as ImageError where error.code == .digestMismatch || error.code == .corruptBootstrap {
                progress.finish()
                fail(CLIError("check \(reference): FAILED: \(error)"))
            } catch {
                progress.finish()
                fail(error)
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: (try? encoder.encode(report)) ?? Data(), as: UTF8.self))
            } else {
                for problem in report.problems { print("problem: \(problem)") }
                print("check \(reference): \(report.chunksChecked) chunks in \(report.blobsChecked) blobs, "
                      + (report.ok ? "OK" : "\(report.problems.count) problem\(report.problems.count == 1 ? "" : "s")"))
            }
            if !report.ok { throw ExitCode(1) }
        }
    }

    struct Unpack: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the merged tree of a Kangaroo image into a new or empty directory.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The image (store name, registry reference or oci:DIR:TAG).") var reference: String
        @Argument(help: "Target directory (new or empty).") var directory: String

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            do {
                if let existing = try? FileManager.default.contentsOfDirectory(atPath: directory), !existing.isEmpty {
                    throw CLIError("unpack target '\(directory)' is not empty")
                }
                let (image, layout) = try await options.openKangarooImage(reference, logger: logger, progress: progress)
                try image.unpack(to: directory, source: LayoutChunkSource(layout: layout, image: image))
                print("unpacked \(reference) into \(directory)")
            } catch {
                progress.finish()
                fail(error)
            }
        }
    }
}

extension ImageCommand.Check {
    /// Checks the image as `client`'s registry serves it, streaming each blob
    /// once with range requests; the store is neither read nor written.
    static func checkRegistry(_ reference: Reference, client: RegistryClient,
                              onProgress: @escaping @Sendable (UInt64, UInt64) -> Void) async throws -> CheckReport {
        let resolved: ResolvedManifest = try await client.resolveManifest(reference)
        let manifest = resolved.manifest
        guard let first = manifest.layers.first, KangarooMediaTypes.isBootstrap(first.mediaType) else {
            throw CLIError("\(reference) is an OCI image, not a Kangaroo image: convert it first (kangaroo image convert \(reference) NAME)")
        }
        guard first.size >= 0, first.size <= 1 << 30 else {
            throw CLIError("\(reference): the manifest gives the bootstrap an implausible size (\(first.size) bytes)")
        }
        let bytes = try await client.fetchBlobRange(repository: reference.repository, digest: first.digest, range: 0..<first.size)
        let image = try KangarooImage(manifest: manifest, bootstrapBytes: bytes)
        let source = BlobChunkSource(RegistryBlobSource(client: client, repository: reference.repository), image: image)
        // The check blocks on each range read: run it off the cooperative pool.
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: image.check(source: source, progress: onProgress))
            }
            thread.name = "image-check"
            thread.start()
        }
    }
}
