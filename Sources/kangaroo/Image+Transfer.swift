import ArgumentParser
import Foundation
import KangarooImage
import KangarooOCI

extension ImageCommand {
    struct Push: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Push an image from the local store to a registry (only blobs the registry lacks).")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "Image name in the local store.") var name: String
        @Argument(help: "Destination: HOST[:PORT]/REPO[:TAG].") var destination: String

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            do {
                guard case .registry(let reference) = try ImageLocation.parse(destination) else {
                    throw CLIError("push destination '\(destination)' is not a registry reference (HOST[:PORT]/REPO[:TAG])")
                }
                let store = try options.openStore()
                let tag = storeTag(name)
                let digest = try await options.withRegistry(reference, logger: logger) { client in
                    try await ImageTransfer(client: client, logger: logger).push(from: store, tag: tag, to: reference) { done, total in
                        progress.update("pushing \(reference)", done: done, total: total)
                    }
                }
                progress.finish()
                print("pushed \(tag) to \(reference) (\(digest))")
            } catch {
                progress.finish()
                fail(error)
            }
        }
    }

    struct Pull: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pull an image from a registry into the local store, verifying every blob.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "Source: HOST[:PORT]/REPO[:TAG][@DIGEST].") var source: String
        @Argument(help: "Name in the local store (default: the reference).") var name: String?
        @Option(help: "Platform of a multi-platform image, os/arch[/variant].") var platform: String = "linux/amd64"

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            do {
                guard case .registry(let reference) = try ImageLocation.parse(source) else {
                    throw CLIError("pull source '\(source)' is not a registry reference (HOST[:PORT]/REPO[:TAG])")
                }
                let store = try options.openStore()
                let tag = name.map(storeTag) ?? reference.description
                let platform = try Platform(parsing: platform)
                let (_, descriptor) = try await options.withPullHosts(reference, logger: logger) { client in
                    try await ImageTransfer(client: client, logger: logger).pull(reference, into: store, tag: tag,
                                                                                 platform: platform) { done, total in
                        progress.update("pulling \(reference)", done: done, total: total)
                    }
                }
                progress.finish()
                print("pulled \(reference) as \(tag) (\(descriptor.digest))")
            } catch {
                progress.finish()
                fail(error)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the images in the local store.")

        @OptionGroup var options: GlobalOptions

        func run() async throws {
            do {
                let store = try options.openStore()
                let tags = store.tags()
                print("NAME".padding(toLength: 50, withPad: " ", startingAt: 0) + " KIND      DIGEST")
                for (tag, descriptor) in tags.sorted(by: { $0.key < $1.key }) {
                    let manifest = try? store.readManifest(descriptor)
                    let kind = manifest?.layers.first.map { KangarooMediaTypes.isBootstrap($0.mediaType) } == true ? "kangaroo" : "oci"
                    print(tag.padding(toLength: 50, withPad: " ", startingAt: 0) + " " +
                          kind.padding(toLength: 9, withPad: " ", startingAt: 0) + " " + descriptor.digest.description)
                }
            } catch {
                fail(error)
            }
        }
    }
}
