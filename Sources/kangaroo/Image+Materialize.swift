import ArgumentParser
import Foundation
import KangarooImage
import KangarooOCI

extension ImageCommand {
    struct Materialize: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the bootstrap and uncompressed blob files that the kernel's EROFS driver mounts.",
            discussion: """
            The mount is a file-backed EROFS mount: mount(2) with type erofs, the bootstrap file as source and \
            one device=BLOB option per blob. (mount(8) from util-linux would set up loop devices instead.)
            """)

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The image (store name, registry reference or oci:DIR:TAG).") var reference: String
        @Argument(help: "Directory for the bootstrap and blob files.") var directory: String
        @Option(help: "Also mount the image read-only at this directory.") var mount: String?

        func run() async throws {
            let logger = options.makeLogger()
            let progress = TerminalProgress(enabled: options.showProgress)
            do {
                let (image, layout) = try await options.openKangarooImage(reference, logger: logger, progress: progress)
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                let m = try image.materialize(to: directory, source: LayoutChunkSource(layout: layout, image: image))
                print("bootstrap \(m.bootstrapPath)")
                for blob in m.blobPaths { print("blob      \(blob)") }
                print("mount(2): source=\(m.bootstrapPath) type=erofs flags=MS_RDONLY data=\(m.mountOptions)")
                if let mount {
                    try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
                    guard Glibc.mount(m.bootstrapPath, mount, "erofs", UInt(MS_RDONLY), m.mountOptions) == 0 else {
                        let e = errno
                        throw CLIError("mounting \(m.bootstrapPath) (erofs, \(m.mountOptions)) at \(mount) failed: "
                                       + "\(String(cString: strerror(e))) (errno \(e))"
                                       + (e == EPERM ? "; mounting needs root" : ""))
                    }
                    print("mounted at \(mount)")
                }
            } catch {
                progress.finish()
                fail(error)
            }
        }
    }
}
